"""Windowed placement over spilled packets gives exactly what whole-channel placement gives."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_timeline_properties import arbitrary_packets, configs

from mediaserver.recording.column_spill import ColumnSpill
from mediaserver.recording.spilled_runs import PACKET_ROW
from mediaserver.recording.timeline import Timeline, TimelineConfig, compute_timeline
from mediaserver.recording.windowed_timeline import (
    WindowedTimeline,
    WindowSize,
    place_windowed,
)
from mediaserver.rtp.media_packet import MediaPacket

from timeline_input import TimedPacket

TINY = WindowSize(chunk_rows=3, reorder_rows=2, duplicate_span=2)
SMALL = WindowSize(chunk_rows=7, reorder_rows=16, duplicate_span=8)
windows = st.sampled_from([TINY, SMALL, WindowSize()])


def as_media(packets: Sequence[TimedPacket]) -> list[MediaPacket]:
    """The packets as compute_timeline takes them (payload size gives the silence hint)."""
    return [
        MediaPacket(
            p.arrival_ns,
            p.rtp_timestamp,
            p.sequence,
            p.ssrc,
            111,
            False,
            bytes(3 if p.silence_hint else 20),
        )
        for p in packets
    ]


def spill(path: Path, packets: Sequence[MediaPacket], durations: Sequence[int]) -> ColumnSpill:
    """The packets as the windowed build reads them."""
    rows = np.zeros(len(packets), PACKET_ROW)
    rows["arrival_ns"] = [p.arrival_ns for p in packets]
    rows["rtp_timestamp"] = [p.rtp_timestamp for p in packets]
    rows["sequence"] = [p.sequence for p in packets]
    rows["ssrc"] = [p.ssrc for p in packets]
    rows["duration"] = durations
    rows["length"] = [len(p.payload) for p in packets]
    rows["offset"] = np.arange(len(packets)) * 1000
    out = ColumnSpill(path, PACKET_ROW)
    out.append(rows)
    return out


def place_both(
    packets: Sequence[MediaPacket],
    durations: Sequence[int],
    *,
    origin_ns: int,
    config: TimelineConfig,
    window: WindowSize,
) -> tuple[Timeline, WindowedTimeline, np.ndarray]:
    """Whole-channel and windowed placement of the same packets, and the windowed rows."""
    whole = compute_timeline(packets, durations, origin_ns=origin_ns, config=config)
    with tempfile.TemporaryDirectory() as work:
        source = spill(Path(work) / "packets", packets, durations)
        windowed = place_windowed(
            source, origin_ns=origin_ns, config=config, work=Path(work), window=window
        )
        rows = windowed.placed.read(0, len(windowed.placed)).copy()
        windowed.placed.close()
        source.close()
    return whole, windowed, rows


def assert_same(whole: Timeline, windowed: WindowedTimeline, rows: np.ndarray) -> None:
    """Placement for placement and statistic for statistic."""
    assert windowed.stats == whole.stats
    got = list(
        zip(rows["start"].tolist(), rows["duration"].tolist(), rows["index"].tolist(), strict=True)
    )
    assert got == [(p.start, p.duration, p.index) for p in whole.placements]
    assert rows["offset"].tolist() == [p.index * 1000 for p in whole.placements]


@settings(max_examples=300, deadline=None)
@given(arbitrary_packets(), configs, st.integers(-(10**9), 10**12), windows)
def test_windowed_placement_equals_whole_placement(
    packets: list[TimedPacket], config: TimelineConfig, origin_ns: int, window: WindowSize
) -> None:
    media = as_media(packets)
    durations = [p.duration for p in packets]
    whole, windowed, rows = place_both(
        media, durations, origin_ns=origin_ns, config=config, window=window
    )
    assert_same(whole, windowed, rows)
