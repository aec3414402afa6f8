"""Rows of one numpy record type in a file: written and read back a chunk at a time."""

# Building a long recording passes over every packet several times; holding them all costs
# memory in proportion to the call. A spill keeps them on disk instead, so the build holds one
# chunk of rows per pass whatever the call's length.

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Rows = npt.NDArray[Any]


class ColumnSpill:
    """A file of fixed-size rows (`dtype`): appended, read forwards or backwards, patched."""

    __slots__ = ("_file", "_length", "dtype", "path")

    def __init__(self, path: Path, dtype: np.dtype[Any]) -> None:
        """Create (or truncate) the file."""
        self.path = path
        self.dtype = dtype
        self._file = path.open("w+b")
        self._length = 0

    def __len__(self) -> int:
        """How many rows."""
        return self._length

    def append(self, rows: Rows) -> None:
        """Add rows at the end."""
        if not len(rows):
            return
        self._file.seek(self._length * self.dtype.itemsize)
        self._file.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self._length += len(rows)

    def write_at(self, first: int, rows: Rows) -> None:
        """Overwrite (or extend with) rows starting at row `first`."""
        self._file.seek(first * self.dtype.itemsize)
        self._file.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self._length = max(self._length, first + len(rows))

    def read(self, first: int, stop: int) -> Rows:
        """Rows `first` up to `stop` (clamped to the file)."""
        first, stop = max(0, first), min(stop, self._length)
        if stop <= first:
            return np.zeros(0, self.dtype)
        self._file.seek(first * self.dtype.itemsize)
        data = self._file.read((stop - first) * self.dtype.itemsize)
        return np.frombuffer(data, dtype=self.dtype)

    def chunks(self, size: int, first: int = 0, stop: int | None = None) -> Iterator[Rows]:
        """Rows `first` up to `stop` in order, `size` at a time."""
        end = self._length if stop is None else min(stop, self._length)
        for start in range(first, end, size):
            yield self.read(start, min(start + size, end))

    def chunks_backwards(self, size: int) -> Iterator[tuple[int, Rows]]:
        """Every row from the last chunk to the first, each chunk with its first row's number."""
        stop = self._length
        while stop > 0:
            start = max(0, stop - size)
            yield start, self.read(start, stop)
            stop = start

    def close(self) -> None:
        """Close the file (the caller owns its directory)."""
        self._file.close()
