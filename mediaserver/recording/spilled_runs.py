"""A channel's packets split into runs on disk, and each run's packets read back in chunks."""

# timeline._split_runs reads packets with a few of look-ahead and writes each packet's run and
# extended numbers at its own position, in order: here it reads a spill and writes another.
# A run's packets all arrive before the run after next begins (stragglers go back one run only),
# so a run is read back from its first packet to that point.

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, overload

import numpy as np

from mediaserver.recording.column_spill import ColumnSpill, Rows
from mediaserver.recording.timeline import TimelineConfig, _Counters, _Split, _split_runs
from mediaserver.rtp.media_packet import MediaPacket

# A channel's decodable packets in arrival order, and where each payload is in the journal.
PACKET_ROW = np.dtype(
    [
        ("arrival_ns", "<i8"),
        ("offset", "<i8"),
        ("rtp_timestamp", "<u4"),
        ("ssrc", "<u4"),
        ("duration", "<i4"),
        ("sequence", "<u2"),
        ("length", "<u2"),
    ]
)
# A packet's run (-1: none) and its sequence number and timestamp unwrapped within that run.
SPLIT_ROW = np.dtype([("run", "<i8"), ("sequence", "<i8"), ("timestamp", "<i8")])
# What a packet carries through the passes to its placement: the first six are what writing and
# DTMF placement need of it (PLACED_ROW), the flags what the passes decide with.
CARRIED = [
    ("duration", "<i8"),
    ("index", "<i8"),
    ("offset", "<i8"),
    ("ssrc", "<u4"),
    ("rtp_timestamp", "<u4"),
    ("length", "<u2"),
    ("hint", "?"),
    ("reordered", "?"),
]
T = TypeVar("T")
MEMBER_ROW = np.dtype([("sequence", "<i8"), ("timestamp", "<i8"), ("arrival", "<f8"), *CARRIED])


class _RowCache:
    """The packet spill's rows near the one being read, as Python lists."""

    def __init__(self, spill: ColumnSpill, chunk_rows: int) -> None:
        self._spill = spill
        self._chunk_rows = chunk_rows
        self._first = 0
        self._stop = 0
        self._columns: list[list[int]] = []

    def row(self, index: int) -> tuple[int, int, int, int, int]:
        """Arrival, timestamp, sequence, SSRC and duration of one packet."""
        if not self._first <= index < self._stop:
            self._first = max(0, index - 16)  # _split_runs never looks back, but cheap to keep
            rows = self._spill.read(self._first, index + self._chunk_rows)
            self._stop = self._first + len(rows)
            fields = ("arrival_ns", "rtp_timestamp", "sequence", "ssrc", "duration")
            self._columns = [rows[name].tolist() for name in fields]
        at = index - self._first
        arrival, timestamp, sequence, ssrc, duration = (column[at] for column in self._columns)
        return arrival, timestamp, sequence, ssrc, duration


class _RowView(Sequence[T]):
    """The spilled packets as a sequence of what `item` makes of each cached row."""

    def __init__(self, cache: _RowCache, item: Callable[[tuple[int, int, int, int, int]], T]):
        self._cache = cache
        self._item = item
        self._length = len(cache._spill)

    def __len__(self) -> int:
        """How many packets."""
        return self._length

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        """One item, or a list for a slice."""
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        if not 0 <= index < self._length:
            raise IndexError(index)
        return self._item(self._cache.row(index))


def _packet_of(row: tuple[int, int, int, int, int]) -> MediaPacket:
    """A spilled row as a MediaPacket (empty payload: placement never reads it)."""
    arrival, timestamp, sequence, ssrc, _ = row
    return MediaPacket(arrival, timestamp, sequence, ssrc, 0, False, b"")


def _duration_of(row: tuple[int, int, int, int, int]) -> int:
    """A spilled row's duration."""
    return row[4]


class _SplitSink:
    """The run, sequence and timestamp of each packet, written in position order to a spill."""

    def __init__(self, spill: ColumnSpill, count: int, chunk_rows: int) -> None:
        self._spill = spill
        self._count = count
        self._chunk_rows = chunk_rows
        self._first = 0
        self._rows = self._fresh()

    def _fresh(self) -> Rows:
        """Defaults for the next chunk: not placed (-1)."""
        rows = np.zeros(min(self._chunk_rows, self._count - self._first), SPLIT_ROW)
        rows["run"] = -1
        return rows

    def column(self, name: str) -> _SinkColumn:
        """One column to write by position."""
        return _SinkColumn(self, name)

    def set(self, name: str, index: int, value: int) -> None:
        """Write one value; positions only ever move forward."""
        while index >= self._first + len(self._rows):
            self._spill.append(self._rows)
            self._first += len(self._rows)
            self._rows = self._fresh()
        self._rows[name][index - self._first] = value

    def finish(self) -> None:
        """Write what is left, defaults included, up to the last packet."""
        while self._first < self._count:
            self._spill.append(self._rows)
            self._first += len(self._rows)
            self._rows = self._fresh()


class _SinkColumn:
    """A column of a _SplitSink, assigned like an array."""

    def __init__(self, sink: _SplitSink, name: str) -> None:
        self._sink = sink
        self._name = name

    def __setitem__(self, index: int, value: int, /) -> None:
        """Write one value."""
        self._sink.set(self._name, index, value)


def first_positions(split: ColumnSpill, run_count: int, chunk_rows: int) -> Rows:
    """The position of each run's first packet."""
    firsts = np.full(run_count, -1, np.int64)
    base = 0
    for rows in split.chunks(chunk_rows):
        values, where = np.unique(rows["run"], return_index=True)
        for value, at in zip(values.tolist(), where.tolist(), strict=True):
            if value >= 0 and firsts[value] < 0:
                firsts[value] = base + at
        base += len(rows)
    return firsts


@dataclass(frozen=True, slots=True)
class MemberReader:
    """A run's packets in arrival order, re-read from the spills on each call."""

    # A run's packets all arrive before the run after next begins (stragglers go back one run
    # only), so reading from the run's first packet to that point finds every one of them.
    packets: ColumnSpill
    split: ColumnSpill
    run_number: int
    first: int
    stop: int
    origin_ns: int
    config: TimelineConfig

    def chunks(self, chunk_rows: int) -> Iterator[Rows]:
        """MEMBER rows, a chunk of positions at a time."""
        for start in range(self.first, self.stop, chunk_rows):
            stop = min(start + chunk_rows, self.stop)
            packets = self.packets.read(start, stop)
            split = self.split.read(start, stop)
            mine = np.flatnonzero(split["run"] == self.run_number)
            if not len(mine):
                continue
            packets, split = packets[mine], split[mine]
            rows = np.zeros(len(mine), MEMBER_ROW)
            rows["sequence"] = split["sequence"]
            rows["timestamp"] = split["timestamp"]
            rows["arrival"] = (packets["arrival_ns"].astype(np.int64) - self.origin_ns).astype(
                np.float64
            )
            rows["duration"] = packets["duration"]
            rows["index"] = mine + start
            for name in ("offset", "ssrc", "rtp_timestamp", "length"):
                rows[name] = packets[name]
            rows["hint"] = packets["length"] <= self.config.silence_payload_bytes
            yield rows


@dataclass(frozen=True, slots=True)
class SpilledRuns:
    """A channel's packets split into runs: the split on disk and each run's first position."""

    packets: ColumnSpill
    split: ColumnSpill
    firsts: Rows

    def __len__(self) -> int:
        """How many runs."""
        return len(self.firsts)

    def members(self, run_number: int, origin_ns: int, config: TimelineConfig) -> MemberReader:
        """A run's packets, read back from the spills."""
        runs = len(self.firsts)
        stop = int(self.firsts[run_number + 2]) if run_number + 2 < runs else len(self.packets)
        first = int(self.firsts[run_number])
        return MemberReader(self.packets, self.split, run_number, first, stop, origin_ns, config)


def split_spilled(
    packets: ColumnSpill,
    config: TimelineConfig,
    counters: _Counters,
    work: Path,
    chunk_rows: int,
) -> SpilledRuns:
    """Run timeline._split_runs over a spill of PACKET_ROW packets, into a spill of its own."""
    split_spill = ColumnSpill(work / "split.rows", SPLIT_ROW)
    sink = _SplitSink(split_spill, len(packets), chunk_rows)
    split = _Split([], sink.column("run"), sink.column("sequence"), sink.column("timestamp"))
    cache = _RowCache(packets, chunk_rows)
    _split_runs(_RowView(cache, _packet_of), _RowView(cache, _duration_of), config, counters, split)
    sink.finish()
    return SpilledRuns(
        packets, split_spill, first_positions(split_spill, len(split.runs), chunk_rows)
    )
