"""DTMF digits from telephone-event packets: scenarios, a lossy network, GStreamer's sender."""

import random
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver.errors import TelephoneEventError
from mediaserver.rtp.dtmf_detector import DtmfDetector, DtmfDigit
from mediaserver.rtp.packet import parse_rtp_packet
from mediaserver.rtp.telephone_event import TelephoneEvent, build_telephone_events

DIGITS = "0123456789*#ABCD"
SEGMENT = 0xFFFF  # RFC 4733 §2.5.1.3: the longest duration one segment can report


@dataclass(frozen=True)
class Packet:
    """What the detector is given for one RTP packet."""

    timestamp: int
    marker: bool
    payload: bytes
    digit_index: int  # which press it belongs to (for the test's expectations)
    end: bool
    reported_duration: int  # the duration the event has reached at this packet


def press_packets(
    digit_index: int, digit: str, start: int, duration: int, step: int, repeats: int = 3
) -> list[Packet]:
    """The packets an RFC 4733 sender emits for one press (written from §2.5.1, not our code)."""
    event = DIGITS.index(digit)
    packets = []
    segment_start = start
    elapsed = 0  # since the press began
    first = True
    while True:
        elapsed = min(elapsed + step, duration)
        # A segment reports at most 0xFFFF; past that a new segment starts 0xFFFF later.
        while elapsed - (segment_start - start) > SEGMENT:
            packets.append(_packet(digit_index, event, segment_start, SEGMENT, first, False, start))
            first = False
            segment_start += SEGMENT
        in_segment = elapsed - (segment_start - start)
        final = elapsed == duration
        for _ in range(repeats if final else 1):  # §2.5.1.4: the final packet three times
            packets.append(
                _packet(digit_index, event, segment_start, in_segment, first, final, start)
            )
            first = False
        if final:
            return packets


def _packet(
    digit_index: int,
    event: int,
    segment_start: int,
    in_segment: int,
    first: bool,
    end: bool,
    start: int,
) -> Packet:
    """One packet of a press."""
    payload = build_telephone_events((TelephoneEvent(event, end, 10, in_segment),))
    reported = segment_start - start + in_segment
    return Packet(segment_start % 2**32, first, payload, digit_index, end, reported)


def feed(detector: DtmfDetector, packets: list[Packet]) -> list[DtmfDigit]:
    """Every digit the packets produce, then whatever a flush closes."""
    digits = []
    for packet in packets:
        digits += detector.add(packet.timestamp, packet.marker, packet.payload)
    return digits + detector.flush()


def test_one_press_with_repeated_end_packets_is_one_digit() -> None:
    """A 100 ms "5" at 8000 Hz: five packets, the last three copies with E; one digit."""
    packets = press_packets(0, "5", start=1000, duration=800, step=160)
    assert [p.end for p in packets] == [False, False, False, False, True, True, True]
    assert packets[0].marker
    assert not any(p.marker for p in packets[1:])
    detector = DtmfDetector(8000)
    digits = [detector.add(p.timestamp, p.marker, p.payload) for p in packets]
    assert digits[:4] == [[], [], [], []]
    assert digits[4] == [DtmfDigit("5", 1000, 800, 8000, 10, ended=True)]
    assert digits[5:] == [[], []]  # the repeats say nothing new
    assert digits[4][0].duration_ms == 100.0
    assert detector.flush() == []


def test_one_two_pound_in_order() -> None:
    """ "1 2 #" at Opus's 48000 Hz: three digits with their starts and durations."""
    packets = (
        press_packets(0, "1", start=48000, duration=9600, step=960)
        + press_packets(1, "2", start=67200, duration=7200, step=960)
        + press_packets(2, "#", start=86400, duration=12000, step=960)
    )
    digits = feed(DtmfDetector(48000), packets)
    assert [(d.digit, d.start_timestamp, d.duration_ms) for d in digits] == [
        ("1", 48000, 200.0),
        ("2", 67200, 150.0),
        ("#", 86400, 250.0),
    ]
    assert all(d.ended for d in digits)


def test_lost_end_packets_close_the_digit_when_the_next_one_starts() -> None:
    """Without its E packets, a digit ends at its last reported duration when another begins."""
    first = [p for p in press_packets(0, "7", start=0, duration=1600, step=160) if not p.end]
    second = press_packets(1, "8", start=4000, duration=800, step=160)
    detector = DtmfDetector(8000)
    assert feed(detector, first[:-1]) == [DtmfDigit("7", 0, 1280, 8000, 10, ended=False)]
    detector = DtmfDetector(8000)
    digits = feed(detector, first + second)
    assert [(d.digit, d.duration, d.ended) for d in digits] == [
        ("7", 1440, False),
        ("8", 800, True),
    ]


def test_late_packets_of_an_ended_digit_are_dropped() -> None:
    """A straggler of a digit already reported, arriving later, reports nothing twice."""
    packets = press_packets(0, "3", start=100, duration=640, step=160)
    reordered = packets[:1] + packets[2:] + packets[1:2]  # the second packet comes last
    assert [d.digit for d in feed(DtmfDetector(8000), reordered)] == ["3"]


def test_a_press_longer_than_one_segment_is_one_digit() -> None:
    """RFC 4733 §2.5.1.3: 3 s at 48000 Hz spans three segments; one digit of 3000 ms."""
    packets = press_packets(0, "9", start=2**32 - 1000, duration=144000, step=960)
    assert len({p.timestamp for p in packets}) == 3  # three segments (crossing the 32-bit wrap)
    (digit,) = feed(DtmfDetector(48000), packets)
    assert (digit.digit, digit.start_timestamp, digit.duration_ms) == ("9", 2**32 - 1000, 3000.0)


def test_two_events_in_one_packet() -> None:
    """RFC 4733 §2.5.1.5: a packet carrying "4" (ended) then "6" starting where "4" ended."""
    payload = build_telephone_events(
        (TelephoneEvent(4, True, 10, 400), TelephoneEvent(6, False, 10, 160))
    )
    end_of_six = build_telephone_events((TelephoneEvent(6, True, 10, 480),))
    detector = DtmfDetector(8000)
    assert detector.add(5000, True, payload) == [DtmfDigit("4", 5000, 400, 8000, 10, ended=True)]
    assert detector.add(5000, False, payload) == []  # the same packet again
    assert detector.add(5400, False, end_of_six) == [
        DtmfDigit("6", 5400, 480, 8000, 10, ended=True)
    ]


def test_other_events_are_counted_not_reported() -> None:
    """Event 16 (flash) is followed through like a digit but reported only as a count."""
    flash = build_telephone_events((TelephoneEvent(16, True, 10, 800),))
    detector = DtmfDetector(8000)
    assert detector.add(0, True, flash) == []
    assert detector.other_events == 1


def test_a_malformed_payload_raises_and_changes_nothing() -> None:
    """A bad payload raises our error; the digit in progress carries on."""
    packets = press_packets(0, "0", start=0, duration=480, step=160)
    detector = DtmfDetector(8000)
    detector.add(packets[0].timestamp, packets[0].marker, packets[0].payload)
    with pytest.raises(TelephoneEventError):
        detector.add(160, False, b"\x00\x01")
    assert [d.digit for d in feed(detector, packets[1:])] == ["0"]


# -- a lossy network ----------------------------------------------------------------------------

_presses = st.lists(
    st.tuples(st.sampled_from(DIGITS), st.integers(40, 3000), st.integers(0, 400)),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300)
@given(
    _presses,
    st.sampled_from([8000, 48000]),
    st.integers(0, 2**32 - 1),
    st.floats(0.0, 0.5),
    st.integers(0, 2**31),
)
def test_digits_survive_loss_duplication_and_reordering(
    presses: list[tuple[str, int, int]], clock_rate_hz: int, first_ts: int, loss: float, seed: int
) -> None:
    """Each press with a surviving packet is one digit, in order, with the duration it reached."""
    rng = random.Random(seed)
    step = clock_rate_hz // 50  # 20 ms packets
    packets: list[Packet] = []
    start = first_ts
    for index, (digit, held_ms, gap_ms) in enumerate(presses):
        duration = held_ms * clock_rate_hz // 1000
        packets += press_packets(index, digit, start, duration, step)
        start += duration + gap_ms * clock_rate_hz // 1000 + step  # the next press starts later
    # Lose packets, duplicate some, and swap neighbours of the same press.
    arrived = []
    for packet in packets:
        if rng.random() >= loss:
            arrived += [packet] * (2 if rng.random() < 0.1 else 1)
    for i in range(len(arrived) - 1):
        if arrived[i].digit_index == arrived[i + 1].digit_index and rng.random() < 0.2:
            arrived[i], arrived[i + 1] = arrived[i + 1], arrived[i]

    expected = []
    for index, (digit, _, _) in enumerate(presses):
        mine = [p for p in arrived if p.digit_index == index]
        if not mine:
            continue  # nothing of this press arrived: nothing to detect
        ends = [p for p in mine if p.end]
        if ends:
            duration, ended = ends[0].reported_duration, True
        else:
            duration, ended = max(p.reported_duration for p in mine), False
        start_ts = next(p for p in packets if p.digit_index == index).timestamp
        expected.append((digit, start_ts, duration, ended))
    digits = feed(DtmfDetector(clock_rate_hz), arrived)
    assert [(d.digit, d.start_timestamp, d.duration, d.ended) for d in digits] == expected


# -- GStreamer's rtpdtmfsrc as the sender --------------------------------------------------------


@pytest.mark.parametrize("clock_rate_hz", [8000, 48000])
def test_gstreamer_rtpdtmfsrc_one_two_pound(tmp_path: Path, clock_rate_hz: int) -> None:
    """Real RFC 4733 packets from GStreamer ("1 2 #"): three digits, repeats folded, in order."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(0.2)
    port = receiver.getsockname()[1]
    held_ms = {"1": 200, "2": 150, "#": 250}
    sender = subprocess.Popen(
        [
            "/usr/bin/python3",
            str(Path(__file__).with_name("dtmf_sender.py")),
            str(port),
            str(clock_rate_hz),
            "101",
            *(f"{digit}:{ms}" for digit, ms in held_ms.items()),
        ],
        stderr=subprocess.PIPE,
    )
    datagrams = []
    try:
        while sender.poll() is None or datagrams == []:
            try:
                datagrams.append(receiver.recv(2048))
            except TimeoutError:
                if sender.poll() is not None:
                    break
        while True:  # whatever is still queued
            try:
                datagrams.append(receiver.recv(2048))
            except TimeoutError:
                break
    finally:
        sender.kill()
        receiver.close()
    assert sender.wait() == 0, sender.stderr.read() if sender.stderr else ""
    packets = [parse_rtp_packet(datagram) for datagram in datagrams]
    assert {p.payload_type for p in packets} == {101}
    end_packets = sum(p.payload[1] & 0x80 != 0 for p in packets)
    assert end_packets > 3, "the sender repeats its end packets; the test needs them"

    detector = DtmfDetector(clock_rate_hz)
    digits = [d for p in packets for d in detector.add(p.timestamp, p.marker, p.payload)]
    digits += detector.flush()
    print([(d.digit, d.start_timestamp, round(d.duration_ms)) for d in digits])
    assert [d.digit for d in digits] == ["1", "2", "#"]
    assert all(d.ended for d in digits)
    starts = [d.start_timestamp for d in digits]
    assert starts == sorted(starts)
    for digit in digits:
        # rtpdtmfsrc plays a tone for at least 250 ms and in whole packet intervals (40 ms here).
        shortest_ms = max(held_ms[digit.digit], 250)
        assert shortest_ms <= digit.duration_ms <= shortest_ms + 200
