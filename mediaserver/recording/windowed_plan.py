"""Both channels placed from packets spilled to disk: plan_recording's result in bounded memory."""

# The same steps as plan_recording (origin, grids, placement, the common lead-in, the span, the
# cuts of skipped pauses), on spills instead of arrays; each channel's final placements land in
# a spill of their own, read a chunk at a time by whoever writes the channel's file.

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.column_spill import ColumnSpill, Rows
from mediaserver.recording.plan import (
    OPUS_RATE_HZ,
    ORIGIN_MARGIN_NS,
    PRECISE_GRANULARITY,
    RecordingPlan,
    choose_grid,
    compute_cuts,
    cut_starts,
    to_48k,
)
from mediaserver.recording.timeline import TimelineConfig, TimelineStats
from mediaserver.recording.windowed_timeline import (
    DEFAULT_WINDOW,
    PLACED_ROW,
    WindowSize,
    place_windowed,
)


@dataclass(frozen=True, slots=True)
class ChannelSpill:
    """One channel's decodable packets spilled to disk (PACKET_ROW), and what reading found."""

    channel: Channel
    codec: Codec
    packets: ColumnSpill
    malformed: int = 0  # packets left out because their payload does not parse
    first_arrival_ns: int = 0  # meaningless without packets
    last_arrival_ns: int = 0
    whole_packets: bool = True  # every packet lasts whole 20 ms (lossless muxing possible)


@dataclass(frozen=True, slots=True)
class PlacedChannel:
    """A channel's placements on the recording's time line, cuts applied (PLACED_ROW rows)."""

    source: ChannelSpill
    stats: TimelineStats
    grid: int  # placement granularity in the channel's clock units
    placed: ColumnSpill
    placed_48k: int  # audio placed, in 48 kHz samples
    cut_packets: int = 0  # placed packets that straddled a cut span's edge, left out

    def rows(self, chunk_rows: int = DEFAULT_WINDOW.chunk_rows) -> Iterator[Rows]:
        """The placements in time line order, a chunk at a time."""
        return self.placed.chunks(chunk_rows)


@dataclass(frozen=True, slots=True)
class WindowedPlan:
    """Both channels placed, and the recording's time line (origin, span, cuts)."""

    channels: tuple[PlacedChannel, ...]
    # A RecordingPlan without channels: position_48k for events and pauses.
    frame: RecordingPlan


def plan_windowed(
    spills: Sequence[ChannelSpill],
    *,
    mono_start_ns: int,
    stereo_mode: str,
    work: Path,
    skip_spans_ns: Sequence[tuple[int, int]] = (),
    window: WindowSize = DEFAULT_WINDOW,
) -> WindowedPlan:
    """Place both channels on one time line that starts at the first audio of either."""
    arrivals = [s.first_arrival_ns for s in spills if len(s.packets)]
    origin_ns = (min(arrivals) if arrivals else mono_start_ns) - ORIGIN_MARGIN_NS
    grids = [choose_grid(s.codec, stereo_mode, whole_packets=s.whole_packets) for s in spills]
    timelines = []
    for number, (spill, grid) in enumerate(zip(spills, grids, strict=True)):
        channel_work = work / f"channel-{number}"
        channel_work.mkdir()
        config = TimelineConfig(clock_rate_hz=spill.codec.clock_rate_hz, granularity=grid)
        timelines.append(
            place_windowed(
                spill.packets, origin_ns=origin_ns, config=config, work=channel_work, window=window
            )
        )
    grid_48k = max([*grids, PRECISE_GRANULARITY])  # the lead-in keeps every channel on its grid
    starts = [
        to_48k(t.stats.start, s.codec)
        for t, s in zip(timelines, spills, strict=True)
        if t.stats.placed
    ]
    lead_in = (min(starts) // grid_48k * grid_48k) if starts else 0
    shifts = [lead_in * s.codec.clock_rate_hz // OPUS_RATE_HZ for s in spills]
    origin_ns += lead_in * 1_000_000_000 // OPUS_RATE_HZ
    span = max(
        to_48k(t.stats.end - shift, s.codec) if t.stats.placed else 0
        for t, s, shift in zip(timelines, spills, shifts, strict=True)
    )
    span = max(grid_48k, -(-span // grid_48k) * grid_48k)
    cuts = compute_cuts(skip_spans_ns, origin_ns=origin_ns, span_48k=span, grid_48k=grid_48k)
    channels = []
    for number, (spill, timeline, grid, shift) in enumerate(
        zip(spills, timelines, grids, shifts, strict=True)
    ):
        placed = ColumnSpill(work / f"channel-{number}" / "final.rows", PLACED_ROW)
        placed_48k = left_out = 0
        for rows in timeline.placed.chunks(window.chunk_rows):
            moved = rows.copy()
            moved["start"] -= shift
            if cuts:
                moved["start"], touching = cut_starts(
                    moved["start"], moved["duration"], cuts, spill.codec
                )
                left_out += int(touching.sum())
                moved = moved[~touching]
            placed_48k += _sum_48k(moved, spill.codec)
            placed.append(moved)
        timeline.placed.close()
        channels.append(PlacedChannel(spill, timeline.stats, grid, placed, placed_48k, left_out))
    span = max(grid_48k, span - sum(cut.removed for cut in cuts))
    frame = RecordingPlan((), origin_ns, span, has_media=bool(arrivals), cuts=cuts)
    return WindowedPlan(tuple(channels), frame)


def _sum_48k(rows: Rows, codec: Codec) -> int:
    """The placements' audio in 48 kHz samples, each converted as to_48k converts it."""
    return int((rows["duration"] * OPUS_RATE_HZ // codec.clock_rate_hz).sum())


def close_plan(plan: WindowedPlan) -> None:
    """Close the plan's spills (their directory is the caller's)."""
    for channel in plan.channels:
        channel.placed.close()
        channel.source.packets.close()
