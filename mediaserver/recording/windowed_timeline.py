"""Timeline placement over packets spilled to disk: compute_timeline's result in bounded memory."""

# compute_timeline holds every packet of a channel in arrays, so its memory grows with the call.
# This gives the same placements and statistics passing over spills a chunk at a time. Runs are
# split with a few packets of look-ahead; each run then takes five passes, because some of its
# figures are global (the lowest timestamp, the median duration, the drift slope, and the delay
# floor, whose backward minimum looks to the run's end):
#   A. arrival order: drop duplicates, count, lowest timestamp, durations' histogram;
#   B. arrival order: delays, drift windows' minima, and the packets sorted into media order;
#   C. media order: the floor's forward minimum;   D. backwards: the floor's backward minimum;
#   E. media order: late packets, drift re-anchoring, rounding, conflicts -> placements.
# Sorting into media order holds a window of packets; a run reordered further than that (or
# whose duplicates reach further back) is placed whole in memory by timeline._place_run.

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mediaserver.recording.column_spill import ColumnSpill, Rows
from mediaserver.recording.spilled_runs import CARRIED, MEMBER_ROW, MemberReader, split_spilled
from mediaserver.recording.timeline import (
    _NS_PER_S,
    ConflictStep,
    TimelineConfig,
    TimelineStats,
    _build_stats,
    _Columns,
    _Counters,
    _Cursor,
    _fit_drift,
    _ms_to_units,
    _place_run,
    _Placed,
    _window_packets,
)

# One placement, in timeline order, with what writing and DTMF placement need of its packet.
PLACED_ROW = np.dtype([("start", "<i8"), *CARRIED[:6]])
_MEDIA_ROW = np.dtype([("media", "<i8"), ("delay", "<f8"), ("order", "<i8"), *CARRIED])
_FLOAT_ROW = np.dtype("<f8")


@dataclass(frozen=True, slots=True)
class WindowSize:
    """How much is held at once: rows per chunk, and how far packets may be out of order."""

    chunk_rows: int = 8192
    reorder_rows: int = 4096  # packets held back while sorting into media order
    duplicate_span: int = 1024  # sequence numbers remembered behind the highest, for duplicates


DEFAULT_WINDOW = WindowSize()


@dataclass(frozen=True, slots=True)
class WindowedTimeline:
    """A channel's placements (PLACED_ROW rows, sorted by start) and its statistics."""

    placed: ColumnSpill
    stats: TimelineStats


class _UnboundedError(Exception):
    """A run reordered beyond the window: it is placed whole instead."""


def place_windowed(
    packets: ColumnSpill,
    *,
    origin_ns: int,
    config: TimelineConfig,
    work: Path,
    window: WindowSize = DEFAULT_WINDOW,
) -> WindowedTimeline:
    """Place a spill of PACKET_ROW packets exactly as compute_timeline places them."""
    counters = _Counters()
    runs = split_spilled(packets, config, counters, work, window.chunk_rows)
    run_count = len(runs)
    out = _PlacedWriter(ColumnSpill(work / "placed.rows", PLACED_ROW))
    cursor = _Cursor()
    for run_number in range(run_count):
        members = runs.members(run_number, origin_ns, config)
        try:
            _place_run_windowed(members, config, cursor, counters, out, work, window)
        except _UnboundedError:
            _place_run_whole(members, config, cursor, counters, out, window)
    runs.split.close()
    placed = _Placed(out.count, out.start, out.end, out.units)
    stats = _build_stats(len(packets), run_count, placed, config, counters)
    return WindowedTimeline(out.spill, stats)


class _PlacedWriter:
    """Appends placements to a spill, tallying what the statistics need."""

    def __init__(self, spill: ColumnSpill) -> None:
        self.spill = spill
        self.count = 0
        self.start = 0
        self.end = 0
        self.units = 0

    def add(self, rows: Rows) -> None:
        """Append placements (PLACED_ROW), in timeline order."""
        if not len(rows):
            return
        if not self.count:
            self.start = int(rows["start"][0])
        self.end = int(rows["start"][-1] + rows["duration"][-1])
        self.count += len(rows)
        self.units += int(rows["duration"].sum())
        self.spill.append(rows)


def _placed_rows(members: Rows, starts: Sequence[int]) -> Rows:
    """PLACED rows for members placed at `starts`."""
    rows = np.zeros(len(members), PLACED_ROW)
    rows["start"] = starts
    for name in ("duration", "index", "offset", "ssrc", "rtp_timestamp", "length"):
        rows[name] = members[name]
    return rows


def _place_run_whole(
    members: MemberReader,
    config: TimelineConfig,
    cursor: _Cursor,
    counters: _Counters,
    out: _PlacedWriter,
    window: WindowSize,
) -> None:
    """Place a run the way compute_timeline does, holding all its packets."""
    parts = list(members.chunks(window.chunk_rows))
    rows = np.concatenate(parts) if parts else np.zeros(0, MEMBER_ROW)
    columns = _Columns(
        sequences=rows["sequence"].copy(),
        timestamps=rows["timestamp"].copy(),
        arrivals_ns=rows["arrival"].copy(),
        durations=rows["duration"].copy(),
        silence_hints=rows["hint"].copy(),
        indexes=rows["index"].copy(),
    )
    run_cursor = _Cursor(end=cursor.end, cap_shift=cursor.cap_shift)
    _place_run(columns, config=config, cursor=run_cursor, counters=counters)
    cursor.end, cursor.cap_shift = run_cursor.end, run_cursor.cap_shift
    for starts, indexes in zip(run_cursor.starts, run_cursor.indexes, strict=True):
        chosen = rows[np.searchsorted(rows["index"], indexes)]  # indexes ascend in arrival order
        out.add(_placed_rows(chosen, starts.tolist()))


@dataclass(slots=True)
class _RunFigures:
    """Pass A's results: the run's duplicates dropped, and its global figures."""

    kept: ColumnSpill
    duplicates: int
    lost: int
    lowest_timestamp: int
    median_duration: float
    span_ns: float


def _place_run_windowed(
    members: MemberReader,
    config: TimelineConfig,
    cursor: _Cursor,
    counters: _Counters,
    out: _PlacedWriter,
    work: Path,
    window: WindowSize,
) -> None:
    """Place one run in five passes over spills (see the module comment)."""
    figures = _pass_unique(members, work, window)
    packets = _window_packets(figures.median_duration, config)
    by_media = ColumnSpill(work / "media.rows", _MEDIA_ROW)
    try:
        times, floors = _pass_delays(figures, packets, config, by_media, window)
    except _UnboundedError:
        by_media.close()
        raise
    finally:
        figures.kept.close()
    slope = _fit_drift(times, floors, config)
    # Nothing above touched the counters: a run found unbounded is placed afresh.
    counters.duplicates += figures.duplicates
    counters.lost += figures.lost
    if slope is not None:
        counters.drift_weighted_ppm += -slope * 1e6 * figures.span_ns
        counters.drift_weight_ns += figures.span_ns
    floor = _pass_floor(by_media, slope or 0.0, config, work, window)
    _pass_place(by_media, floor, config, cursor, counters, out, window)
    by_media.close()
    floor.close()


def _pass_unique(members: MemberReader, work: Path, window: WindowSize) -> _RunFigures:
    """Pass A: first copies of each sequence number, with the run's global figures."""
    kept = ColumnSpill(work / "kept.rows", MEMBER_ROW)
    seen: set[int] = set()
    forgotten_below: int | None = None
    highest: int | None = None
    duplicates = 0
    lowest_sequence = lowest_timestamp = 0
    first_arrival = last_arrival = 0.0
    histogram: dict[int, int] = {}
    for rows in members.chunks(window.chunk_rows):
        keep = np.zeros(len(rows), np.bool_)
        reordered = rows["reordered"]
        for at, sequence in enumerate(rows["sequence"].tolist()):
            if sequence in seen:
                duplicates += 1
                continue
            if forgotten_below is not None and sequence < forgotten_below:
                raise _UnboundedError  # it may repeat one no longer remembered
            seen.add(sequence)
            keep[at] = True
            if highest is not None and sequence < highest:
                reordered[at] = True
            if highest is None or sequence > highest:
                highest = sequence
        if highest is not None and len(seen) > 4 * window.duplicate_span:
            forgotten_below = highest - window.duplicate_span
            seen = {s for s in seen if s >= forgotten_below}
        unique = rows[keep]
        if not len(unique):
            continue
        if not len(kept):
            lowest_sequence = int(unique["sequence"].min())
            lowest_timestamp = int(unique["timestamp"].min())
            first_arrival = last_arrival = float(unique["arrival"][0])
        lowest_sequence = min(lowest_sequence, int(unique["sequence"].min()))
        lowest_timestamp = min(lowest_timestamp, int(unique["timestamp"].min()))
        first_arrival = min(first_arrival, float(unique["arrival"].min()))
        last_arrival = max(last_arrival, float(unique["arrival"].max()))
        values, counts = np.unique(unique["duration"], return_counts=True)
        for value, number in zip(values.tolist(), counts.tolist(), strict=True):
            histogram[value] = histogram.get(value, 0) + number
        kept.append(unique)
    count = len(kept)
    return _RunFigures(
        kept=kept,
        duplicates=duplicates,
        lost=(highest or 0) - lowest_sequence + 1 - count,
        lowest_timestamp=lowest_timestamp,
        median_duration=_median(histogram, count),
        span_ns=last_arrival - first_arrival,
    )


def _median(histogram: dict[int, int], count: int) -> float:
    """np.median of the values a histogram counts (the mean of the two middle ones if even)."""
    middle = {(count - 1) // 2, count // 2}
    found: list[int] = []
    seen = 0
    for value in sorted(histogram):
        number = histogram[value]
        found += [value for rank in sorted(middle) if seen <= rank < seen + number]
        seen += number
    return (float(found[0]) + float(found[-1])) / 2


def _pass_delays(
    figures: _RunFigures,
    window_packets: int,
    config: TimelineConfig,
    by_media: ColumnSpill,
    window: WindowSize,
) -> tuple[Rows, Rows]:
    """Pass B: each packet's delay, the drift windows' minima, and the run in media order."""
    per_unit_ns = _NS_PER_S / config.clock_rate_hz
    times: list[Rows] = []
    floors: list[Rows] = []
    carry_arrival = np.zeros(0, np.float64)
    carry_delay = np.zeros(0, np.float64)
    sorter = _MediaSorter(by_media, window.reorder_rows)
    order = 0
    for rows in figures.kept.chunks(window.chunk_rows):
        media = rows["timestamp"] - figures.lowest_timestamp
        delay = rows["arrival"] - media * per_unit_ns
        arrival = np.concatenate((carry_arrival, rows["arrival"]))
        delays = np.concatenate((carry_delay, delay))
        whole = len(delays) // window_packets * window_packets
        if whole:
            lowest = delays[:whole].reshape(-1, window_packets).argmin(axis=1)
            lowest += np.arange(whole // window_packets) * window_packets
            times.append(arrival[lowest])
            floors.append(delays[lowest])
        carry_arrival, carry_delay = arrival[whole:], delays[whole:]
        sorted_rows = np.zeros(len(rows), _MEDIA_ROW)
        sorted_rows["media"] = media
        sorted_rows["delay"] = delay
        sorted_rows["order"] = np.arange(order, order + len(rows))
        order += len(rows)
        for name, _ in CARRIED:
            sorted_rows[name] = rows[name]
        sorter.add(sorted_rows)
    sorter.finish()
    if not times:
        return np.zeros(0, np.float64), np.zeros(0, np.float64)
    return np.concatenate(times), np.concatenate(floors)


class _MediaSorter:
    """Sorts rows by media time (arrival order on ties), holding back `reorder_rows` of them."""

    # Everything emitted is the smallest of what was held; if no later row sorts before the last
    # one emitted, the output is the stable sort of the whole run. Otherwise: _UnboundedError.

    def __init__(self, out: ColumnSpill, reorder_rows: int) -> None:
        self._out = out
        self._reorder_rows = reorder_rows
        self._held = np.zeros(0, _MEDIA_ROW)
        self._last_media: int | None = None

    def add(self, rows: Rows) -> None:
        """Take rows in arrival order."""
        if self._last_media is not None and len(rows) and rows["media"].min() < self._last_media:
            raise _UnboundedError
        held = np.concatenate((self._held, rows))
        held = held[np.lexsort((held["order"], held["media"]))]
        ready = max(0, len(held) - self._reorder_rows)
        self._emit(held[:ready])
        self._held = held[ready:]

    def finish(self) -> None:
        """Emit what is held."""
        self._emit(self._held)
        self._held = np.zeros(0, _MEDIA_ROW)

    def _emit(self, rows: Rows) -> None:
        if len(rows):
            self._last_media = int(rows["media"][-1])
            self._out.append(rows)


def _pass_floor(
    by_media: ColumnSpill, slope: float, config: TimelineConfig, work: Path, window: WindowSize
) -> ColumnSpill:
    """Passes C and D: timeline._delay_floor, its two cumulative minima a chunk at a time."""
    rate = config.max_drift_ppm * 1e-6
    per_unit_ns = _NS_PER_S / config.clock_rate_hz
    floor = ColumnSpill(work / "floor.rows", _FLOAT_ROW)
    least = np.inf
    first = 0
    for rows in by_media.chunks(window.chunk_rows):
        times = rows["media"] * per_unit_ns
        level = rows["delay"] - slope * times
        running = np.minimum.accumulate(np.concatenate(([least], level - rate * times)))[1:]
        least = float(running[-1])
        floor.write_at(first, running + rate * times)  # the forward minimum, for now
        first += len(rows)
    least = np.inf
    for first, rows in by_media.chunks_backwards(window.chunk_rows):
        times = rows["media"] * per_unit_ns
        level = rows["delay"] - slope * times
        rising = (level + rate * times)[::-1]
        running = np.minimum.accumulate(np.concatenate(([least], rising)))[1:]
        least = float(running[-1])
        backward = running[::-1] - rate * times
        forward = floor.read(first, first + len(rows))
        floor.write_at(first, np.minimum(forward, backward) + slope * times)
    return floor


def _pass_place(
    by_media: ColumnSpill,
    floor: ColumnSpill,
    config: TimelineConfig,
    cursor: _Cursor,
    counters: _Counters,
    out: _PlacedWriter,
    window: WindowSize,
) -> None:
    """Pass E: drop late packets, follow drift, round and resolve conflicts (media order)."""
    state = _PlaceState.begin(cursor, config)
    reorder_ns = config.reorder_window_ms * 1_000_000
    first = 0
    for rows in by_media.chunks(window.chunk_rows):
        floors = floor.read(first, first + len(rows))
        first += len(rows)
        if state.anchor_ns is None:
            state.anchor_ns = float(floors[0])
        late = rows["reordered"] & (rows["delay"] - floors > reorder_ns)
        counters.late_dropped += int(late.sum())
        counters.dropped_units += int(rows["duration"][late].sum())
        on_time = rows[~late]
        anchors, moved = state.follow_drift(on_time, floors[~late], counters)
        rate = config.clock_rate_hz
        granularity = config.granularity
        natural = (
            np.round((on_time["media"] + anchors * (rate / _NS_PER_S)) / granularity) * granularity
        ).astype(np.int64) - state.cap_shift
        placed, starts = state.resolve(natural, on_time["duration"], moved, counters)
        counters.reordered += int(on_time["reordered"][placed].sum())
        out.add(_placed_rows(on_time[placed], starts))
    cursor.end = state.step.end
    cursor.cap_shift += state.step.shift


@dataclass(slots=True)
class _PlaceState:
    """Pass E's state carried from chunk to chunk."""

    cap_shift: int
    step: ConflictStep
    soft_ns: float
    hard_ns: float
    anchor_ns: float | None = None
    media_end: int | None = None  # the furthest end of on-time audio so far (media units)

    @classmethod
    def begin(cls, cursor: _Cursor, config: TimelineConfig) -> _PlaceState:
        """The state at a run's first packet."""
        max_gap = _ms_to_units(config.max_gap_ms, config.clock_rate_hz)
        return cls(
            cap_shift=cursor.cap_shift,
            step=ConflictStep(config.granularity, max_gap, cursor.end),
            soft_ns=config.drift_soft_bound_ms * 1e6,
            hard_ns=config.drift_hard_bound_ms * 1e6,
        )

    def follow_drift(
        self, rows: Rows, floors: Rows, counters: _Counters
    ) -> tuple[Rows, list[bool]]:
        """timeline._follow_drift, packet by packet: each anchor, and where it moved earlier."""
        anchor = self.anchor_ns
        assert anchor is not None
        anchors: list[float] = []
        moved: list[bool] = []
        media_end = self.media_end
        for media, duration, hint, floor in zip(
            rows["media"].tolist(),
            rows["duration"].tolist(),
            rows["hint"].tolist(),
            floors.tolist(),
            strict=True,
        ):
            earlier = False
            if media_end is not None:  # the run's first packet keeps the first anchor
                at_silence = hint or media > media_end
                error = abs(floor - anchor)
                if error > self.hard_ns or (error > self.soft_ns and at_silence):
                    earlier = floor < anchor
                    anchor = floor
                    counters.drift_corrections += 1
                media_end = max(media_end, media + duration)
            else:
                media_end = media + duration
            anchors.append(anchor)
            moved.append(earlier)
        self.anchor_ns, self.media_end = anchor, media_end
        return np.array(anchors, np.float64), moved

    def resolve(
        self, natural: Rows, durations: Rows, moved: list[bool], counters: _Counters
    ) -> tuple[Rows, list[int]]:
        """timeline._resolve_conflicts, packet by packet: which are placed, and where."""
        step = self.step
        placed = np.zeros(len(natural), np.bool_)
        starts: list[int] = []
        for at, (wanted, duration, earlier) in enumerate(
            zip(natural.tolist(), durations.tolist(), moved, strict=True)
        ):
            if earlier:
                step.drop_overlaps = True
            start = step.place(wanted, duration, counters)
            if start is not None:
                placed[at] = True
                starts.append(start)
        return placed, starts
