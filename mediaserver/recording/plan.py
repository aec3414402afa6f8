"""Where every packet of both channels goes in a recording: the sync-critical part, pure."""

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.placement_columns import PlacementColumns
from mediaserver.recording.timeline import Timeline, TimelineConfig, compute_timeline
from mediaserver.rtp.media_packet import MediaPacket

OPUS_RATE_HZ = 48000
PRECISE_GRANULARITY = 120  # 2.5 ms, the shortest Opus frame: gaps are filled to the sample grid
LOSSLESS_GRANULARITY = 960  # 20 ms: both channels stay on one packet grid so they can be muxed
# Anchored media times can precede the first arrival (that packet may have been delayed by
# jitter), so placement starts a little earlier and the common lead-in is cut away after.
ORIGIN_MARGIN_NS = 500_000_000


@dataclass(frozen=True, slots=True)
class ChannelInput:
    """One channel's decodable packets in arrival order, each with its duration in clock units."""

    channel: Channel
    codec: Codec
    packets: Sequence[MediaPacket]
    durations: Sequence[int]
    malformed: int = 0  # packets left out because their payload does not parse


@dataclass(frozen=True, slots=True)
class ChannelPlan:
    """A channel's placements on the recording's timeline (sample 0 = the stereo file's start)."""

    input: ChannelInput
    timeline: Timeline
    grid: int  # placement granularity in the channel's clock units
    cut_packets: int = 0  # placed packets that straddled a cut span's edge, left out


@dataclass(frozen=True, slots=True)
class Cut:
    """A span cut from the recording (paused with pause_behavior skip): both channels lose it."""

    start: int  # 48 kHz samples since the origin, on the time line before any cut
    removed: int  # 48 kHz samples; whole placement grid units, so both channels stay in step


@dataclass(frozen=True, slots=True)
class RecordingPlan:
    """Both channels placed on one timeline, and how long the recording is."""

    channels: tuple[ChannelPlan, ...]
    origin_ns: int  # the server's monotonic time of the recording's first sample
    span_samples: int  # length in 48 kHz samples, whole grid units, never zero
    has_media: bool
    cuts: tuple[Cut, ...] = ()  # in time order, not overlapping

    def position_48k(self, monotonic_ns: int) -> int:
        """Where a moment of the call falls on the recording's time line (cuts applied, clamped)."""
        raw = (monotonic_ns - self.origin_ns) * OPUS_RATE_HZ // 1_000_000_000
        shift = 0
        for cut in self.cuts:
            if raw >= cut.start + cut.removed:
                shift += cut.removed
            elif raw >= cut.start:
                raw = cut.start  # inside a cut span: where it was cut
        return min(max(0, raw - shift), self.span_samples)


def to_48k(samples: int, codec: Codec) -> int:
    """Convert a count in the codec's clock to 48 kHz samples."""
    return samples * OPUS_RATE_HZ // codec.clock_rate_hz


def compute_grid(item: ChannelInput, stereo_mode: str) -> int:
    """Placement grid of a channel, in its clock units."""
    whole_packets = all(d % LOSSLESS_GRANULARITY == 0 for d in item.durations)
    return choose_grid(item.codec, stereo_mode, whole_packets=whole_packets)


def choose_grid(codec: Codec, stereo_mode: str, *, whole_packets: bool) -> int:
    """Placement grid of a channel whose packets are (or not) all whole 20 ms, in clock units."""
    # Opus snaps to its shortest frame; for lossless muxing to the 20 ms packet grid, but only
    # when every packet is whole 20 ms (otherwise muxing fails and the precise grid is better).
    if codec is not Codec.OPUS:
        return 1
    if stereo_mode == "lossless" and whole_packets:
        return LOSSLESS_GRANULARITY
    return PRECISE_GRANULARITY


def plan_recording(
    inputs: Sequence[ChannelInput],
    *,
    mono_start_ns: int,
    stereo_mode: str,
    skip_spans_ns: Sequence[tuple[int, int]] = (),
) -> RecordingPlan:
    """Place both channels on one timeline that starts at the first audio of either."""
    # `skip_spans_ns` (monotonic start and end) are cut from the time line: placements after a
    # span move up by its length on both channels alike, so the channels stay in sync.
    arrivals = [min(p.arrival_ns for p in i.packets) for i in inputs if i.packets]
    origin_ns = (min(arrivals) if arrivals else mono_start_ns) - ORIGIN_MARGIN_NS
    grids = [compute_grid(i, stereo_mode) for i in inputs]
    timelines = [
        compute_timeline(
            i.packets,
            i.durations,
            origin_ns=origin_ns,
            config=TimelineConfig(clock_rate_hz=i.codec.clock_rate_hz, granularity=grid),
        )
        for i, grid in zip(inputs, grids, strict=True)
    ]
    grid_48k = max([*grids, PRECISE_GRANULARITY])  # the lead-in keeps every channel on its grid
    starts = [
        to_48k(t.placements[0].start, i.codec)
        for t, i in zip(timelines, inputs, strict=True)
        if t.placements
    ]
    lead_in = (min(starts) // grid_48k * grid_48k) if starts else 0
    timelines = [_rebase(t, lead_in, i.codec) for t, i in zip(timelines, inputs, strict=True)]
    origin_ns += lead_in * 1_000_000_000 // OPUS_RATE_HZ
    span = max(_end_48k(t, i.codec) for t, i in zip(timelines, inputs, strict=True))
    span = max(grid_48k, -(-span // grid_48k) * grid_48k)
    cuts = compute_cuts(skip_spans_ns, origin_ns=origin_ns, span_48k=span, grid_48k=grid_48k)
    channels = []
    for item, timeline, grid in zip(inputs, timelines, grids, strict=True):
        cut_timeline, left_out = apply_cuts(timeline, cuts, item.codec)
        channels.append(ChannelPlan(item, cut_timeline, grid, left_out))
    span = max(grid_48k, span - sum(cut.removed for cut in cuts))
    return RecordingPlan(tuple(channels), origin_ns, span, has_media=bool(arrivals), cuts=cuts)


def compute_cuts(
    spans_ns: Sequence[tuple[int, int]], *, origin_ns: int, span_48k: int, grid_48k: int
) -> tuple[Cut, ...]:
    """Skip spans as cuts of the time line: on the grid, within the recording, merged."""
    snapped: list[tuple[int, int]] = []
    for start_ns, end_ns in sorted(spans_ns):
        start = (start_ns - origin_ns) * OPUS_RATE_HZ // 1_000_000_000 // grid_48k * grid_48k
        end = -(-(end_ns - origin_ns) * OPUS_RATE_HZ // 1_000_000_000 // grid_48k) * grid_48k
        start, end = max(0, start), min(span_48k, end)
        if end <= start:
            continue
        if snapped and start <= snapped[-1][1]:
            snapped[-1] = (snapped[-1][0], max(end, snapped[-1][1]))
        else:
            snapped.append((start, end))
    return tuple(Cut(start, end - start) for start, end in snapped)


def apply_cuts(timeline: Timeline, cuts: Sequence[Cut], codec: Codec) -> tuple[Timeline, int]:
    """Move placements up past the cuts before them; those touching a cut are left out."""
    if not cuts:
        return timeline, 0
    columns = PlacementColumns.of(timeline.placements)
    moved, touching = cut_starts(columns.starts, columns.durations, cuts, codec)
    kept = PlacementColumns(moved, columns.durations, columns.indexes).select(~touching)
    return replace(timeline, placements=kept), int(touching.sum())


def cut_starts(
    starts: npt.NDArray[np.int64],
    durations: npt.NDArray[np.int64],
    cuts: Sequence[Cut],
    codec: Codec,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Placements' starts moved up past the cuts before them, and which ones touch a cut."""
    ratio = OPUS_RATE_HZ // codec.clock_rate_hz  # whole: 1 for Opus, 6 for G.711
    cut_begins = np.array([cut.start for cut in cuts], np.int64)
    cut_ends = cut_begins + np.array([cut.removed for cut in cuts], np.int64)
    # Channel clock units removed by the first k cuts, for k = 0 .. len(cuts).
    removed_before = np.concatenate(([0], np.cumsum([cut.removed // ratio for cut in cuts])))
    begins, ends = starts * ratio, (starts + durations) * ratio
    passed = np.searchsorted(cut_ends, begins, side="right")  # cuts wholly before each start
    upcoming = np.minimum(passed, len(cuts) - 1)
    # Audio journalled at the very edge of a pause: it would overlap what follows the cut.
    touching = (passed < len(cuts)) & (ends > cut_begins[upcoming])
    return starts - removed_before[passed], touching


def _rebase(timeline: Timeline, lead_in_48k: int, codec: Codec) -> Timeline:
    """Move every placement earlier by a lead-in common to both channels."""
    shift = lead_in_48k * codec.clock_rate_hz // OPUS_RATE_HZ
    placements = PlacementColumns.of(timeline.placements).shifted(-shift)
    return replace(timeline, placements=placements)


def _end_48k(timeline: Timeline, codec: Codec) -> int:
    """Where a channel's last placed audio ends, in 48 kHz samples since the origin."""
    if not timeline.placements:
        return 0
    last = timeline.placements[-1]
    return to_48k(last.start + last.duration, codec)
