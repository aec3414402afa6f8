"""A channel's placements as three integer arrays: 24 bytes a packet, not ~180 as objects."""

# A recording's plan holds a placement for every packet of both channels at once; as frozen
# dataclass objects with three Python ints each, a 30-minute call's plan held ~60 MB (and twice
# that while it was shifted and cut). As columns it holds ~4 MB. Placements are built on access,
# so code that takes a Sequence[Placement] reads them as before.

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]
_ITER_CHUNK = 4096  # placements turned into objects at a time while iterating


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one packet's audio starts on the timeline, in clock units since the call's origin."""

    # `index` is the packet's position in the sequence given to compute_timeline.

    start: int
    duration: int
    index: int


class PlacementColumns(Sequence[Placement]):
    """Placements as parallel int64 arrays of starts, durations and packet indexes."""

    __slots__ = ("durations", "indexes", "starts")

    def __init__(self, starts: Int64Array, durations: Int64Array, indexes: Int64Array) -> None:
        """Columns of equal length (sorted by start, as a timeline's placements are)."""
        if not len(starts) == len(durations) == len(indexes):
            raise ValueError("placement columns must have equal lengths")
        self.starts = starts
        self.durations = durations
        self.indexes = indexes

    @classmethod
    def of(cls, placements: Iterable[Placement]) -> PlacementColumns:
        """Columns holding these placements (the same columns if they already are)."""
        if isinstance(placements, PlacementColumns):
            return placements
        items = list(placements)
        return cls(
            np.fromiter((p.start for p in items), np.int64, len(items)),
            np.fromiter((p.duration for p in items), np.int64, len(items)),
            np.fromiter((p.index for p in items), np.int64, len(items)),
        )

    def shifted(self, units: int) -> PlacementColumns:
        """Every placement moved by `units` (negative: earlier)."""
        return PlacementColumns(self.starts + units, self.durations, self.indexes)

    def select(self, mask: npt.NDArray[np.bool_]) -> PlacementColumns:
        """The placements where `mask` is true, in order."""
        return PlacementColumns(self.starts[mask], self.durations[mask], self.indexes[mask])

    def total_duration(self) -> int:
        """The sum of every placement's duration."""
        return int(self.durations.sum())

    def __len__(self) -> int:
        """How many placements."""
        return len(self.starts)

    @overload
    def __getitem__(self, index: int) -> Placement: ...

    @overload
    def __getitem__(self, index: slice) -> PlacementColumns: ...

    def __getitem__(self, index: int | slice) -> Placement | PlacementColumns:
        """One placement, or a slice of the columns."""
        if isinstance(index, slice):
            return PlacementColumns(self.starts[index], self.durations[index], self.indexes[index])
        return Placement(
            int(self.starts[index]), int(self.durations[index]), int(self.indexes[index])
        )

    def __iter__(self) -> Iterator[Placement]:
        """Placements in order, built a chunk at a time."""
        for first in range(0, len(self), _ITER_CHUNK):
            last = first + _ITER_CHUNK
            yield from map(
                Placement,
                self.starts[first:last].tolist(),
                self.durations[first:last].tolist(),
                self.indexes[first:last].tolist(),
            )

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence of the same placements (a tuple of Placement included)."""
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside

    def __repr__(self) -> str:
        """A short description (the arrays may be long)."""
        return f"PlacementColumns({len(self)} placements)"
