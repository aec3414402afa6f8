"""Properties of timeline placement that hold for any packet list, however malformed."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver.recording.timeline import Timeline, TimelineConfig

from timeline_input import TimedPacket, place

MS = 1_000_000

configs = st.builds(
    TimelineConfig,
    granularity=st.sampled_from([1, 120, 960]),
    drift_window_ms=st.sampled_from([100, 2000]),
    max_gap_ms=st.sampled_from([50, 3_600_000]),
)


@st.composite
def arbitrary_packets(draw: st.DrawFn) -> list[TimedPacket]:
    """Random arrivals, numbers, SSRCs and durations: mostly nonsense, sometimes near a stream."""
    count = draw(st.integers(0, 80))
    arrival_ns = draw(st.integers(0, 10**12))
    timestamp = draw(st.integers(0, (1 << 32) - 1))
    sequence = draw(st.integers(0, (1 << 16) - 1))
    packets = []
    for index in range(count):
        arrival_ns += draw(st.sampled_from([0, 1, 20 * MS, 20 * MS, 60 * MS, 3 * 10**9]))
        # Either continue the stream or throw in an arbitrary value.
        step = draw(st.sampled_from([960, 960, 960, 0, -960, 1920, None]))
        timestamp = (
            draw(st.integers(0, (1 << 32) - 1)) if step is None else (timestamp + step) % (1 << 32)
        )
        jump = draw(st.sampled_from([1, 1, 1, 0, -1, 2, None]))
        sequence = (
            draw(st.integers(0, (1 << 16) - 1)) if jump is None else (sequence + jump) % (1 << 16)
        )
        packets.append(
            TimedPacket(
                arrival_ns=arrival_ns,
                rtp_timestamp=timestamp,
                sequence=sequence,
                ssrc=draw(st.sampled_from([7, 7, 7, 8])),
                duration=draw(st.sampled_from([960, 960, 120, 1920, 0, 333])),
                index=index,
                silence_hint=draw(st.booleans()),
            )
        )
    return packets


def assert_invariants(
    timeline: Timeline, packets: list[TimedPacket], config: TimelineConfig
) -> None:
    """Sorted, disjoint, non-negative, on the grid, each packet once, every packet counted."""
    previous_end = 0
    seen: set[int] = set()
    durations = {packet.index: packet.duration for packet in packets}
    for placement in timeline.placements:
        assert placement.start >= previous_end
        assert placement.start % config.granularity == 0
        assert placement.index not in seen
        assert placement.duration == durations[placement.index] > 0
        seen.add(placement.index)
        previous_end = placement.start + placement.duration
    stats = timeline.stats
    assert stats.packets == len(packets)
    assert stats.packets == (
        stats.placed
        + stats.duplicates
        + stats.late_dropped
        + stats.overlaps_dropped
        + stats.outliers_dropped
        + stats.empty_dropped
    )
    assert min(stats.lost, stats.reordered, stats.drift_corrections, stats.gap_capped) >= 0
    assert stats.audio_dropped_ms >= 0
    assert stats.silence_ms >= 0


@settings(max_examples=200, deadline=None)
@given(arbitrary_packets(), configs, st.integers(-(10**9), 10**12))
def test_any_packet_list_gives_a_well_formed_timeline(
    packets: list[TimedPacket], config: TimelineConfig, origin_ns: int
) -> None:
    """Whatever arrives, placements are sorted, disjoint, on the grid and all packets counted."""
    timeline = place(packets, origin_ns=origin_ns, config=config)
    assert_invariants(timeline, packets, config)


@settings(max_examples=60, deadline=None)
@given(arbitrary_packets(), configs, st.integers(0, 10**12))
def test_moving_the_clock_moves_nothing(
    packets: list[TimedPacket], config: TimelineConfig, offset_ns: int
) -> None:
    """Shifting every arrival and the origin by the same amount gives the same placements."""
    origin_ns = min((p.arrival_ns for p in packets), default=0)
    shifted = [replace(p, arrival_ns=p.arrival_ns + offset_ns) for p in packets]
    first = place(packets, origin_ns=origin_ns, config=config)
    second = place(shifted, origin_ns=origin_ns + offset_ns, config=config)
    assert first == second


@settings(max_examples=60, deadline=None)
@given(
    arbitrary_packets(),
    configs,
    st.integers(0, (1 << 32) - 1),
    st.integers(0, (1 << 16) - 1),
)
def test_renumbering_changes_nothing(
    packets: list[TimedPacket], config: TimelineConfig, timestamp_offset: int, sequence_offset: int
) -> None:
    """Other initial RTP timestamp and sequence numbers (so wraps elsewhere) change nothing."""
    origin_ns = min((p.arrival_ns for p in packets), default=0)
    renumbered = [
        replace(
            p,
            rtp_timestamp=(p.rtp_timestamp + timestamp_offset) % (1 << 32),
            sequence=(p.sequence + sequence_offset) % (1 << 16),
        )
        for p in packets
    ]
    first = place(packets, origin_ns=origin_ns, config=config)
    second = place(renumbered, origin_ns=origin_ns, config=config)
    assert first == second


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.booleans(), min_size=2, max_size=300),
    st.lists(st.integers(0, 60), min_size=300, max_size=300),
    st.integers(0, (1 << 16) - 1),
)
def test_loss_only_stream_places_every_packet_and_counts_the_rest(
    received: list[bool], jitter_ms: list[int], first_sequence: int
) -> None:
    """With loss and in-window jitter only, every packet is placed and lost counts the holes."""
    packets = [
        TimedPacket(
            arrival_ns=10**9 + k * 20 * MS + jitter_ms[k] * MS,
            rtp_timestamp=(123 + 960 * k) % (1 << 32),
            sequence=(first_sequence + k) % (1 << 16),
            ssrc=5,
            duration=960,
            index=k,
        )
        for k, kept in enumerate(received)
        if kept
    ]
    packets.sort(key=lambda packet: packet.arrival_ns)
    config = TimelineConfig()
    timeline = place(packets, origin_ns=0, config=config)
    assert_invariants(timeline, packets, config)
    assert timeline.stats.placed == len(packets)
    if packets:
        numbers = [packet.index for packet in packets]
        assert timeline.stats.lost == max(numbers) - min(numbers) + 1 - len(numbers)
        # Media order is kept: placements come in the sender's order.
        assert [p.index for p in timeline.placements] == sorted(numbers)
