"""The agent's RTP sequencer: numbers per packet, timestamps per pacer tick, markers after gaps."""

import itertools

from mediaserver.rtp.sequencer import RtpSequencer


def test_consecutive_ticks_give_consecutive_numbers() -> None:
    """Back-to-back ticks: sequence +1, timestamp + one frame, marker on the first only."""
    sequencer = RtpSequencer(160, ssrc=7, first_sequence=65534, timestamp_origin=0xFFFFFF00)
    packets = [sequencer.number(tick, b"x", 0) for tick in range(10, 14)]
    assert [p.sequence for p in packets] == [65534, 65535, 0, 1]
    assert [p.rtp_timestamp for p in packets] == [
        (0xFFFFFF00 + tick * 160) % (1 << 32) for tick in range(10, 14)
    ]
    assert [p.marker for p in packets] == [True, False, False, False]
    assert {(p.ssrc, p.payload_type, p.arrival_ns) for p in packets} == {(7, 0, 0)}


def test_silent_ticks_advance_the_timestamp_and_mark_the_next_packet() -> None:
    """After ticks with nothing to send, the timestamp covers the silence (RFC 3550 §5.1) and
    the first packet after it carries the marker (RFC 3551 §4.1); sequence numbers do not jump."""
    sequencer = RtpSequencer(960, ssrc=1, first_sequence=100, timestamp_origin=0)
    ticks = [0, 1, 2, 52, 53]  # 1 s of silence after tick 2
    packets = [sequencer.number(tick, b"x", 111) for tick in ticks]
    steps = [b.rtp_timestamp - a.rtp_timestamp for a, b in itertools.pairwise(packets)]
    assert steps == [960, 960, 50 * 960, 960]
    assert [p.marker for p in packets] == [True, False, False, True, False]
    assert [p.sequence for p in packets] == [100, 101, 102, 103, 104]


def test_random_origins_differ_between_calls() -> None:
    """SSRC, first sequence number and timestamp origin are random (RFC 3550 §5.1)."""
    first, second = RtpSequencer(960), RtpSequencer(960)
    a, b = first.number(0, b"", 111), second.number(0, b"", 111)
    assert (a.ssrc, a.sequence, a.rtp_timestamp) != (b.ssrc, b.sequence, b.rtp_timestamp)
