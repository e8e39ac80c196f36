"""Rows of one width and dtype in a temporary file instead of memory, read back by ``pread``.

A pass over a million-image pool should hold one block of it, not all of it: the audit's
scan writes features and thumbnails here as they come, and the selection strategies keep
the pool's unit rows in the search space here (``UnitRows``: 256 MB for a million 64-d
images, 512 MB in the 128-d space of a wide model). Reads go through ``preadv`` into
numpy buffers, not ``mmap``: the file lives in the page cache, which the kernel may drop,
and never counts in the process's own memory. The file is unlinked from the start, so
nothing is left behind when the process ends, however it ends.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator

import numpy as np

BLOCK = 65536  # rows per block: fit_space's projection block, so the values are identical


class RowFile:
    """An append-only ``[N, width]`` array of ``dtype`` on disk; ``part`` views a row range."""

    def __init__(self, width: int, dtype=np.float32, block: int = BLOCK) -> None:
        self.width, self.dtype, self.block = int(width), np.dtype(dtype), block
        self._file = tempfile.TemporaryFile(prefix="finessl-rows-")
        self._first, self._rows, self._view = 0, 0, False

    # ------------------------------------------------------------------ writing
    def append(self, rows: np.ndarray) -> None:
        if self._view:
            raise ValueError("a part of a row file is read-only")
        rows = np.ascontiguousarray(rows, self.dtype).reshape(-1, self.width)
        self._file.seek(0, os.SEEK_END)
        self._file.write(rows.tobytes())
        self._rows += len(rows)

    def flush(self) -> None:
        self._file.flush()

    # ------------------------------------------------------------------ shape
    def __len__(self) -> int:
        return self._rows

    @property
    def shape(self) -> tuple[int, int]:
        return self._rows, self.width

    @property
    def dims(self) -> int:
        return self.width

    def part(self, start: int, stop: int) -> RowFile:
        """Rows ``start:stop`` as a read-only view of the same file (nothing is read)."""
        start, stop, _ = slice(start, stop).indices(self._rows)
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view._first, view._rows, view._view = self._first + start, max(stop - start, 0), True
        return view

    # ------------------------------------------------------------------ reading
    def __getitem__(self, key) -> np.ndarray:
        """``rows[a:b]`` (a new array of those rows), ``rows[i]`` (one row) or ``rows[indices]``
        (any order, repeats allowed: one read per run of consecutive rows)."""
        if isinstance(key, slice):
            start, stop, step = key.indices(self._rows)
            if step != 1:
                raise IndexError("a row file reads contiguous slices only")
            count = max(stop - start, 0)
            return self._read(start, count, np.empty((count, self.width), self.dtype))
        if np.isscalar(key):
            index = int(key) + (self._rows if int(key) < 0 else 0)
            if not 0 <= index < self._rows:
                raise IndexError(f"row {key} of {self._rows}")
            return self._read(index, 1, np.empty((1, self.width), self.dtype))[0]
        indices = np.asarray(key)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        indices = indices.astype(np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= self._rows):
            raise IndexError(f"rows {indices.min()}..{indices.max()} of a {self._rows}-row file")
        wanted = np.unique(indices)
        out = np.empty((len(wanted), self.width), self.dtype)
        breaks = np.flatnonzero(np.diff(wanted) != 1) + 1
        for run, at in zip(np.split(wanted, breaks), np.concatenate([[0], breaks])):
            if len(run):
                self._read(int(run[0]), len(run), out[at:at + len(run)])
        return out if len(wanted) == len(indices) and np.array_equal(wanted, indices) \
            else out[np.searchsorted(wanted, indices)]

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) of every block in order; the rows are valid until the next one
        (one buffer serves them all)."""
        buffer = np.empty((min(self.block, max(self._rows, 1)), self.width), self.dtype)
        for start in range(0, self._rows, self.block):
            count = min(self.block, self._rows - start)
            yield start, self._read(start, count, buffer[:count])

    def row(self, index: int) -> np.ndarray:
        return self[int(index)]

    def dot(self, vector: np.ndarray) -> np.ndarray:
        """``rows @ vector`` for every row: [N] float32."""
        out = np.empty(self._rows, np.float32)
        for start, rows in self.blocks():
            out[start:start + len(rows)] = rows.astype(np.float32, copy=False) @ vector
        return out

    def _read(self, start: int, count: int, into: np.ndarray) -> np.ndarray:
        view = memoryview(into).cast("B")
        offset, done = (self._first + start) * self.width * self.dtype.itemsize, 0
        while done < len(view):
            got = os.preadv(self._file.fileno(), [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"the row file ended at row {start} (+{done} bytes)")
            done += got
        return into

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        if not self._view:
            self._file.close()

    def __enter__(self) -> RowFile:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def part(rows: np.ndarray | RowFile, start: int, stop: int | None = None) -> np.ndarray | RowFile:
    """Rows ``start:stop`` of an array (a view) or of a row file (a view of the file)."""
    stop = len(rows) if stop is None else stop
    return rows.part(start, stop) if isinstance(rows, RowFile) else rows[start:stop]


def blocks_of(rows: np.ndarray | RowFile, block: int = BLOCK) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) of every block of an array (views) or a row file (read back)."""
    if isinstance(rows, RowFile):
        yield from rows.blocks()
        return
    for start in range(0, len(rows), block):
        yield start, rows[start:start + block]


class UnitRows(RowFile):
    """``project(features)`` as float32 unit rows on disk: projected once, block by block (the
    same blocks as ``fit_space``'s own, so every value is the one the in-memory array would
    hold)."""

    def __init__(self, features, project: Callable[[np.ndarray], np.ndarray],
                 block: int = BLOCK) -> None:
        first = np.asarray(project(np.asarray(features[0:min(1, len(features))])), np.float32)
        super().__init__(first.shape[1] if first.ndim == 2 else 0, np.float32, block)
        for start in range(0, len(features), block):
            self.append(project(np.asarray(features[start:start + block])))
        self.flush()
