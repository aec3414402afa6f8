"""Timeline placement: where each received packet's audio goes in a channel's recording."""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Protocol

import numpy as np
import numpy.typing as npt

from mediaserver.errors import SettingsError
from mediaserver.recording.placement_columns import Placement, PlacementColumns
from mediaserver.rtp.media_packet import MediaPacket

# RFC 3550 §5.1: 16-bit sequence numbers and 32-bit timestamps, both wrapping.
_SEQUENCE_MODULUS = 1 << 16
_TIMESTAMP_MODULUS = 1 << 32
_SEQUENCE_HALF = _SEQUENCE_MODULUS >> 1
_TIMESTAMP_HALF = _TIMESTAMP_MODULUS >> 1
# RFC 3550 Appendix A.1: sequence steps back further than MAX_MISORDER, or forward further than
# MAX_DROPOUT, are not reordering or loss but a restarted sequence.
_MAX_MISORDER = 100
_MAX_DROPOUT = 3000
# Packets after a timing discontinuity examined to tell one odd packet from a real jump.
_LOOKAHEAD_PACKETS = 3
# A run shorter than this many drift windows gives no drift slope: a few milliseconds of
# jitter over a short span would read as hundreds of ppm.
_MIN_DRIFT_SPAN_WINDOWS = 10
_NS_PER_S = 1_000_000_000

_FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class TimelineConfig:
    """How packets are anchored, checked for drift and rounded onto the recording's timeline."""

    clock_rate_hz: int = 48000
    granularity: int = 120
    reorder_window_ms: int = 200
    jump_threshold_ms: int = 1000
    drift_window_ms: int = 2000
    drift_soft_bound_ms: float = 5.0
    drift_hard_bound_ms: float = 15.0
    max_gap_ms: int = 3_600_000
    # The fastest a sender's clock can run against ours. Real oscillators stay within a few
    # hundred ppm; a delay that changes faster than this is queueing (the network, or a stalled
    # server), never drift, and must not move the anchor.
    max_drift_ppm: float = 1000.0
    # Opus payloads this small carry no audible content (DTX, digital silence): a place where
    # the anchor may move without cutting speech.
    silence_payload_bytes: int = 8

    def __post_init__(self) -> None:
        """Reject values the placement maths cannot work with."""
        if self.clock_rate_hz <= 0:
            raise SettingsError(f"clock_rate_hz must be positive, got {self.clock_rate_hz}")
        if self.granularity <= 0:
            raise SettingsError(f"granularity must be positive, got {self.granularity}")
        if min(self.reorder_window_ms, self.jump_threshold_ms, self.drift_window_ms) <= 0:
            raise SettingsError("reorder, jump and drift windows must be positive")
        if not 0 < self.drift_soft_bound_ms <= self.drift_hard_bound_ms:
            raise SettingsError("drift bounds must satisfy 0 < soft <= hard")
        if self.max_gap_ms <= 0:
            raise SettingsError(f"max_gap_ms must be positive, got {self.max_gap_ms}")
        if self.max_drift_ppm <= 0:
            raise SettingsError(f"max_drift_ppm must be positive, got {self.max_drift_ppm}")


@dataclass(frozen=True)
class TimelineStats:
    """What placement did with a channel's packets; each packet is in exactly one bucket."""

    # packets == placed + duplicates + late_dropped + overlaps_dropped + outliers_dropped
    # + empty_dropped.

    packets: int = 0
    placed: int = 0
    duplicates: int = 0
    late_dropped: int = 0
    overlaps_dropped: int = 0
    outliers_dropped: int = 0
    empty_dropped: int = 0
    lost: int = 0
    reordered: int = 0
    runs: int = 0
    ssrc_changes: int = 0
    timestamp_jumps: int = 0
    sequence_resets: int = 0
    drift_corrections: int = 0
    drift_ppm: float = 0.0
    audio_dropped_ms: float = 0.0
    silence_ms: float = 0.0
    gap_capped: int = 0
    start: int = 0
    end: int = 0


@dataclass(frozen=True)
class Timeline:
    """A channel's placements, sorted by start and never overlapping, and what happened to it."""

    # PlacementColumns from compute_timeline; any sequence of Placement is accepted downstream.
    placements: Sequence[Placement]
    stats: TimelineStats


@dataclass(slots=True)
class _Run:
    """One SSRC whose timestamps advance with the server clock, as seen so far."""

    ssrc: int
    highest_sequence: int
    lowest_sequence: int
    # Timing of the packet with the highest sequence: the reference for jump detection.
    last_arrival_ns: int
    last_timestamp: int


class _Column(Protocol):
    """Where _split_runs writes one number per packet (an array, or a spill's column)."""

    def __setitem__(self, index: int, value: int, /) -> None:
        """Set the number of the packet at `index`."""


@dataclass(slots=True)
class _Split:
    """Which run each packet (by arrival position) belongs to, with its extended numbers."""

    runs: list[_Run]
    run_of: _Column  # -1 for packets dropped before placement
    sequences: _Column
    timestamps: _Column


@dataclass(frozen=True, slots=True)
class _Columns:
    """Per-packet values of one run as arrays, in arrival order."""

    sequences: npt.NDArray[np.int64]
    timestamps: npt.NDArray[np.int64]
    arrivals_ns: _FloatArray  # relative to the origin
    durations: npt.NDArray[np.int64]
    silence_hints: npt.NDArray[np.bool_]
    indexes: npt.NDArray[np.int64]

    def take(self, selection: npt.NDArray[np.intp]) -> _Columns:
        """The same columns for the selected packets, in the selection's order."""
        return _Columns(
            self.sequences[selection],
            self.timestamps[selection],
            self.arrivals_ns[selection],
            self.durations[selection],
            self.silence_hints[selection],
            self.indexes[selection],
        )


@dataclass(slots=True)
class _Counters:
    """Mutable tallies gathered while placing, frozen into TimelineStats at the end."""

    duplicates: int = 0
    late_dropped: int = 0
    overlaps_dropped: int = 0
    outliers_dropped: int = 0
    empty_dropped: int = 0
    lost: int = 0
    reordered: int = 0
    ssrc_changes: int = 0
    timestamp_jumps: int = 0
    sequence_resets: int = 0
    drift_corrections: int = 0
    dropped_units: int = 0
    gap_capped: int = 0
    drift_weighted_ppm: float = 0.0
    drift_weight_ns: float = 0.0


@dataclass(slots=True)
class _Cursor:
    """The end of the last placement and the silence removed by capped gaps, shared by all runs."""

    end: int = 0
    cap_shift: int = 0
    starts: list[npt.NDArray[np.int64]] = field(default_factory=list)
    durations: list[npt.NDArray[np.int64]] = field(default_factory=list)
    indexes: list[npt.NDArray[np.int64]] = field(default_factory=list)


def _extend(value: int, reference: int, modulus: int) -> int:
    """Return `value` moved to the wrap cycle that puts it nearest `reference`."""
    # The stateful unwrappers in mediaserver.rtp.unwrap commit every value they see; here a packet
    # must be compared with a run (or the run before it) before it is known to belong there.
    half = modulus >> 1
    return reference + (value - reference + half) % modulus - half


def compute_timeline(
    packets: Sequence[MediaPacket],
    durations: Sequence[int],
    *,
    origin_ns: int,
    config: TimelineConfig,
) -> Timeline:
    """Place one channel's packets, in arrival order, on a timeline starting at origin_ns."""
    # `durations[i]` is the audio in packets[i], in clock units (from the Opus TOC, or one unit
    # per G.711 byte); a packet of duration 0 carries nothing and is dropped as empty.
    if len(durations) != len(packets):
        raise ValueError(f"{len(packets)} packets but {len(durations)} durations")
    counters = _Counters()
    count = len(packets)
    # Typed arrays, not lists: 8 bytes a packet each rather than a pointer and an int object.
    run_numbers, sequences, timestamps = (array("q", [v]) * count for v in (-1, 0, 0))
    split = _Split([], run_numbers, sequences, timestamps)
    _split_runs(packets, durations, config, counters, split)
    run_of = np.frombuffer(run_numbers, dtype=np.int64) if count else np.zeros(0, np.int64)
    everything = _Columns(
        sequences=np.frombuffer(sequences, dtype=np.int64) if count else run_of,
        timestamps=np.frombuffer(timestamps, dtype=np.int64) if count else run_of,
        arrivals_ns=(
            np.fromiter(map(attrgetter("arrival_ns"), packets), np.int64, count) - origin_ns
        ).astype(np.float64),
        durations=np.fromiter(durations, np.int64, count),
        silence_hints=np.fromiter(
            (len(p.payload) <= config.silence_payload_bytes for p in packets), np.bool_, count
        ),
        indexes=np.arange(count, dtype=np.int64),
    )
    # Group packet positions by run, keeping arrival order inside each run.
    by_run = np.argsort(run_of, kind="stable")
    bounds = np.searchsorted(run_of[by_run], np.arange(len(split.runs) + 1))
    cursor = _Cursor()
    for run_number in range(len(split.runs)):
        members = by_run[bounds[run_number] : bounds[run_number + 1]]
        # One run holding every packet (the usual call) is all of them in order: no copy.
        run = everything if len(members) == count else everything.take(members)
        _place_run(run, config=config, cursor=cursor, counters=counters)
    placements = PlacementColumns(
        _join(cursor.starts), _join(cursor.durations), _join(cursor.indexes)
    )
    start = placements[0].start if placements else 0
    end = placements[-1].start + placements[-1].duration if placements else 0
    placed = _Placed(len(placements), start, end, placements.total_duration())
    return Timeline(placements, _build_stats(count, len(split.runs), placed, config, counters))


def _join(parts: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
    """The runs' columns as one int64 array."""
    return np.concatenate(parts).astype(np.int64, copy=False) if parts else np.zeros(0, np.int64)


def _split_runs(
    packets: Sequence[MediaPacket],
    durations: Sequence[int],
    config: TimelineConfig,
    counters: _Counters,
    split: _Split,
) -> None:
    """Assign packets to runs of one SSRC with a continuous clock, dropping timing outliers."""
    # Every entry of `split` is written at the position being read, in increasing order, so a
    # caller may hand in columns that stream to disk (see windowed_timeline).
    ns_per_unit = _NS_PER_S / config.clock_rate_hz
    jump_ns = config.jump_threshold_ms * 1_000_000
    reorder_ns = config.reorder_window_ms * 1_000_000
    runs = split.runs
    current: _Run | None = None
    previous: _Run | None = None
    for position, packet in enumerate(packets):
        duration = durations[position]
        if duration <= 0:
            counters.empty_dropped += 1
            continue
        if current is None:
            current = _start_run(split, packet, position)
            continue
        if (
            previous is not None
            and packet.ssrc == previous.ssrc
            and packet.arrival_ns - previous.last_arrival_ns <= reorder_ns
            and _is_straggler(packet, previous, current)
        ):
            # Reordered across a run boundary: it belongs to the run it was sent in.
            _add_old(split, len(runs) - 2, packet, position)
            continue
        if packet.ssrc != current.ssrc:
            if _is_outlier(packets, position, current, config):
                counters.outliers_dropped += 1
                counters.dropped_units += duration
                continue
            counters.ssrc_changes += 1
            previous, current = current, _start_run(split, packet, position)
            continue
        # _extend inlined: this is the loop every packet goes through.
        advance = (packet.sequence - current.highest_sequence + _SEQUENCE_HALF) % (
            _SEQUENCE_MODULUS
        ) - _SEQUENCE_HALF
        timestamp_advance = (packet.rtp_timestamp - current.last_timestamp + _TIMESTAMP_HALF) % (
            _TIMESTAMP_MODULUS
        ) - _TIMESTAMP_HALF
        sequence = current.highest_sequence + advance
        timestamp = current.last_timestamp + timestamp_advance
        # Timestamps that advance with the server clock (DTX, mute, loss) keep the run going;
        # a disagreement beyond the threshold is a clock that stopped, restarted or jumped.
        skew_ns = (packet.arrival_ns - current.last_arrival_ns) - timestamp_advance * ns_per_unit
        jumped = skew_ns < -jump_ns or (
            skew_ns > jump_ns and not _is_catch_up(packets, position, ns_per_unit)
        )
        # A forward sequence step too big for the audio the timestamps advanced by is a reset.
        reset = advance < -_MAX_MISORDER or (
            advance > _MAX_DROPOUT and (advance - 1) * duration > timestamp_advance
        )
        if advance <= 0 and not reset:
            if jumped:
                # An old sequence number with inconsistent timing cannot be placed sensibly.
                counters.outliers_dropped += 1
                counters.dropped_units += duration
            else:
                _add_old(
                    split, len(runs) - 1, packet, position, sequence=sequence, timestamp=timestamp
                )
            continue
        if jumped or reset:
            if _is_outlier(packets, position, current, config):
                counters.outliers_dropped += 1
                counters.dropped_units += duration
                continue
            if reset:
                counters.sequence_resets += 1
            else:
                counters.timestamp_jumps += 1
            previous, current = current, _start_run(split, packet, position)
            continue
        split.run_of[position] = len(runs) - 1
        split.sequences[position] = sequence
        split.timestamps[position] = timestamp
        current.highest_sequence = sequence
        current.last_arrival_ns = packet.arrival_ns
        current.last_timestamp = timestamp


def _is_catch_up(packets: Sequence[MediaPacket], position: int, ns_per_unit: float) -> bool:
    """Whether a late packet heads a burst: what was held back arriving faster than real time."""
    # A receiver that stalled (or a link that queued) delivers its backlog at once: arrivals
    # bunch while timestamps advance, and the delay falls back to where it was. A sender whose
    # clock really stopped or jumped resumes at its normal pace. Only the latter starts a run.
    packet = packets[position]
    following = [
        later
        for later in packets[position + 1 : position + 1 + _LOOKAHEAD_PACKETS + 2]
        if later.ssrc == packet.ssrc
    ]
    if len(following) < 2:
        return False
    last = following[-1]
    media_ns = (
        (last.rtp_timestamp - packet.rtp_timestamp + _TIMESTAMP_HALF) % _TIMESTAMP_MODULUS
        - _TIMESTAMP_HALF
    ) * ns_per_unit
    return media_ns > 0 and last.arrival_ns - packet.arrival_ns < media_ns / 2


def _start_run(split: _Split, packet: MediaPacket, position: int) -> _Run:
    """Open a run with its first packet, whose raw numbers become the run's extended numbers."""
    run = _Run(
        ssrc=packet.ssrc,
        highest_sequence=packet.sequence,
        lowest_sequence=packet.sequence,
        last_arrival_ns=packet.arrival_ns,
        last_timestamp=packet.rtp_timestamp,
    )
    split.runs.append(run)
    split.run_of[position] = len(split.runs) - 1
    split.sequences[position] = packet.sequence
    split.timestamps[position] = packet.rtp_timestamp
    return run


def _add_old(
    split: _Split,
    run_number: int,
    packet: MediaPacket,
    position: int,
    *,
    sequence: int | None = None,
    timestamp: int | None = None,
) -> None:
    """Add a packet older than its run's newest one (reordered, late or a duplicate)."""
    run = split.runs[run_number]
    if sequence is None:
        sequence = _extend(packet.sequence, run.highest_sequence, _SEQUENCE_MODULUS)
    if timestamp is None:
        timestamp = _extend(packet.rtp_timestamp, run.last_timestamp, _TIMESTAMP_MODULUS)
    split.run_of[position] = run_number
    split.sequences[position] = sequence
    split.timestamps[position] = timestamp
    run.lowest_sequence = min(run.lowest_sequence, sequence)


def _is_straggler(packet: MediaPacket, previous: _Run, current: _Run) -> bool:
    """Whether a packet of the previous run's SSRC is an old one of that run."""
    sequence = _extend(packet.sequence, previous.highest_sequence, _SEQUENCE_MODULUS)
    if not 0 <= previous.highest_sequence - sequence <= _MAX_MISORDER:
        return False
    if packet.ssrc != current.ssrc:
        return True
    # Same SSRC on both sides of a timestamp jump: numbers before the current run began are old.
    return _extend(packet.sequence, current.highest_sequence, _SEQUENCE_MODULUS) < (
        current.lowest_sequence
    )


def _continues(packet: MediaPacket, run: _Run, config: TimelineConfig) -> bool:
    """Whether a packet fits a run: same SSRC, nearby sequence number and consistent timing."""
    if packet.ssrc != run.ssrc:
        return False
    advance = _extend(packet.sequence, run.highest_sequence, _SEQUENCE_MODULUS) - (
        run.highest_sequence
    )
    if not -_MAX_MISORDER <= advance <= _MAX_DROPOUT:
        return False
    timestamp = _extend(packet.rtp_timestamp, run.last_timestamp, _TIMESTAMP_MODULUS)
    skew_ns = (packet.arrival_ns - run.last_arrival_ns) - (timestamp - run.last_timestamp) * (
        _NS_PER_S / config.clock_rate_hz
    )
    return abs(skew_ns) <= config.jump_threshold_ms * 1_000_000


def _is_outlier(
    packets: Sequence[MediaPacket], position: int, current: _Run, config: TimelineConfig
) -> bool:
    """Whether a discontinuous packet is a one-off: the stream carries on as before right after."""
    # A packet stuck in the network for seconds, or a stray from another stream, would otherwise
    # start a run of one packet whose placement blots out the real audio around it.
    packet = packets[position]
    probe = _Run(
        packet.ssrc, packet.sequence, packet.sequence, packet.arrival_ns, packet.rtp_timestamp
    )
    following = packets[position + 1 : position + 1 + _LOOKAHEAD_PACKETS]
    if not following or not _continues(following[0], current, config):
        return False
    return not any(_continues(later, probe, config) for later in following)


def _place_run(
    run: _Columns, *, config: TimelineConfig, cursor: _Cursor, counters: _Counters
) -> None:
    """Anchor one run to the server clock, follow its drift and append its placements."""
    # The first copy of each sequence number counts; later copies are duplicates.
    _, first_copies = np.unique(run.sequences, return_index=True)
    counters.duplicates += len(run.sequences) - len(first_copies)
    run = run.take(np.sort(first_copies))
    sequences = run.sequences
    counters.lost += int(sequences.max() - sequences.min()) + 1 - len(sequences)
    reordered = np.zeros(len(sequences), dtype=np.bool_)
    reordered[1:] = sequences[1:] < np.maximum.accumulate(sequences)[:-1]

    rate = config.clock_rate_hz
    media = run.timestamps - run.timestamps.min()
    media_ns = media * (_NS_PER_S / rate)
    # Delay of each packet relative to its media time: it can only be late, never early, so the
    # smallest delays trace the network's floor and the sender's clock against ours.
    delay = run.arrivals_ns - media_ns
    window = _window_packets(float(np.median(run.durations)), config)
    slope = _fit_drift(*_drift_minima(run.arrivals_ns, delay, window), config)
    if slope is not None:
        span_ns = float(run.arrivals_ns.max() - run.arrivals_ns.min())
        # Delay falling over time means the sender's timestamps run ahead of our clock.
        counters.drift_weighted_ppm += -slope * 1e6 * span_ns
        counters.drift_weight_ns += span_ns
    floor = _delay_floor(media_ns, delay, slope or 0.0, config.max_drift_ppm)
    anchor_ns = float(floor[int(np.argmin(media))])
    late = reordered & (delay - floor > config.reorder_window_ms * 1_000_000)
    counters.late_dropped += int(late.sum())
    counters.dropped_units += int(run.durations[late].sum())

    # From here on in media order: that is the order audio is laid down in.
    on_time = np.flatnonzero(~late)
    order = on_time[np.argsort(media[on_time], kind="stable")]
    media = media[order]
    run = run.take(order)
    anchors_ns, moved_earlier = _follow_drift(
        media, run, floor_ns=floor[order], anchor_ns=anchor_ns, config=config, counters=counters
    )
    granularity = config.granularity
    natural = (
        np.round((media + anchors_ns * (rate / _NS_PER_S)) / granularity) * granularity
    ).astype(np.int64) - cursor.cap_shift
    starts, placed = _resolve_conflicts(
        natural,
        run.durations,
        moved_earlier=moved_earlier,
        config=config,
        cursor=cursor,
        counters=counters,
    )
    counters.reordered += int(reordered[order][placed].sum())
    cursor.starts.append(starts[placed])
    cursor.durations.append(run.durations[placed])
    cursor.indexes.append(run.indexes[placed])


def _follow_drift(
    media: npt.NDArray[np.int64],
    run: _Columns,
    *,
    floor_ns: _FloatArray,
    anchor_ns: float,
    config: TimelineConfig,
    counters: _Counters,
) -> tuple[_FloatArray, set[int]]:
    """Each packet's anchor (media order) after re-anchoring, and where it moved earlier."""
    # Moving the anchor inserts or removes audio, so it moves where there is silence anyway (a
    # timestamp gap before the packet, or a DTX frame) once the error passes the soft bound, and
    # at once past the hard bound.
    count = len(media)
    ends = np.maximum.accumulate(media + run.durations)
    at_silence = run.silence_hints.copy()
    at_silence[1:] |= media[1:] > ends[:-1]
    soft_ns = config.drift_soft_bound_ms * 1e6
    hard_ns = config.drift_hard_bound_ms * 1e6
    anchors = np.empty(count, dtype=np.float64)
    moved_earlier: set[int] = set()
    segment = 0
    while True:
        found = _next_correction(
            floor_ns,
            at_silence,
            begin=segment + 1,
            anchor_ns=anchor_ns,
            soft_ns=soft_ns,
            hard_ns=hard_ns,
        )
        if found is None:
            anchors[segment:] = anchor_ns
            return anchors, moved_earlier
        anchors[segment:found] = anchor_ns
        new_anchor_ns = float(floor_ns[found])
        if new_anchor_ns < anchor_ns:
            moved_earlier.add(found)
        anchor_ns = new_anchor_ns
        counters.drift_corrections += 1
        segment = found


def _next_correction(
    floor_ns: _FloatArray,
    at_silence: npt.NDArray[np.bool_],
    *,
    begin: int,
    anchor_ns: float,
    soft_ns: float,
    hard_ns: float,
) -> int | None:
    """First packet from `begin` where the anchor must move, searching in growing chunks."""
    chunk = 1024
    while begin < len(floor_ns):
        error = np.abs(floor_ns[begin : begin + chunk] - anchor_ns)
        due = (error > hard_ns) | ((error > soft_ns) & at_silence[begin : begin + chunk])
        if due.any():
            return begin + int(np.argmax(due))
        begin += chunk
        chunk *= 2
    return None


@dataclass(slots=True)
class ConflictStep:
    """Where a packet goes against the one before it: a small overlap is pushed past it, a
    large one dropped, an absurd gap shortened (everything after it moving back as much)."""

    granularity: int
    max_gap: int
    end: int  # the end of the last placement
    shift: int = 0  # silence removed by gaps capped within this run
    # After an anchor moved earlier: the audio it overlaps is what the move removes, so pushing
    # it later would only carry the old anchor on, packet by packet. Ends at the next placement.
    drop_overlaps: bool = False

    def place(self, natural: int, duration: int, counters: _Counters) -> int | None:
        """The start of a packet wanted at `natural`, or None when it is dropped as an overlap."""
        start = natural - self.shift
        if start - self.end > self.max_gap:
            excess = (start - self.end - self.max_gap) // self.granularity * self.granularity
            self.shift += excess
            start -= excess
            counters.gap_capped += 1
        if start < self.end:
            if self.drop_overlaps or 2 * (self.end - start) > duration:
                counters.overlaps_dropped += 1
                counters.dropped_units += duration
                return None
            # Small overlaps come from rounding: push the packet just past the previous one.
            start = -(-self.end // self.granularity) * self.granularity
        self.drop_overlaps = False
        self.end = start + duration
        return start


def _resolve_conflicts(
    natural: npt.NDArray[np.int64],
    durations: npt.NDArray[np.int64],
    *,
    moved_earlier: set[int],
    config: TimelineConfig,
    cursor: _Cursor,
    counters: _Counters,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Final starts and which packets are placed, resolving overlaps and capping absurd gaps."""
    # Only packets that conflict with the one before (and those a conflict pushes out of place)
    # are stepped one by one; stretches in step with their natural place are taken whole.
    max_gap = _ms_to_units(config.max_gap_ms, config.clock_rate_hz)
    step = ConflictStep(config.granularity, max_gap, cursor.end)
    count = len(natural)
    gaps = natural[1:] - (natural[:-1] + durations[:-1])
    conflicts = (np.flatnonzero((gaps < 0) | (gaps > max_gap)) + 1).tolist()
    conflicts.append(count)
    starts = natural.copy()
    placed = np.ones(count, dtype=np.bool_)
    next_conflict = 0
    position = 0
    while position < count:
        if position in moved_earlier:
            step.drop_overlaps = True
        start = step.place(int(natural[position]), int(durations[position]), counters)
        if start is None:
            placed[position] = False
            position += 1
            continue
        starts[position] = start
        if start != int(natural[position]) - step.shift:
            position += 1
            continue
        # In step again: everything up to the next natural conflict follows as it is.
        while conflicts[next_conflict] <= position:
            next_conflict += 1
        following = conflicts[next_conflict]
        if following > position + 1:
            starts[position + 1 : following] = natural[position + 1 : following] - step.shift
            step.end = int(natural[following - 1]) - step.shift + int(durations[following - 1])
        position = following
    cursor.end = step.end
    cursor.cap_shift += step.shift
    return starts, placed


def _window_packets(median_duration: float, config: TimelineConfig) -> int:
    """Number of packets in one drift window while the sender talks (packets of median length)."""
    typical_ms = median_duration * 1000 / config.clock_rate_hz
    return max(2, round(config.drift_window_ms / typical_ms))


def _drift_minima(
    arrival: _FloatArray, delay: _FloatArray, window: int
) -> tuple[_FloatArray, _FloatArray]:
    """Arrival and delay of each whole window's lowest-delay packet (the first, on a tie)."""
    chunks = len(delay) // window
    shaped = delay[: chunks * window].reshape(chunks, window)
    lowest = shaped.argmin(axis=1) + np.arange(chunks) * window
    return arrival[lowest], delay[lowest]


def _fit_drift(times: _FloatArray, floors: _FloatArray, config: TimelineConfig) -> float | None:
    """Slope (ns of delay per ns) of the lower delay envelope by least squares, if measurable."""
    # Each window of packets contributes its minimum delay; the fit is repeated on the points at
    # or under the first line, because congested windows only ever sit above the true floor.
    if len(floors) < 3:
        return None
    if float(times.max() - times.min()) < _MIN_DRIFT_SPAN_WINDOWS * config.drift_window_ms * 1e6:
        return None
    slope, intercept = np.polyfit(times - times.mean(), floors, 1)
    residual = floors - (slope * (times - times.mean()) + intercept)
    under = residual <= np.median(residual)
    if int(under.sum()) >= 3:
        slope, _ = np.polyfit(times[under] - times[under].mean(), floors[under], 1)
    return float(slope)


def _delay_floor(
    media_ns: _FloatArray, delay: _FloatArray, slope: float, max_drift_ppm: float
) -> _FloatArray:
    """The lowest delay curve under every packet whose slope stays within the drift bound."""
    # Queueing (jitter, a congested link, a stalled server) only ever adds delay, and it comes
    # and goes faster than any clock drifts; the sender's clock moves the true floor by at most
    # max_drift_ppm. The tightest curve under all delays with that bounded slope is
    # min_j(delay_j + rate * |t - t_j|), done in two cumulative minima over media time. A burst
    # of late packets after a stall lifts nothing; the fitted drift slope is taken out first so
    # the bound applies to what is left.
    rate = max_drift_ppm * 1e-6
    order = np.argsort(media_ns, kind="stable")
    times = media_ns[order]
    level = delay[order] - slope * times
    forward = np.minimum.accumulate(level - rate * times) + rate * times
    backward = np.minimum.accumulate((level + rate * times)[::-1])[::-1] - rate * times
    floor = np.empty_like(delay)
    floor[order] = np.minimum(forward, backward) + slope * times
    return floor


def _ms_to_units(duration_ms: float, clock_rate_hz: int) -> int:
    """Convert milliseconds to clock-rate units."""
    return math.floor(duration_ms * clock_rate_hz / 1000)


@dataclass(frozen=True, slots=True)
class _Placed:
    """What the statistics need of a channel's placements: count, extent and audio placed."""

    count: int
    start: int
    end: int
    units: int


def _build_stats(
    packet_count: int, run_count: int, placed: _Placed, config: TimelineConfig, counters: _Counters
) -> TimelineStats:
    """Freeze the tallies into the JSON-friendly statistics."""
    ms_per_unit = 1000 / config.clock_rate_hz
    start, end, placed_units = placed.start, placed.end, placed.units
    drift_ppm = (
        counters.drift_weighted_ppm / counters.drift_weight_ns if counters.drift_weight_ns else 0.0
    )
    return TimelineStats(
        packets=packet_count,
        placed=placed.count,
        duplicates=counters.duplicates,
        late_dropped=counters.late_dropped,
        overlaps_dropped=counters.overlaps_dropped,
        outliers_dropped=counters.outliers_dropped,
        empty_dropped=counters.empty_dropped,
        lost=counters.lost,
        reordered=counters.reordered,
        runs=run_count,
        ssrc_changes=counters.ssrc_changes,
        timestamp_jumps=counters.timestamp_jumps,
        sequence_resets=counters.sequence_resets,
        drift_corrections=counters.drift_corrections,
        drift_ppm=round(drift_ppm, 3),
        audio_dropped_ms=round(counters.dropped_units * ms_per_unit, 3),
        silence_ms=round((end - start - placed_units) * ms_per_unit, 3),
        gap_capped=counters.gap_capped,
        start=start,
        end=end,
    )
