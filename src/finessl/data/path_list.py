"""Many file paths in two arrays instead of two Python objects per file.

A pool of ten million images listed as ``Path`` objects costs ~430 bytes a file (4.5 GB);
``PathList`` keeps the encoded names in one byte buffer and their end offsets in one
int64 array (~1 byte a character + 8), and decodes a name only when it is read.
``walk_images`` lists a folder tree straight into one, in the same order as sorting the
paths (each folder's entries by name, depth first).
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np


class PathList(Sequence[str]):
    """An immutable list of paths (``str`` items), compact in memory."""

    def __init__(self, data: np.ndarray, ends: np.ndarray) -> None:
        self._data, self._ends = data, ends  # uint8 bytes, int64 end of each name

    @classmethod
    def of(cls, paths: Iterable[str | os.PathLike]) -> PathList:
        if isinstance(paths, PathList):
            return paths
        builder = PathListBuilder()
        for path in paths:
            builder.append(path)
        return builder.build()

    def __len__(self) -> int:
        return len(self._ends)

    def _start(self, index: int) -> int:
        return int(self._ends[index - 1]) if index > 0 else 0

    def __getitem__(self, index):  # int -> str; slice or index array -> PathList
        if isinstance(index, slice) or not np.isscalar(index):
            return self.take(np.arange(len(self))[index] if isinstance(index, slice) else index)
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("path index out of range")
        return os.fsdecode(self._data[self._start(index):int(self._ends[index])].tobytes())

    def __iter__(self) -> Iterator[str]:
        data, start = self._data, 0
        for end in self._ends.tolist():
            yield os.fsdecode(data[start:end].tobytes())
            start = end

    def take(self, indices) -> PathList:
        """The paths at ``indices`` (an integer or boolean array), as a new list."""
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        starts = np.concatenate([[0], self._ends[:-1]]).astype(np.int64)[indices]
        lengths = self._ends[indices] - starts
        ends = np.cumsum(lengths, dtype=np.int64)
        if not len(indices):
            return PathList(np.zeros(0, np.uint8), np.zeros(0, np.int64))
        # every byte of the chosen names, gathered in one vectorised index
        offsets = np.repeat(starts - (ends - lengths), lengths) + np.arange(int(ends[-1]))
        return PathList(self._data[offsets], ends)

    def __add__(self, other: Sequence[str]) -> PathList:
        other = PathList.of(other)
        shift = int(self._ends[-1]) if len(self) else 0
        return PathList(np.concatenate([self._data, other._data]),
                        np.concatenate([self._ends, other._ends + shift]))

    def __radd__(self, other: Sequence[str]) -> PathList:
        return PathList.of(other) + self

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PathList):
            return np.array_equal(self._ends, other._ends) and np.array_equal(self._data, other._data)
        return isinstance(other, (list, tuple)) and list(self) == [str(p) for p in other]

    __hash__ = None  # type: ignore[assignment]  # mutable-looking like a list: unhashable

    def __repr__(self) -> str:
        return f"PathList({len(self)} paths, {self.nbytes / 1e6:.1f} MB)"

    def digest(self) -> str:
        """A digest of the names in order: equal lists, equal digests."""
        import hashlib

        hashed = hashlib.blake2b(self._data.tobytes(), digest_size=16)
        hashed.update(self._ends.tobytes())
        return hashed.hexdigest()

    @property
    def nbytes(self) -> int:
        return self._data.nbytes + self._ends.nbytes


class PathListBuilder:
    """Collects paths one at a time into the two buffers of a ``PathList``."""

    def __init__(self) -> None:
        self._buffer, self._ends = bytearray(), array("q")

    def append(self, path: str | os.PathLike) -> None:
        self._buffer += os.fsencode(path)
        self._ends.append(len(self._buffer))

    def build(self) -> PathList:
        return PathList(np.frombuffer(bytes(self._buffer), np.uint8),
                        np.frombuffer(self._ends, np.int64).copy())


def walk_images(folder: Path, extensions: Sequence[str]) -> PathList:
    """Every file under ``folder`` whose suffix is one of ``extensions`` (lower case),
    each folder's entries sorted by name, sub-folders visited where they sort (the order
    of ``sorted(folder.rglob(...))``); links to folders are not followed."""
    found = PathListBuilder()
    wanted = tuple(extensions)

    def visit(directory: str) -> None:
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except (PermissionError, NotADirectoryError, FileNotFoundError):
            return
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir and not entry.is_symlink():
                visit(entry.path)
            elif not is_dir and os.path.splitext(entry.name)[1].lower() in wanted:
                found.append(entry.path)

    visit(str(folder))
    return found.build()
