"""Twilio Media Streams WebSocket messages: parse what an agent sends, build what it receives."""

# Message shapes follow Twilio's "Media Streams - WebSocket Messages" reference
# (twilio.com/docs/voice/media-streams/websocket-messages) and what a Twilio agent built on
# pipecat sends and reads (pipecat src/pipecat/serializers/twilio.py and the `start` detection
# in src/pipecat/runner/utils.py, commit acead0507d7de44e216d24533964106ca1d1d044).
#
# What the server sends: `connected` (no sequence number), then `start` with sequenceNumber "1",
# then `media`, `mark`, `dtmf` and finally `stop`, each numbered one more than the last, every
# number a decimal string as Twilio sends them. What an agent sends: `media`, `mark`, `clear`,
# each carrying the stream's `streamSid`.
#
# Strictness: a message that names `media`, `mark` or `clear` must be well formed (JSON object,
# the stream's sid, the fields those events need, strict base64, a bounded payload) or it is an
# AgentProtocolError and the connection is closed with its close code. Twilio itself only warns
# (errors 31950/31951) and drops such messages; closing makes a broken agent visible at once
# instead of leaving a silent call. Events of any other name are ignored as Twilio does: agents
# built for Twilio (pipecat's serializer passes application messages through verbatim) may
# send them and must keep working. Fields beyond those read are ignored for the same reason.

import base64
import binascii
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from mediaserver.audio.g711 import decode_pcmu, encode_pcmu
from mediaserver.errors import AgentProtocolError
from mediaserver.transports.link import Pcm

# RFC 6455 §7.4.1 close status codes.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # the server is shutting down
CLOSE_UNSUPPORTED_DATA = 1003  # a frame type the endpoint does not accept (binary here)
CLOSE_INVALID_PAYLOAD = 1007  # data in a message inconsistent with the message's type
CLOSE_MESSAGE_TOO_BIG = 1009
# RFC 6455 §5.5: a control frame carries at most 125 bytes, two of them the status code.
MAX_CLOSE_REASON_BYTES = 123

PROTOCOL_NAME = "Call"
PROTOCOL_VERSION = "1.0.0"
START_SEQUENCE_NUMBER = 1
# The caller's audio is the stream's inbound track; a bidirectional stream carries only it.
CALLER_TRACK = "inbound"
DTMF_TRACK = "inbound_track"
DEFAULT_MAX_PAYLOAD_BYTES = 1 << 20
DTMF_DIGITS = frozenset("0123456789*#ABCD")


class Encoding(StrEnum):
    """Payload encodings, named by the MIME types of `start.mediaFormat.encoding`."""

    MULAW = "audio/x-mulaw"
    # Signed 16-bit little-endian PCM, the raw PCM that agent pipelines (pipecat, Exotel-style
    # streams) consume as is; not RFC 3551's network-order L16, which no such agent expects.
    L16 = "audio/x-l16"


# The query names an agent uses to ask for a format when it dials in (`?format=l16&rate=16000`).
_FORMAT_NAMES = {"mulaw": Encoding.MULAW, "pcmu": Encoding.MULAW, "l16": Encoding.L16}
_RATES_HZ = {Encoding.MULAW: (8000,), Encoding.L16: (16000, 24000)}
_BYTES_PER_SAMPLE = {Encoding.MULAW: 1, Encoding.L16: 2}
_RATE_PATTERN = re.compile(r"[0-9]{1,6}")


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """The encoding and rate of every media payload of one stream, both directions."""

    encoding: Encoding
    sample_rate_hz: int

    def __post_init__(self) -> None:
        if self.sample_rate_hz not in _RATES_HZ[self.encoding]:
            allowed = ", ".join(str(rate) for rate in _RATES_HZ[self.encoding])
            raise AgentProtocolError(
                f"{self.encoding} runs at {allowed} Hz, not {self.sample_rate_hz} Hz"
            )

    @property
    def bytes_per_sample(self) -> int:
        """Payload bytes per mono sample."""
        return _BYTES_PER_SAMPLE[self.encoding]


MULAW_8K = AudioFormat(Encoding.MULAW, 8000)
L16_16K = AudioFormat(Encoding.L16, 16000)
L16_24K = AudioFormat(Encoding.L16, 24000)


def parse_audio_format_query(query: Mapping[str, str]) -> AudioFormat:
    """The format an agent asks for in its dial-in URL query; μ-law 8 kHz when it asks nothing."""
    encoding = _FORMAT_NAMES.get(query.get("format", "mulaw").lower())
    if encoding is None:
        raise AgentProtocolError(
            f"query parameter format must be one of {', '.join(sorted(_FORMAT_NAMES))}"
        )
    rate_text = query.get("rate")
    if rate_text is None:
        return AudioFormat(encoding, _RATES_HZ[encoding][0])
    # ASCII digits only, and few of them: str.isdigit() accepts "²", which int() refuses.
    if _RATE_PATTERN.fullmatch(rate_text) is None:
        raise AgentProtocolError("query parameter rate must be a whole number of hertz")
    return AudioFormat(encoding, int(rate_text))


def encode_payload(pcm: Pcm, audio_format: AudioFormat) -> bytes:
    """Mono int16 PCM to the stream's payload bytes."""
    if audio_format.encoding is Encoding.MULAW:
        return encode_pcmu(pcm)
    return pcm.astype("<i2", copy=False).tobytes()


def decode_payload(payload: bytes, audio_format: AudioFormat) -> Pcm:
    """The stream's payload bytes to mono int16 PCM (payload length already validated)."""
    if audio_format.encoding is Encoding.MULAW:
        return decode_pcmu(payload)
    return np.frombuffer(payload, dtype="<i2").astype(np.int16)


# -- messages an agent sends -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentMedia:
    """Agent speech to play to the caller: raw payload bytes in the stream's format."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class AgentMark:
    """The agent asks to hear `name` back once the audio it sent before has played."""

    name: str


@dataclass(frozen=True, slots=True)
class AgentClear:
    """The agent drops the audio it has queued (barge-in)."""


@dataclass(frozen=True, slots=True)
class AgentIgnored:
    """A message of an event the protocol does not give agents; dropped, as Twilio does."""

    event: str


AgentMessage = AgentMedia | AgentMark | AgentClear | AgentIgnored


def parse_agent_message(
    text: str,
    *,
    stream_sid: str,
    audio_format: AudioFormat = MULAW_8K,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> AgentMessage:
    """Validate one text frame from an agent; anything malformed is an AgentProtocolError."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, or an int past the digit limit
        raise AgentProtocolError(f"agent message is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise AgentProtocolError("agent message is not a JSON object")
    event = message.get("event")
    if not isinstance(event, str):
        raise AgentProtocolError("agent message has no string 'event'")
    if event not in ("media", "mark", "clear"):
        return AgentIgnored(event)
    sent_sid = message.get("streamSid")
    if not isinstance(sent_sid, str):
        raise AgentProtocolError(f"{event} message has no string 'streamSid'")
    if sent_sid != stream_sid:
        raise AgentProtocolError(f"{event} message names another streamSid, not this stream")
    if event == "clear":
        return AgentClear()
    body = message.get(event)
    if not isinstance(body, dict):
        raise AgentProtocolError(f"{event} message has no '{event}' object")
    if event == "mark":
        name = body.get("name")
        if not isinstance(name, str):
            raise AgentProtocolError("mark message has no string 'mark.name'")
        return AgentMark(name)
    return AgentMedia(_parse_payload(body.get("payload"), audio_format, max_payload_bytes))


def _parse_payload(encoded: Any, audio_format: AudioFormat, max_payload_bytes: int) -> bytes:
    """Decode and check `media.payload`: strict base64, bounded, whole samples."""
    if not isinstance(encoded, str):
        raise AgentProtocolError("media message has no string 'media.payload'")
    # Refuse before decoding: base64 text is 4 characters per 3 bytes.
    if len(encoded) > 4 * -(-max_payload_bytes // 3):
        raise AgentProtocolError(
            f"media payload exceeds {max_payload_bytes} bytes", close_code=CLOSE_MESSAGE_TOO_BIG
        )
    try:
        payload = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AgentProtocolError(f"media payload is not valid base64: {exc}") from None
    if len(payload) > max_payload_bytes:
        raise AgentProtocolError(
            f"media payload exceeds {max_payload_bytes} bytes", close_code=CLOSE_MESSAGE_TOO_BIG
        )
    if len(payload) % audio_format.bytes_per_sample:
        raise AgentProtocolError(
            f"{audio_format.encoding} payload of {len(payload)} bytes is not whole samples"
        )
    return payload


def compute_max_message_bytes(max_payload_bytes: int) -> int:
    """The WebSocket message size that fits the largest allowed payload plus its JSON envelope."""
    return 4 * -(-max_payload_bytes // 3) + 4096


def build_close_reason(reason: str) -> bytes:
    """A close reason cut to what fits a close frame, on a UTF-8 character boundary."""
    data = reason.encode()
    if len(data) <= MAX_CLOSE_REASON_BYTES:
        return data
    return data[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore").encode()


# -- messages the server sends ---------------------------------------------------------------


def _dump(message: dict[str, Any]) -> str:
    """Compact JSON text, ASCII only: a mark name with a lone surrogate still echoes exactly."""
    return json.dumps(message, separators=(",", ":"))


def build_connected() -> str:
    """The first message of every stream."""
    return _dump({"event": "connected", "protocol": PROTOCOL_NAME, "version": PROTOCOL_VERSION})


def build_start(
    *,
    stream_sid: str,
    call_sid: str,
    account_sid: str,
    audio_format: AudioFormat,
    custom_parameters: Mapping[str, str] | None = None,
) -> str:
    """The stream's metadata, always sequence number 1; pipecat detects Twilio by its fields."""
    return _dump(
        {
            "event": "start",
            "sequenceNumber": str(START_SEQUENCE_NUMBER),
            "start": {
                "accountSid": account_sid,
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": [CALLER_TRACK],
                "customParameters": dict(custom_parameters or {}),
                "mediaFormat": {
                    "encoding": str(audio_format.encoding),
                    "sampleRate": audio_format.sample_rate_hz,
                    "channels": 1,
                },
            },
            "streamSid": stream_sid,
        }
    )


# The message every 20 ms of every call: formatted, not serialized (json.dumps walks a nested
# dict for each one). Numbers and base64 need no escaping; the stream sid is escaped once.
_MEDIA = (
    '{"event":"media","sequenceNumber":"%d","media":{"track":"' + CALLER_TRACK + '",'
    '"chunk":"%d","timestamp":"%d","payload":"%s"},"streamSid":%s}'
)


@functools.lru_cache(maxsize=4096)
def _json_string(text: str) -> str:
    """A string as a JSON string literal (cached: a stream sid is used for every message)."""
    return json.dumps(text)


def build_media(
    *, sequence_number: int, stream_sid: str, chunk: int, timestamp_ms: int, payload: bytes
) -> str:
    """One chunk of caller audio; chunk counts from 1, timestamp is ms since the stream began."""
    encoded = base64.b64encode(payload).decode("ascii")
    return _MEDIA % (sequence_number, chunk, timestamp_ms, encoded, _json_string(stream_sid))


def build_mark(*, sequence_number: int, stream_sid: str, name: str) -> str:
    """The echo of an agent's mark: the audio sent before it has been played (or cleared)."""
    return _dump(
        {
            "event": "mark",
            "sequenceNumber": str(sequence_number),
            "streamSid": stream_sid,
            "mark": {"name": name},
        }
    )


def build_dtmf(*, sequence_number: int, stream_sid: str, digit: str) -> str:
    """A key the caller pressed."""
    if digit not in DTMF_DIGITS:
        raise ValueError(f"DTMF digit must be one of 0-9 * # A-D, got {digit!r}")
    return _dump(
        {
            "event": "dtmf",
            "streamSid": stream_sid,
            "sequenceNumber": str(sequence_number),
            "dtmf": {"track": DTMF_TRACK, "digit": digit},
        }
    )


def build_stop(*, sequence_number: int, stream_sid: str, call_sid: str, account_sid: str) -> str:
    """The last message of a stream."""
    return _dump(
        {
            "event": "stop",
            "sequenceNumber": str(sequence_number),
            "stop": {"accountSid": account_sid, "callSid": call_sid},
            "streamSid": stream_sid,
        }
    )
