"""Pure pieces of the call's record: paused spans, cuts of the time line, keys placed, columns."""

import io
import tracemalloc

from hypothesis import given
from hypothesis import strategies as st

from mediaserver.recording.call_events import (
    PausedSpan,
    compute_paused_spans,
    compute_skip_spans,
    describe_paused_spans,
    place_dtmf_events,
)
from mediaserver.recording.call_record import (
    CallRecord,
    build_event_line,
    parse_call_record,
    parse_event_lines,
)
from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.journal import (
    JournalHeader,
    JournalWriter,
    parse_journal,
    read_journal_columns,
)
from mediaserver.recording.placement_columns import Placement
from mediaserver.recording.plan import (
    ChannelInput,
    Cut,
    apply_cuts,
    compute_cuts,
    plan_recording,
)
from mediaserver.recording.timeline import Timeline, TimelineStats
from mediaserver.rtp.media_packet import MediaPacket

S = 1_000_000_000  # ns in a second
ORIGIN_NS = 100 * S
OPUS_20MS = b"\xf8\xff\xfe"  # TOC config 31: CELT fullband 20 ms (RFC 6716 §3.1)


def opus_stream(seconds: float, *, ssrc: int = 7, start_ns: int = ORIGIN_NS) -> list[MediaPacket]:
    """A steady 20 ms Opus stream, on time, from `start_ns`."""
    return [
        MediaPacket(start_ns + k * 20_000_000, 1000 + k * 960, k, ssrc, 111, k == 0, OPUS_20MS)
        for k in range(round(seconds * 50))
    ]


def channel(packets: list[MediaPacket], which: Channel = Channel.CALLER) -> ChannelInput:
    """A channel of Opus packets of 960 samples each."""
    return ChannelInput(which, Codec.OPUS, packets, [960] * len(packets))


def test_paused_spans_pair_pause_and_resume_and_close_at_the_end() -> None:
    """pause/resume pairs are spans; a repeated pause is ignored; an open one ends with the call."""
    events = [
        {"type": "pause", "at_ns": 10, "behavior": "skip"},
        {"type": "pause", "at_ns": 12, "behavior": "silence"},
        {"type": "dtmf", "digit": "5"},
        {"type": "resume", "at_ns": 20},
        {"type": "resume", "at_ns": 25},
        {"type": "pause", "at_ns": 30, "behavior": "silence"},
    ]
    spans = compute_paused_spans(events, end_ns=40)
    assert spans == [PausedSpan(10, 20, "skip"), PausedSpan(30, 40, "silence")]
    assert compute_skip_spans(spans) == [(10, 20)]


def test_cuts_snap_to_the_grid_clamp_and_merge() -> None:
    """Skip spans become cuts on the placement grid, inside the recording, overlaps merged."""
    cuts = compute_cuts(
        [
            (ORIGIN_NS + S, ORIGIN_NS + 2 * S + 1),  # ends just after 2 s: rounded up a grid unit
            (ORIGIN_NS + 2 * S, ORIGIN_NS + 3 * S),  # overlaps the first
            (ORIGIN_NS - 5 * S, ORIGIN_NS - S),  # before the recording
            (ORIGIN_NS + 9 * S, ORIGIN_NS + 20 * S),  # runs past its end
        ],
        origin_ns=ORIGIN_NS,
        span_48k=10 * 48000,
        grid_48k=960,
    )
    assert cuts == (Cut(48000, 2 * 48000), Cut(9 * 48000, 48000))


def test_skip_cuts_both_channels_alike_and_maps_times() -> None:
    """A 2 s skip from 1 s: what follows moves up 2 s on both channels; times map onto the cut."""
    caller = opus_stream(4.0)
    agent = opus_stream(4.0, ssrc=9, start_ns=ORIGIN_NS + 10_000_000)
    # Nothing was journalled while paused (1 s to 3 s).
    caller = [p for p in caller if not ORIGIN_NS + S <= p.arrival_ns < ORIGIN_NS + 3 * S]
    agent = [p for p in agent if not ORIGIN_NS + S <= p.arrival_ns < ORIGIN_NS + 3 * S]
    plan = plan_recording(
        [channel(caller), channel(agent, Channel.AGENT)],
        mono_start_ns=ORIGIN_NS,
        stereo_mode="encode",
        skip_spans_ns=[(ORIGIN_NS + S, ORIGIN_NS + 3 * S)],
    )
    (cut,) = plan.cuts
    assert cut.removed == 2 * 48000
    caller_plan, agent_plan = plan.channels
    starts = [p.start for p in caller_plan.timeline.placements]
    assert starts == [k * 960 for k in range(100)]  # 4 s of audio less 2 s, gapless
    agent_starts = [p.start for p in agent_plan.timeline.placements]
    assert agent_starts[50] - agent_starts[49] == 960  # the agent lost the same 2 s
    assert agent_starts[0] - starts[0] == 480  # and kept its 10 ms offset
    assert plan.span_samples == 2 * 48000 + 480
    assert plan.position_48k(ORIGIN_NS + 2 * S) == cut.start  # inside the cut: at the cut
    assert plan.position_48k(ORIGIN_NS + 3 * S + S // 2) == int(1.5 * 48000)
    described = describe_paused_spans([PausedSpan(ORIGIN_NS + S, ORIGIN_NS + 3 * S, "skip")], plan)
    assert described == [{"behavior": "skip", "start_s": 1.0, "end_s": 1.0, "removed_s": 2.0}]


def test_keys_are_placed_by_media_time_or_by_arrival() -> None:
    """A key on the audio's SSRC goes by RTP timestamp; one on a stream of its own by arrival."""
    caller = opus_stream(3.0)
    plan = plan_recording(
        [channel(caller), channel([], Channel.AGENT)], mono_start_ns=ORIGIN_NS, stereo_mode="encode"
    )
    events = [
        # Pressed at media time 1.5 s (timestamp 1000 + 72000), reported late (arrival 2.9 s).
        {"type": "dtmf", "digit": "5", "rtp_timestamp": 1000 + 72000, "ssrc": 7,
         "duration_ms": 200.0, "ended_ns": ORIGIN_NS + int(2.9 * S)},
        # Another SSRC: placed at its end's arrival less its duration, 2.5 - 0.2 s.
        {"type": "dtmf", "digit": None, "redacted": True, "rtp_timestamp": 5, "ssrc": 99,
         "duration_ms": 200.0, "ended_ns": ORIGIN_NS + int(2.5 * S)},
    ]  # fmt: skip
    placed = place_dtmf_events(events, plan)
    assert placed == [
        {"type": "dtmf", "digit": "5", "at_s": 1.5, "duration_ms": 200.0},
        {"type": "dtmf", "digit": None, "at_s": 2.3, "duration_ms": 200.0, "redacted": True},
    ]


def test_call_record_and_event_lines_round_trip() -> None:
    """The record and the events read back as written; a torn event line is skipped."""
    record = CallRecord("api", 5, 6, {"caller": {"transport": "rtp"}}, {"malformed": 2}, ("a",))
    assert parse_call_record(record.to_json()) == record
    text = build_event_line({"type": "pause", "at_ns": 1}) + '{"type": "resu'
    assert parse_event_lines(text) == [{"type": "pause", "at_ns": 1}]


def test_packet_columns_read_a_journal_as_parse_journal_does() -> None:
    """Columns over the journal's bytes give the same packets, torn last record left out."""
    out = io.BytesIO()
    writer = JournalWriter(out, JournalHeader(Channel.CALLER, Codec.OPUS, 1, 2))
    packets = [  # timestamps and sequence numbers that wrap, SSRCs past 2**31
        MediaPacket(
            10 + k,
            (2**32 - 2 + k) % 2**32,
            (65534 + k) & 0xFFFF,
            2**31 + k,
            111,
            k % 2 == 0,
            bytes([k]) * k,
        )
        for k in range(6)
    ]
    for packet in packets:
        writer.append(packet)
    data = out.getvalue() + b"\x01\x02"  # a record cut short by a crash
    header, columns = read_journal_columns(data)
    assert (header, list(columns)) == parse_journal(data)
    assert list(columns) == packets
    assert columns[2:4] == packets[2:4]
    assert list(columns.select([5, 0])) == [packets[5], packets[0]]


@given(
    st.lists(st.tuples(st.integers(0, 40), st.sampled_from([120, 960, 1920])), max_size=60),
    st.lists(st.tuples(st.integers(0, 400), st.integers(1, 40)), max_size=5),
    st.sampled_from([Codec.OPUS, Codec.PCMU]),
)
def test_cuts_leave_out_what_they_touch_and_move_the_rest_up(
    steps: list[tuple[int, int]], spans: list[tuple[int, int]], codec: Codec
) -> None:
    """Against the rule itself: a placement overlapping a cut is left out; every other one moves
    earlier by the length of the cuts wholly before it (48 kHz units; G.711 counts 1/6 of them)."""
    ratio = 48000 // codec.clock_rate_hz
    placements, start = [], 0
    for index, (gap, duration_48k) in enumerate(steps):
        start += gap * 120 // ratio
        placements.append(Placement(start, duration_48k // ratio, index))
        start += duration_48k // ratio
    cuts, at = [], 0
    for gap, length in spans:  # in time order, not overlapping, on the 2.5 ms grid
        at += gap * 120
        cuts.append(Cut(at, length * 120))
        at += length * 120
    timeline = Timeline(tuple(placements), TimelineStats())

    cut_timeline, left_out = apply_cuts(timeline, cuts, codec)

    expected = []
    for p in placements:
        begin, end = p.start * ratio, (p.start + p.duration) * ratio
        if any(begin < c.start + c.removed and end > c.start for c in cuts):
            continue
        shift = sum(c.removed for c in cuts if c.start + c.removed <= begin) // ratio
        expected.append(Placement(p.start - shift, p.duration, p.index))
    assert list(cut_timeline.placements) == expected
    assert left_out == len(placements) - len(expected)


def test_a_long_calls_plan_holds_its_placements_in_columns() -> None:
    """Placing 2 x 30,000 packets (10 minutes a channel) keeps a few machine words a placement,
    not a Python object each (a long call's finalization holds every placement at once)."""
    packets = 30_000
    inputs = [
        channel(opus_stream(packets / 50)),
        channel(opus_stream(packets / 50, start_ns=ORIGIN_NS + 7_000_000), Channel.AGENT),
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        plan = plan_recording(inputs, mono_start_ns=ORIGIN_NS, stereo_mode="encode")
        held = sum(
            stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename")
        )
    finally:
        tracemalloc.stop()
    assert [c.timeline.stats.placed for c in plan.channels] == [packets, packets]
    print(f"plan of {2 * packets} packets holds {held / 1e6:.2f} MB")
    assert held / (2 * packets) < 64  # as one object each, ~180 B
