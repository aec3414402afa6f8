"""Tests for the Twilio Media Streams message parser and builders."""

import base64
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediaserver.errors import AgentProtocolError, MediaServerError
from mediaserver.transports.twilio_protocol import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_MESSAGE_TOO_BIG,
    L16_16K,
    L16_24K,
    MULAW_8K,
    AgentClear,
    AgentIgnored,
    AgentMark,
    AgentMedia,
    AudioFormat,
    Encoding,
    build_close_reason,
    build_connected,
    build_dtmf,
    build_mark,
    build_media,
    build_start,
    build_stop,
    compute_max_message_bytes,
    decode_payload,
    encode_payload,
    parse_agent_message,
    parse_audio_format_query,
)

from twilio_agent import decode_mulaw, detect_pipecat_transport, encode_mulaw, make_tone

SID = "MZ" + "ab" * 16
OTHER_SID = "MZ" + "cd" * 16


def agent_text(message: dict[str, Any]) -> str:
    """An agent message as the JSON text on the wire."""
    return json.dumps(message)


def pipecat_media(payload: bytes, sid: str = SID) -> str:
    """A media message exactly as pipecat's TwilioFrameSerializer.serialize builds it."""
    encoded = base64.b64encode(payload).decode("utf-8")
    return json.dumps({"event": "media", "streamSid": sid, "media": {"payload": encoded}})


# -- building what the server sends ------------------------------------------------------------


def test_connected_message() -> None:
    """`connected` names the Call protocol 1.0.0 and carries nothing else."""
    assert json.loads(build_connected()) == {
        "event": "connected",
        "protocol": "Call",
        "version": "1.0.0",
    }


def test_start_message_fields() -> None:
    """`start` has sequence "1", the sids, the inbound track, the format and custom parameters."""
    text = build_start(
        stream_sid=SID,
        call_sid="call-1",
        account_sid="AC" + "0" * 32,
        audio_format=MULAW_8K,
        custom_parameters={"from_number": "+15550100"},
    )
    assert json.loads(text) == {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "AC" + "0" * 32,
            "streamSid": SID,
            "callSid": "call-1",
            "tracks": ["inbound"],
            "customParameters": {"from_number": "+15550100"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
        "streamSid": SID,
    }


def test_start_message_is_detected_as_twilio_by_pipecat() -> None:
    """pipecat's runner recognises our `start` as a Twilio stream."""
    text = build_start(stream_sid=SID, call_sid="c", account_sid="AC", audio_format=L16_16K)
    assert detect_pipecat_transport(json.loads(text)) == "twilio"


@pytest.mark.parametrize(("audio_format", "rate_hz"), [(L16_16K, 16000), (L16_24K, 24000)])
def test_start_message_announces_wideband(audio_format: AudioFormat, rate_hz: int) -> None:
    """A wideband stream announces audio/x-l16 at its rate, sampleRate as a number."""
    start = json.loads(
        build_start(stream_sid=SID, call_sid="c", account_sid="AC", audio_format=audio_format)
    )["start"]
    assert start["mediaFormat"] == {"encoding": "audio/x-l16", "sampleRate": rate_hz, "channels": 1}
    assert start["customParameters"] == {}


def test_media_message_fields() -> None:
    """`media` numbers are decimal strings; the payload is base64 of the bytes given."""
    message = json.loads(
        build_media(
            sequence_number=7, stream_sid=SID, chunk=6, timestamp_ms=120, payload=b"\xff\x7f"
        )
    )
    assert message == {
        "event": "media",
        "sequenceNumber": "7",
        "media": {"track": "inbound", "chunk": "6", "timestamp": "120", "payload": "/38="},
        "streamSid": SID,
    }


def test_mark_message_fields() -> None:
    """A mark echo carries the agent's name back under `mark.name`."""
    assert json.loads(build_mark(sequence_number=9, stream_sid=SID, name="turn-1")) == {
        "event": "mark",
        "sequenceNumber": "9",
        "streamSid": SID,
        "mark": {"name": "turn-1"},
    }


def test_mark_name_with_lone_surrogate_echoes_exactly() -> None:
    """Whatever name JSON can carry comes back identical."""
    name = "caf\u00e9 \ud800"
    assert (
        json.loads(build_mark(sequence_number=2, stream_sid=SID, name=name))["mark"]["name"] == name
    )


def test_stop_message_fields() -> None:
    """`stop` repeats the account and call sids."""
    text = build_stop(sequence_number=12, stream_sid=SID, call_sid="call-1", account_sid="AC1")
    assert json.loads(text) == {
        "event": "stop",
        "sequenceNumber": "12",
        "stop": {"accountSid": "AC1", "callSid": "call-1"},
        "streamSid": SID,
    }


def test_dtmf_message_fields() -> None:
    """`dtmf` names the inbound_track and the digit."""
    assert json.loads(build_dtmf(sequence_number=3, stream_sid=SID, digit="#")) == {
        "event": "dtmf",
        "streamSid": SID,
        "sequenceNumber": "3",
        "dtmf": {"track": "inbound_track", "digit": "#"},
    }


def test_dtmf_rejects_non_digit() -> None:
    """Only the sixteen DTMF keys are digits."""
    with pytest.raises(ValueError, match="DTMF digit"):
        build_dtmf(sequence_number=3, stream_sid=SID, digit="x")


# -- parsing what an agent sends ---------------------------------------------------------------


def test_parse_pipecat_media() -> None:
    """pipecat's media message yields its payload bytes."""
    assert parse_agent_message(pipecat_media(b"\x01\x02\x03"), stream_sid=SID) == AgentMedia(
        b"\x01\x02\x03"
    )


def test_parse_mark_and_clear() -> None:
    """Twilio's mark and clear shapes parse to their messages."""
    mark = agent_text({"event": "mark", "streamSid": SID, "mark": {"name": "end"}})
    clear = agent_text({"event": "clear", "streamSid": SID})
    assert parse_agent_message(mark, stream_sid=SID) == AgentMark("end")
    assert parse_agent_message(clear, stream_sid=SID) == AgentClear()


def test_parse_tolerates_extra_fields() -> None:
    """Fields beyond those read (sequence numbers, track, chunk) are ignored."""
    text = agent_text(
        {
            "event": "media",
            "sequenceNumber": "4",
            "streamSid": SID,
            "media": {"track": "outbound", "chunk": "1", "timestamp": "5", "payload": "AAA="},
        }
    )
    assert parse_agent_message(text, stream_sid=SID) == AgentMedia(b"\x00\x00")


@pytest.mark.parametrize(
    "message",
    [
        {"event": "start", "streamSid": SID},
        {"event": "rtvi-ai", "data": {}},  # an application message pipecat passes through
        {"event": "media-mark", "streamSid": OTHER_SID},
    ],
)
def test_parse_ignores_unknown_events(message: dict[str, Any]) -> None:
    """Events agents do not send to Twilio are ignored, not errors, as Twilio does."""
    assert parse_agent_message(agent_text(message), stream_sid=SID) == AgentIgnored(
        message["event"]
    )


@pytest.mark.parametrize(
    ("text", "close_code", "match"),
    [
        ("not json", CLOSE_INVALID_PAYLOAD, "not JSON"),
        ("[1, 2]", CLOSE_INVALID_PAYLOAD, "not a JSON object"),
        ('{"streamSid": "x"}', CLOSE_INVALID_PAYLOAD, "no string 'event'"),
        ('{"event": 5}', CLOSE_INVALID_PAYLOAD, "no string 'event'"),
        ('{"event": "clear"}', CLOSE_INVALID_PAYLOAD, "no string 'streamSid'"),
        (f'{{"event": "clear", "streamSid": "{OTHER_SID}"}}', CLOSE_INVALID_PAYLOAD, "not this"),
        (f'{{"event": "media", "streamSid": "{SID}"}}', CLOSE_INVALID_PAYLOAD, "no 'media'"),
        (f'{{"event": "media", "streamSid": "{SID}", "media": {{}}}}', 1007, "media.payload"),
        (f'{{"event": "media", "streamSid": "{SID}", "media": {{"payload": 3}}}}', 1007, "payload"),
        (
            f'{{"event": "media", "streamSid": "{SID}", "media": {{"payload": "A*=="}}}}',
            1007,
            "base64",
        ),
        (
            f'{{"event": "media", "streamSid": "{SID}", "media": {{"payload": "AAA"}}}}',
            1007,
            "base64",
        ),
        (
            f'{{"event": "media", "streamSid": "{SID}", "media": {{"payload": "é"}}}}',
            1007,
            "base64",
        ),
        (f'{{"event": "mark", "streamSid": "{SID}", "mark": {{}}}}', 1007, "mark.name"),
        (f'{{"event": "mark", "streamSid": "{SID}", "mark": {{"name": 1}}}}', 1007, "mark.name"),
        (f'{{"event": "mark", "streamSid": "{SID}", "mark": "x"}}', 1007, "no 'mark'"),
        ('{"event": "media", "n": ' + "9" * 5000 + "}", CLOSE_INVALID_PAYLOAD, "not JSON"),
    ],
)
def test_parse_rejects_malformed(text: str, close_code: int, match: str) -> None:
    """Malformed agent messages raise AgentProtocolError naming the fault, with a close code."""
    with pytest.raises(AgentProtocolError, match=match) as info:
        parse_agent_message(text, stream_sid=SID)
    assert info.value.close_code == close_code
    assert isinstance(info.value, MediaServerError)
    assert isinstance(info.value, ValueError)


def test_parse_rejects_oversized_payload() -> None:
    """A payload over the limit closes with 1009, whether caught before or after decoding."""
    assert parse_agent_message(pipecat_media(bytes(300)), stream_sid=SID, max_payload_bytes=300)
    for size in (301, 3000):
        with pytest.raises(AgentProtocolError, match="exceeds 300 bytes") as info:
            parse_agent_message(pipecat_media(bytes(size)), stream_sid=SID, max_payload_bytes=300)
        assert info.value.close_code == CLOSE_MESSAGE_TOO_BIG


def test_parse_rejects_half_samples_in_l16() -> None:
    """An L16 payload must hold whole 16-bit samples."""
    with pytest.raises(AgentProtocolError, match="not whole samples"):
        parse_agent_message(pipecat_media(b"\x00\x01\x02"), stream_sid=SID, audio_format=L16_16K)


def test_message_size_fits_largest_payload() -> None:
    """The WebSocket message limit admits a maximal payload in pipecat's envelope."""
    text = pipecat_media(bytes(3000))
    assert len(text.encode()) <= compute_max_message_bytes(3000)


@given(st.text(max_size=300))
def test_parse_arbitrary_text_raises_only_our_error(text: str) -> None:
    """Any text either parses to a message or raises AgentProtocolError."""
    try:
        message = parse_agent_message(text, stream_sid=SID)
    except AgentProtocolError:
        return
    assert isinstance(message, AgentMedia | AgentMark | AgentClear | AgentIgnored)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children)
    ),
    max_leaves=8,
)


@given(
    event=st.sampled_from(["media", "mark", "clear", "stop", 3, None]),
    sid=st.sampled_from([SID, OTHER_SID, 7]),
    body=st.dictionaries(
        st.sampled_from(["payload", "name", "track"]),
        JSON_VALUES | st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    ),
)
def test_parse_structured_messages_round_trip_or_raise(event: Any, sid: Any, body: Any) -> None:
    """Near-valid messages either raise AgentProtocolError or carry exactly what was sent."""
    message: dict[str, Any] = {"event": event, "streamSid": sid}
    if isinstance(event, str):
        message[event] = body
    try:
        parsed = parse_agent_message(json.dumps(message), stream_sid=SID)
    except AgentProtocolError:
        return
    if isinstance(parsed, AgentMedia):
        assert base64.b64encode(parsed.payload).decode() == body["payload"]
    elif isinstance(parsed, AgentMark):
        assert parsed.name == body["name"]
    elif isinstance(parsed, AgentIgnored):
        assert parsed.event == event


@given(st.binary(max_size=2000))
def test_media_payload_round_trips(payload: bytes) -> None:
    """Any payload bytes sent in pipecat's shape parse back unchanged."""
    assert parse_agent_message(pipecat_media(payload), stream_sid=SID) == AgentMedia(payload)


# -- formats and payloads ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, MULAW_8K),
        ({"format": "mulaw"}, MULAW_8K),
        ({"format": "PCMU", "rate": "8000"}, MULAW_8K),
        ({"format": "l16"}, L16_16K),
        ({"format": "l16", "rate": "16000"}, L16_16K),
        ({"format": "l16", "rate": "24000"}, L16_24K),
    ],
)
def test_audio_format_query(query: dict[str, str], expected: AudioFormat) -> None:
    """The dial-in query picks μ-law 8 kHz by default, or L16 at 16 or 24 kHz."""
    assert parse_audio_format_query(query) == expected


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ({"format": "opus"}, "must be one of"),
        ({"format": "l16", "rate": "48000"}, "not 48000 Hz"),
        ({"format": "mulaw", "rate": "16000"}, "not 16000 Hz"),
        ({"format": "l16", "rate": "16k"}, "whole number"),
        ({"format": "l16", "rate": "\u00b2"}, "whole number"),  # isdigit() but not for int()
        ({"format": "l16", "rate": "1" * 5000}, "whole number"),  # past int()'s digit limit
    ],
)
def test_audio_format_query_rejects(query: dict[str, str], match: str) -> None:
    """Formats and rates the server cannot stream are refused by name."""
    with pytest.raises(AgentProtocolError, match=match):
        parse_audio_format_query(query)


def test_l16_payload_is_little_endian() -> None:
    """L16 payloads are signed 16-bit little-endian, both ways."""
    pcm = np.array([1, -2, 0x1234], dtype=np.int16)
    assert encode_payload(pcm, L16_24K) == b"\x01\x00\xfe\xff\x34\x12"
    assert decode_payload(b"\x01\x00\xfe\xff\x34\x12", L16_24K).tolist() == [1, -2, 0x1234]
    assert decode_payload(b"\x01\x00", L16_24K).dtype == np.int16


def test_mulaw_payload_matches_ffmpeg() -> None:
    """μ-law payloads decode as FFmpeg decodes them, and ours decode within a quantizer step."""
    tone = make_tone(440, 100, 8000)
    ffmpeg_bytes = encode_mulaw(tone)
    assert np.array_equal(decode_payload(ffmpeg_bytes, MULAW_8K), decode_mulaw(ffmpeg_bytes))
    ours = decode_mulaw(encode_payload(tone, MULAW_8K)).astype(np.int32)
    # μ-law keeps about 3 % of the magnitude; the tone stays well inside the top segment.
    assert np.all(np.abs(ours - tone) <= np.abs(tone.astype(np.int32)) // 16 + 8)


def test_encoding_names_are_mime_types() -> None:
    """The encodings print as Twilio's mediaFormat names."""
    assert str(Encoding.MULAW) == "audio/x-mulaw"
    assert str(Encoding.L16) == "audio/x-l16"


def test_close_reason_fits_a_close_frame() -> None:
    """Close reasons are cut to 123 bytes without splitting a character."""
    assert build_close_reason("short") == b"short"
    cut = build_close_reason("é" * 100)
    assert len(cut) <= 123
    assert cut.decode() == "é" * (len(cut) // 2)
