"""Timeline placement against a simulated sender whose true media times are known."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field, replace

import pytest

from mediaserver.errors import SettingsError
from mediaserver.recording.placement_columns import Placement
from mediaserver.recording.timeline import Timeline, TimelineConfig

from timeline_input import TimedPacket, place

RATE_HZ = 48000
FRAME_UNITS = 960  # 20 ms at 48 kHz
GRANULE = 120  # default granularity: 2.5 ms
NS_PER_S = 1_000_000_000
MS = 1_000_000


@dataclass(frozen=True)
class Sent:
    """A packet as the sender emitted it, with the server-clock time its audio truly starts."""

    true_ns: int  # send time on the server clock plus the network's fixed delay
    timestamp: int  # raw 32-bit RTP timestamp
    sequence: int  # raw 16-bit sequence number
    ssrc: int
    serial: int  # position in the sender's whole output, never wraps
    duration: int = FRAME_UNITS


@dataclass
class Delivery:
    """What reached the server: packets in arrival order and the truth behind each index."""

    packets: list[TimedPacket] = field(default_factory=list)
    truth: dict[int, Sent] = field(default_factory=dict)  # by TimedPacket.index
    lost: list[Sent] = field(default_factory=list)
    duplicates: int = 0


def speak(
    *,
    start_ns: int,
    seconds: float,
    first_serial: int = 0,
    first_sequence: int = 1000,
    first_timestamp: int = 50_000,
    ssrc: int = 0x1234,
    clock_error_ppm: float = 0.0,
    talk_s: float | None = None,
    pause_s: float = 0.0,
) -> list[Sent]:
    """Frames of a sender whose clock runs clock_error_ppm fast; pauses send nothing (DTX).

    Frame k covers timestamps first_timestamp + k*960; the sender's clock says 20 ms per frame,
    which is 20 ms / (1 + error) of real time.
    """
    frame_ns = 20 * MS / (1 + clock_error_ppm * 1e-6)
    frames = round(seconds * 50)
    cycle = None if talk_s is None else round((talk_s + pause_s) * 50)
    talking = None if talk_s is None else round(talk_s * 50)
    sent: list[Sent] = []
    sequence = first_sequence
    for k in range(frames):
        if cycle is not None and talking is not None and k % cycle >= talking:
            continue  # DTX: no packet, but the timestamp clock keeps running
        sent.append(
            Sent(
                true_ns=start_ns + round(k * frame_ns),
                timestamp=(first_timestamp + k * FRAME_UNITS) % (1 << 32),
                sequence=sequence % (1 << 16),
                ssrc=ssrc,
                serial=first_serial + len(sent),
            )
        )
        sequence += 1
    return sent


def deliver(
    sent: list[Sent],
    rng: random.Random,
    *,
    jitter_ms: float = 0.0,
    loss: float = 0.0,
    reorder: float = 0.0,
    duplicate: float = 0.0,
) -> Delivery:
    """Pass packets through a network that adds jitter, loses, holds back and duplicates them."""
    arrivals: list[tuple[float, int, Sent]] = []
    lost = []
    for tiebreak, packet in enumerate(sent):
        if rng.random() < loss:
            lost.append(packet)
            continue
        arrival = packet.true_ns + rng.uniform(0, jitter_ms) * MS
        if rng.random() < reorder:
            arrival += rng.uniform(30, 100) * MS  # overtaken by 1-5 later packets
        arrivals.append((arrival, tiebreak, packet))
        if rng.random() < duplicate:
            arrivals.append((arrival + rng.uniform(1, 50) * MS, len(sent) + tiebreak, packet))
    arrivals.sort()
    delivery = Delivery(lost=lost, duplicates=len(arrivals) - len(sent) + len(lost))
    for index, (arrival, _, packet) in enumerate(arrivals):
        delivery.packets.append(
            TimedPacket(
                arrival_ns=round(arrival),
                rtp_timestamp=packet.timestamp,
                sequence=packet.sequence,
                ssrc=packet.ssrc,
                duration=packet.duration,
                index=index,
            )
        )
        delivery.truth[index] = packet
    return delivery


def true_units(packet: Sent, origin_ns: int) -> float:
    """Where a packet belongs on the timeline, in clock units since the origin."""
    return (packet.true_ns - origin_ns) * RATE_HZ / NS_PER_S


def errors_ms(timeline: Timeline, delivery: Delivery, origin_ns: int) -> list[float]:
    """Placement minus true position of every placed packet, in milliseconds."""
    return [
        (placement.start - true_units(delivery.truth[placement.index], origin_ns)) * 1000 / RATE_HZ
        for placement in timeline.placements
    ]


def expected_reordered(delivery: Delivery) -> int:
    """First copies that arrived after a packet the sender emitted later."""
    seen: set[int] = set()
    highest = -1
    count = 0
    for packet in delivery.packets:
        serial = delivery.truth[packet.index].serial
        if serial in seen:
            continue
        seen.add(serial)
        count += serial < highest
        highest = max(highest, serial)
    return count


def expected_lost(delivery: Delivery) -> int:
    """Lost packets the receiver can notice: between the first and last it received."""
    serials = [sent.serial for sent in delivery.truth.values()]
    return sum(min(serials) < sent.serial < max(serials) for sent in delivery.lost)


def assert_well_formed(timeline: Timeline, config: TimelineConfig) -> None:
    """Check the invariants every timeline must satisfy."""
    previous_end = 0
    for placement in timeline.placements:
        assert placement.start >= previous_end
        assert placement.start % config.granularity == 0
        previous_end = placement.start + placement.duration
    stats = timeline.stats
    assert stats.packets == (
        stats.placed
        + stats.duplicates
        + stats.late_dropped
        + stats.overlaps_dropped
        + stats.outliers_dropped
        + stats.empty_dropped
    )


def test_perfect_stream_is_contiguous_from_first_arrival() -> None:
    """An unimpaired stream is placed back to back, starting where its first packet arrived."""
    delivery = deliver(speak(start_ns=1 * NS_PER_S, seconds=10), random.Random(1))
    config = TimelineConfig()
    timeline = place(delivery.packets, origin_ns=0, config=config)
    assert_well_formed(timeline, config)
    starts = [placement.start for placement in timeline.placements]
    assert starts[0] == 1 * RATE_HZ
    assert starts == [starts[0] + k * FRAME_UNITS for k in range(500)]
    assert timeline.stats.placed == 500
    assert (timeline.stats.lost, timeline.stats.drift_corrections, timeline.stats.runs) == (0, 0, 1)
    assert timeline.stats.silence_ms == 0


def test_jitter_does_not_move_audio() -> None:
    """60 ms of random arrival jitter leaves every packet within one granule of its true place."""
    delivery = deliver(speak(start_ns=NS_PER_S, seconds=120), random.Random(2), jitter_ms=60)
    config = TimelineConfig()
    timeline = place(delivery.packets, origin_ns=0, config=config)
    assert_well_formed(timeline, config)
    assert timeline.stats.placed == len(delivery.packets)
    errors = errors_ms(timeline, delivery, 0)
    # The minimum-delay anchor can only err late, by the smallest jitter among its packets.
    assert all(-2.5 <= error <= 2.5 for error in errors)
    assert timeline.stats.reordered == expected_reordered(delivery)
    assert timeline.stats.drift_corrections == 0


def test_loss_is_counted_and_leaves_gaps() -> None:
    """5 % loss is counted exactly and each lost packet leaves silence where it belonged."""
    delivery = deliver(
        speak(start_ns=NS_PER_S, seconds=60), random.Random(3), jitter_ms=10, loss=0.05
    )
    config = TimelineConfig()
    timeline = place(delivery.packets, origin_ns=0, config=config)
    assert_well_formed(timeline, config)
    assert timeline.stats.lost == expected_lost(delivery) > 100
    assert timeline.stats.placed == len(delivery.packets)
    placements = timeline.placements
    for before, after in itertools.pairwise(placements):
        missing = delivery.truth[after.index].serial - delivery.truth[before.index].serial - 1
        assert after.start - before.start == (missing + 1) * FRAME_UNITS
    lost_ms = timeline.stats.lost * 20
    assert timeline.stats.silence_ms == lost_ms


def test_reordering_and_duplicates_are_counted_exactly() -> None:
    """2 % reordered and 1 % duplicated packets are counted exactly and all audio is placed once."""
    delivery = deliver(
        speak(start_ns=NS_PER_S, seconds=120),
        random.Random(4),
        jitter_ms=5,
        reorder=0.02,
        duplicate=0.01,
    )
    config = TimelineConfig()
    timeline = place(delivery.packets, origin_ns=0, config=config)
    assert_well_formed(timeline, config)
    assert timeline.stats.duplicates == delivery.duplicates > 30
    assert timeline.stats.reordered == expected_reordered(delivery) > 60
    assert timeline.stats.lost == 0
    assert timeline.stats.placed == 6000
    assert sorted(delivery.truth[p.index].serial for p in timeline.placements) == list(range(6000))
    assert all(abs(error) <= 2.5 for error in errors_ms(timeline, delivery, 0))


def test_late_reordered_packet_is_dropped() -> None:
    """A packet overtaken by newer ones and later than the reorder window is dropped, not lost."""
    sent = speak(start_ns=NS_PER_S, seconds=4)
    delivery = deliver(sent, random.Random(5))
    late_index = next(i for i, s in delivery.truth.items() if s.serial == 100)
    packets = [p for p in delivery.packets if p.index != late_index]
    late = next(p for p in delivery.packets if p.index == late_index)
    # Arrives 600 ms after its time, behind 30 newer packets.
    packets.insert(130, replace(late, arrival_ns=packets[129].arrival_ns + 1))
    config = TimelineConfig()
    timeline = place(packets, origin_ns=0, config=config)
    assert_well_formed(timeline, config)
    assert (timeline.stats.late_dropped, timeline.stats.lost, timeline.stats.reordered) == (1, 0, 0)
    assert timeline.stats.audio_dropped_ms == 20
    assert late_index not in {placement.index for placement in timeline.placements}


def test_ssrc_change_with_timestamp_jump_starts_new_run_at_arrival() -> None:
    """A new SSRC with unrelated numbers starts a new run anchored at its first arrival."""
    first = speak(start_ns=NS_PER_S, seconds=10, ssrc=1)
    second = speak(
        start_ns=NS_PER_S + 10 * NS_PER_S + 500 * MS,
        seconds=10,
        first_serial=len(first),
        first_sequence=40_000,
        first_timestamp=3_000_000_000,
        ssrc=2,
    )
    delivery = deliver(first + second, random.Random(6))
    config = TimelineConfig()
    timeline = place(delivery.packets, origin_ns=0, config=config)
    assert_well_formed(timeline, config)
    assert (timeline.stats.runs, timeline.stats.ssrc_changes, timeline.stats.lost) == (2, 1, 0)
    assert timeline.stats.placed == 1000
    assert all(error == 0 for error in errors_ms(timeline, delivery, 0))
    new_run = next(p for p in timeline.placements if delivery.truth[p.index].ssrc == 2)
    assert new_run.start == round(11.5 * RATE_HZ)


def test_long_silence_with_running_timestamps_is_not_a_jump() -> None:
    """30 s without packets while the timestamps keep running becomes silence in the same run."""
    sent = speak(start_ns=NS_PER_S, seconds=50, talk_s=10, pause_s=30)
    delivery = deliver(sent, random.Random(7))
    config = TimelineConfig()
    timeline = place(delivery.packets, origin_ns=0, config=config)
    assert_well_formed(timeline, config)
    assert (timeline.stats.runs, timeline.stats.timestamp_jumps, timeline.stats.lost) == (1, 0, 0)
    assert all(error == 0 for error in errors_ms(timeline, delivery, 0))
    assert timeline.stats.silence_ms == 30_000


def test_stopped_sender_clock_starts_new_run_placed_by_arrival() -> None:
    """A sender whose timestamps stood still for 30 s is placed by arrival in a new run."""
    first = speak(start_ns=NS_PER_S, seconds=10)
    last = first[-1]
    second = speak(
        start_ns=NS_PER_S + 40 * NS_PER_S,
        seconds=10,
        first_serial=len(first),
        first_sequence=last.sequence + 1,
        first_timestamp=last.timestamp + FRAME_UNITS,
    )
    delivery = deliver(first + second, random.Random(8))
    config = TimelineConfig()
    timeline = place(delivery.packets, origin_ns=0, config=config)
    assert_well_formed(timeline, config)
    assert (timeline.stats.runs, timeline.stats.timestamp_jumps, timeline.stats.lost) == (2, 1, 0)
    assert all(error == 0 for error in errors_ms(timeline, delivery, 0))
    assert timeline.stats.silence_ms == 30_000


def test_sequence_and_timestamp_wrap_keep_one_run() -> None:
    """16-bit sequence and 32-bit timestamp wrap mid-stream break neither the run nor the count."""
    sent = speak(
        start_ns=NS_PER_S, seconds=10, first_sequence=65_400, first_timestamp=(1 << 32) - 96_000
    )
    delivery = deliver(sent, random.Random(9), jitter_ms=30, reorder=0.02)
    config = TimelineConfig()
    timeline = place(delivery.packets, origin_ns=0, config=config)
    assert_well_formed(timeline, config)
    assert (timeline.stats.runs, timeline.stats.lost, timeline.stats.placed) == (1, 0, 500)
    assert all(abs(error) <= 2.5 for error in errors_ms(timeline, delivery, 0))


@pytest.mark.parametrize("clock_error_ppm", [200.0, -200.0])
def test_drift_with_jitter_is_tracked(clock_error_ppm: float) -> None:
    """A sender clock 200 ppm off for 20 minutes stays within 20 ms of real time despite jitter."""
    sent = speak(
        start_ns=NS_PER_S,
        seconds=1200,
        clock_error_ppm=clock_error_ppm,
        talk_s=4,
        pause_s=1,
    )
    delivery = deliver(sent, random.Random(10), jitter_ms=60)
    config = TimelineConfig()
    timeline = place(delivery.packets, origin_ns=0, config=config)
    assert_well_formed(timeline, config)
    assert all(abs(error) <= 20 for error in errors_ms(timeline, delivery, 0))
    assert timeline.stats.drift_corrections > 0
    assert timeline.stats.drift_ppm == pytest.approx(clock_error_ppm, abs=30)
    # Corrections happen in the pauses, so no speech is cut.
    assert timeline.stats.placed == len(delivery.packets)


@pytest.mark.parametrize("clock_error_ppm", [200.0, -200.0])
def test_drift_without_jitter_is_corrected_in_pauses(clock_error_ppm: float) -> None:
    """Without jitter, drift is corrected in speech pauses to within 5 ms of real time.

    The error peaks at the soft bound (2.5 ms here) plus the drift of one talk spurt (0.8 ms)
    plus half a granule of rounding (1.25 ms).
    """
    sent = speak(
        start_ns=NS_PER_S,
        seconds=1200,
        clock_error_ppm=clock_error_ppm,
        talk_s=4,
        pause_s=1,
    )
    delivery = deliver(sent, random.Random(11))
    config = TimelineConfig(drift_soft_bound_ms=2.5)
    timeline = place(delivery.packets, origin_ns=0, config=config)
    assert_well_formed(timeline, config)
    assert all(abs(error) <= 5 for error in errors_ms(timeline, delivery, 0))
    assert timeline.stats.drift_corrections > 0
    assert timeline.stats.drift_ppm == pytest.approx(clock_error_ppm, abs=30)
    assert timeline.stats.placed == len(delivery.packets)


@pytest.mark.parametrize("clock_error_ppm", [200.0, -200.0])
def test_drift_in_unbroken_speech_is_corrected_at_hard_bound(clock_error_ppm: float) -> None:
    """Without pauses, drift is corrected past the hard bound, dropping or adding audio."""
    sent = speak(start_ns=NS_PER_S, seconds=600, clock_error_ppm=clock_error_ppm)
    delivery = deliver(sent, random.Random(12))
    config = TimelineConfig()
    timeline = place(delivery.packets, origin_ns=0, config=config)
    assert_well_formed(timeline, config)
    assert all(abs(error) <= 15 + 1.25 + 0.1 for error in errors_ms(timeline, delivery, 0))
    # 600 s * 200 ppm = 120 ms to correct in steps just over 15 ms.
    assert 6 <= timeline.stats.drift_corrections <= 8
    if clock_error_ppm > 0:
        assert timeline.stats.overlaps_dropped > 0
        assert timeline.stats.audio_dropped_ms > 0
    else:
        assert timeline.stats.overlaps_dropped == 0
        assert timeline.stats.silence_ms > 0


def test_silence_hint_allows_early_correction() -> None:
    """DTX frames flagged as silence let the anchor move there before the hard bound."""
    sent = speak(start_ns=NS_PER_S, seconds=600, clock_error_ppm=200)
    delivery = deliver(sent, random.Random(13))
    hinted = [
        TimedPacket(
            arrival_ns=p.arrival_ns,
            rtp_timestamp=p.rtp_timestamp,
            sequence=p.sequence,
            ssrc=p.ssrc,
            duration=p.duration,
            index=p.index,
            silence_hint=delivery.truth[p.index].serial % 250 == 0,  # every 5 s
        )
        for p in delivery.packets
    ]
    config = TimelineConfig()
    timeline = place(hinted, origin_ns=0, config=config)
    assert_well_formed(timeline, config)
    assert all(abs(error) <= 5 + 1.25 + 1.1 for error in errors_ms(timeline, delivery, 0))
    assert timeline.stats.drift_corrections > 0


def test_origin_before_anchor_keeps_starts_non_negative() -> None:
    """Audio that would fall before the origin is shifted or dropped, never placed below zero."""
    delivery = deliver(speak(start_ns=NS_PER_S, seconds=1), random.Random(14))
    config = TimelineConfig()
    origin_ns = NS_PER_S + 30 * MS  # the first packet's first half sits before the origin
    timeline = place(delivery.packets, origin_ns=origin_ns, config=config)
    assert_well_formed(timeline, config)
    assert timeline.placements[0].start == 0
    assert timeline.stats.overlaps_dropped == 1  # the packet at -30 ms lies entirely before 0


def test_absurd_gap_is_capped() -> None:
    """A gap longer than max_gap_ms is shortened to it and counted; later audio moves back."""
    first = speak(start_ns=NS_PER_S, seconds=2, ssrc=1)
    second = speak(start_ns=NS_PER_S + 120 * NS_PER_S, seconds=2, first_serial=100, ssrc=2)
    delivery = deliver(first + second, random.Random(15))
    config = TimelineConfig(max_gap_ms=10_000)
    timeline = place(delivery.packets, origin_ns=NS_PER_S, config=config)
    assert_well_formed(timeline, config)
    assert timeline.stats.gap_capped == 1
    assert timeline.placements[100].start == 2 * RATE_HZ + 10 * RATE_HZ
    assert timeline.stats.end == 14 * RATE_HZ


def test_one_stray_packet_from_another_stream_is_dropped() -> None:
    """A single packet of a foreign SSRC inside a stream is dropped as an outlier, not a new run."""
    delivery = deliver(speak(start_ns=NS_PER_S, seconds=4), random.Random(16))
    packets = list(delivery.packets)
    middle = packets[100]
    stray = TimedPacket(middle.arrival_ns + 1, 777, 5, 0xBAD, FRAME_UNITS, 9999)
    packets.insert(101, stray)
    config = TimelineConfig()
    timeline = place(packets, origin_ns=0, config=config)
    assert_well_formed(timeline, config)
    stats = timeline.stats
    assert (stats.runs, stats.outliers_dropped, stats.placed) == (1, 1, 200)


def test_empty_input_gives_empty_timeline() -> None:
    """No packets give no placements and zeroed statistics."""
    timeline = place([], origin_ns=0, config=TimelineConfig())
    assert timeline.placements == ()
    assert (timeline.stats.packets, timeline.stats.start, timeline.stats.end) == (0, 0, 0)


def test_granularity_one_places_g711_exactly() -> None:
    """G.711 at 8 kHz with granularity 1 keeps every sample position."""
    packets = [
        TimedPacket(NS_PER_S + k * 20 * MS, 1000 + 160 * k, 7 + k, 9, 160, k) for k in range(100)
    ]
    config = TimelineConfig(clock_rate_hz=8000, granularity=1)
    timeline = place(packets, origin_ns=0, config=config)
    assert [p.start for p in timeline.placements] == [8000 + 160 * k for k in range(100)]


def test_zero_duration_packets_are_counted_not_placed() -> None:
    """Packets that carry no audio are counted as empty and left out."""
    packets = [TimedPacket(k * 20 * MS, 960 * k, k, 1, 0 if k == 3 else 960, k) for k in range(10)]
    timeline = place(packets, origin_ns=0, config=TimelineConfig())
    assert (timeline.stats.empty_dropped, timeline.stats.placed) == (1, 9)
    assert 3 not in {placement.index for placement in timeline.placements}


@pytest.mark.parametrize(
    "overrides",
    [
        {"granularity": 0},
        {"clock_rate_hz": 0},
        {"max_drift_ppm": 0},
        {"drift_soft_bound_ms": 20.0, "drift_hard_bound_ms": 10.0},
        {"max_gap_ms": 0},
    ],
)
def test_invalid_config_is_rejected(overrides: dict[str, float]) -> None:
    """Configuration values the placement cannot use raise SettingsError."""
    with pytest.raises(SettingsError):
        TimelineConfig(**overrides)  # type: ignore[arg-type]


def test_placement_is_a_plain_value() -> None:
    """Placements compare by value, so callers can check them in tables."""
    assert Placement(0, 960, 1) == Placement(0, 960, 1)


def stall(delivery: Delivery, *, at_ns: int, stall_ns: int) -> Delivery:
    """Hold every packet that arrives during a stall of the receiver until the stall ends."""
    held = [
        replace(p, arrival_ns=at_ns + stall_ns) if at_ns <= p.arrival_ns < at_ns + stall_ns else p
        for p in delivery.packets
    ]
    return replace(delivery, packets=held)


@pytest.mark.parametrize("stall_at_s", [0.5, 30.0, 59.0])
def test_receiver_stall_moves_nothing_and_drops_nothing(stall_at_s: float) -> None:
    """A 2 s stall of the receiving loop (arrivals bunched at its end) changes no placement."""
    # A stalled event loop reads a socket's backlog all at once: arrivals bunch, media times do
    # not. Nothing may be dropped as an overlap, no drift may be "corrected", and every packet
    # stays where it belongs (±5 ms) - at the start, in the middle and at the end of a run.
    delivery = deliver(speak(start_ns=NS_PER_S, seconds=60), random.Random(9), jitter_ms=20)
    stalled = stall(delivery, at_ns=NS_PER_S + int(stall_at_s * NS_PER_S), stall_ns=2 * NS_PER_S)
    config = TimelineConfig()
    calm = place(delivery.packets, origin_ns=0, config=config)
    timeline = place(stalled.packets, origin_ns=0, config=config)
    assert_well_formed(timeline, config)
    stats = timeline.stats
    assert (stats.placed, stats.overlaps_dropped, stats.late_dropped) == (3000, 0, 0)
    assert (stats.runs, stats.timestamp_jumps, stats.drift_corrections) == (1, 0, 0)
    assert stats.silence_ms == calm.stats.silence_ms
    errors = errors_ms(timeline, stalled, 0)
    assert max(abs(e) for e in errors) <= 5.0, max(errors, key=abs)


def test_drift_is_still_followed_after_a_stall() -> None:
    """A sender 200 ppm fast is still followed when a 2 s stall sits in the middle of its call."""
    sent = speak(start_ns=NS_PER_S, seconds=600, clock_error_ppm=200, talk_s=3, pause_s=1)
    delivery = deliver(sent, random.Random(10), jitter_ms=20)
    stalled = stall(delivery, at_ns=300 * NS_PER_S, stall_ns=2 * NS_PER_S)
    timeline = place(stalled.packets, origin_ns=0, config=TimelineConfig())
    assert 150 <= timeline.stats.drift_ppm <= 250
    assert timeline.stats.overlaps_dropped == 0
    assert max(abs(e) for e in errors_ms(timeline, stalled, 0)) <= 20.0
