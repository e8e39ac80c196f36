"""The pool in a strategy's search space, one block at a time: unit float32 rows kept in a
temporary file instead of memory.

``kcenter`` and ``balanced`` need the whole pool's unit rows at every pick (one product
each), so holding them costs N x D float32: 256 MB for a million 64-d images, 512 MB in
the 128-d space of a wide model. ``UnitRows`` projects the features once, block by block
(the same blocks as ``fit_space``'s own, so every value is the one the in-memory array
would hold), writes them to a file and reads them back into one reusable buffer: a pass
over the pool then holds one block, and the file lives in the page cache, not the
process.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator

import numpy as np

BLOCK = 65536  # rows per block: fit_space's projection block, so the values are identical


class UnitRows:
    """``project(features)`` as a read-only, block-wise array of unit rows on disk."""

    def __init__(self, features, project: Callable[[np.ndarray], np.ndarray],
                 block: int = BLOCK) -> None:
        self.block = block
        self._file = tempfile.TemporaryFile(prefix="finessl-rows-")
        self.rows, self.dims = len(features), 0
        for start in range(0, self.rows, block):
            chunk = np.ascontiguousarray(project(np.asarray(features[start:start + block])), np.float32)
            self.dims = chunk.shape[1]
            self._file.write(chunk.tobytes())
        self._file.flush()
        self._buffer = np.empty((min(block, max(self.rows, 1)), self.dims), np.float32)

    def __len__(self) -> int:
        return self.rows

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> UnitRows:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) of every block in order; the rows are valid until the next one."""
        for start in range(0, self.rows, self.block):
            count = min(self.block, self.rows - start)
            yield start, self._read(start, count, self._buffer[:count])

    def row(self, index: int) -> np.ndarray:
        return self._read(int(index), 1, np.empty((1, self.dims), np.float32))[0]

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        """The rows at ``indices`` (any order, repeats allowed) as a new [len, D] array:
        one read per run of consecutive rows, so a sample costs its own size only."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= self.rows):
            raise IndexError(f"rows {indices.min()}..{indices.max()} of a {self.rows}-row space")
        wanted = np.unique(indices)
        out = np.empty((len(wanted), self.dims), np.float32)
        breaks = np.flatnonzero(np.diff(wanted) != 1) + 1
        for run, at in zip(np.split(wanted, breaks), np.concatenate([[0], breaks])):
            if len(run):
                self._read(int(run[0]), len(run), out[at:at + len(run)])
        return out if len(wanted) == len(indices) and np.array_equal(wanted, indices) \
            else out[np.searchsorted(wanted, indices)]

    def dot(self, vector: np.ndarray) -> np.ndarray:
        """``rows @ vector`` for every row: [N] float32."""
        out = np.empty(self.rows, np.float32)
        for start, rows in self.blocks():
            out[start:start + len(rows)] = rows @ vector
        return out

    def _read(self, start: int, count: int, into: np.ndarray) -> np.ndarray:
        view = memoryview(into).cast("B")
        offset, done = start * self.dims * 4, 0
        while done < len(view):
            got = os.preadv(self._file.fileno(), [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"the search space file ended at row {start} (+{done} bytes)")
            done += got
        return into
