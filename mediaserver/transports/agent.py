"""The agent leg: one WebSocket speaking Twilio Media Streams messages, dialled in or out."""

import asyncio
import os
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog
from aiohttp import web

from mediaserver.clock import Clock, SystemClock
from mediaserver.errors import AgentDialError, AgentProtocolError
from mediaserver.excerpt import excerpt
from mediaserver.transports.agent_outbox import UNTIMED, AgentOutbox, AgentWebSocket
from mediaserver.transports.link import AgentMediaSink, Pcm
from mediaserver.transports.twilio_protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_UNSUPPORTED_DATA,
    DEFAULT_MAX_PAYLOAD_BYTES,
    MULAW_8K,
    AgentClear,
    AgentIgnored,
    AgentMark,
    AgentMedia,
    AudioFormat,
    build_close_reason,
    compute_max_message_bytes,
    decode_payload,
    parse_agent_message,
    parse_audio_format_query,
)
from mediaserver.transports.twilio_stream import OutboundStream

log = structlog.get_logger(__name__)

# Twilio account sids are "AC" + 32 hex digits; agents that log or check it get a well-formed one.
DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
DEFAULT_HEARTBEAT_S = 15.0
# 5 s of 20 ms caller chunks: enough to ride out a hiccup, small enough to stay near real time.
DEFAULT_SEND_QUEUE_MESSAGES = 250
DEFAULT_CLOSE_TIMEOUT_S = 2.0
_WEBSOCKET_VERSIONS = ("13", "8", "7")  # what aiohttp accepts: RFC 6455's 13 and two drafts


def compute_close_code(reason: str) -> int:
    """RFC 6455 §7.4.1: 1001 when the server goes away, 1000 when the call is simply over."""
    return CLOSE_GOING_AWAY if reason == "shutdown" else CLOSE_NORMAL


def new_stream_sid() -> str:
    """A Twilio-shaped stream sid: "MZ" and 32 hex digits."""
    return "MZ" + secrets.token_hex(16)


class ConnectionState(Enum):
    """Where an agent connection is in its life."""

    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(slots=True)
class AgentConnectionStats:
    """Counters of one agent connection, for the call's manifest and metrics."""

    marks_sent: int = 0
    dtmf_sent: int = 0
    media_received: int = 0
    marks_received: int = 0
    clears_received: int = 0
    messages_ignored: int = 0


class AgentConnection:
    """One agent WebSocket, as the call session's AgentLink."""

    def __init__(
        self,
        ws: AgentWebSocket,
        *,
        sink: AgentMediaSink,
        call_id: str,
        audio_format: AudioFormat = MULAW_8K,
        stream_sid: str | None = None,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        custom_parameters: Mapping[str, str] | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_queued_messages: int = DEFAULT_SEND_QUEUE_MESSAGES,
        close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S,
        clock: Clock | None = None,
    ) -> None:
        self.ws = ws
        self.sink = sink
        self.call_id = call_id
        self.audio_format = audio_format
        self.sample_rate_hz = audio_format.sample_rate_hz
        self.stream_sid = stream_sid or new_stream_sid()
        self.max_payload_bytes = max_payload_bytes
        self.close_timeout_s = close_timeout_s
        self.stats = AgentConnectionStats()
        self.state = ConnectionState.OPEN
        # How the connection closed (RFC 6455 §7.1.5/§7.1.6): the code and reason of the close
        # frame the agent sent, or of the one the server sent first.
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed_by: str | None = None  # "agent" or "server"
        self._clock = clock or SystemClock()
        self._started_ns = 0
        self._stream = OutboundStream(
            stream_sid=self.stream_sid,
            call_sid=call_id,
            account_sid=account_sid,
            audio_format=audio_format,
            custom_parameters=custom_parameters or {},
        )
        self._outbox = AgentOutbox(
            ws, max_queued_media=max_queued_messages, on_media_written=self._media_written
        )
        self._closed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._ignored_events: set[str] = set()
        self.log = log.bind(call_id=call_id, stream_sid=self.stream_sid)

    async def start(self) -> None:
        """Send `connected` and `start`, then begin reading and writing in owned tasks."""
        self._started_ns = self._clock.monotonic_ns()
        try:
            await self.ws.send_str(self._stream.connected())
            await self.ws.send_str(self._stream.start())
        except ConnectionError:
            # An agent gone this early is reported like any disconnect, by the reader.
            pass
        # Created last, with no await after: a caller that attaches this connection to its
        # session right after `start` returns sees no agent message before it is attached.
        self._outbox.start(name=f"agent-writer-{self.call_id}")
        self._reader = asyncio.create_task(self._read_loop(), name=f"agent-reader-{self.call_id}")
        self.log.info(
            "agent.connected",
            encoding=str(self.audio_format.encoding),
            sample_rate_hz=self.sample_rate_hz,
        )

    # -- sending (called by the session on the packet path: never blocks) ----------------------

    def send_caller_audio(self, pcm: Pcm, arrival_ns: int | None = None) -> None:
        """Queue caller speech as one `media` message; the oldest queued media goes on overflow."""
        # `arrival_ns`: when the caller's packet reached the server, reported back to the sink
        # with the time the message was written (the caller-to-agent latency).
        if self.state is not ConnectionState.OPEN or pcm.size == 0:
            return
        elapsed_ms = (self._clock.monotonic_ns() - self._started_ns) // 1_000_000
        text = self._stream.media(pcm, elapsed_ms)
        self._outbox.put_media(text, UNTIMED if arrival_ns is None else arrival_ns)

    def send_mark(self, name: str) -> None:
        """Echo an agent's mark: the audio it sent before the mark has been played."""
        if self.state is not ConnectionState.OPEN:
            return
        self._outbox.put(self._stream.mark(name))
        self.stats.marks_sent += 1

    def send_dtmf(self, digit: str) -> None:
        """Tell the agent the caller pressed a key; never dropped, like a mark."""
        if self.state is not ConnectionState.OPEN:
            return
        self._outbox.put(self._stream.dtmf(digit))
        self.stats.dtmf_sent += 1

    def describe(self) -> dict[str, Any]:
        """The connection's stream, close and counters, for the API and the call's record."""
        return {
            "transport": "websocket",
            "stream_sid": self.stream_sid,
            "encoding": str(self.audio_format.encoding),
            "sample_rate_hz": self.sample_rate_hz,
            "state": self.state.value,
            "close_code": self.close_code,
            "close_reason": self.close_reason,
            "closed_by": self.closed_by,
            **self._stats_fields(),
        }

    def _media_written(self, arrival_ns: int) -> None:
        """Caller audio reached the agent's socket: the sink learns how long the server held it."""
        self.sink.on_caller_audio_sent(arrival_ns, self._clock.monotonic_ns())

    # -- receiving -----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        """Deliver the agent's messages to the sink until the socket closes or misbehaves."""
        reason = "disconnected"
        try:
            while True:
                msg = await self.ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    try:
                        self._deliver(msg.data, self._clock.monotonic_ns())
                    except AgentProtocolError as exc:
                        reason = "protocol_error"
                        await self._fail(exc.close_code, str(exc))
                        return
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    reason = "protocol_error"
                    await self._fail(
                        CLOSE_UNSUPPORTED_DATA,
                        "binary frames are not part of Twilio Media Streams; send JSON text",
                    )
                    return
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    # aiohttp has already closed with the fitting code (1007 bad UTF-8, 1009 too
                    # big) for WebSocket-level faults; anything else is a lost connection.
                    if isinstance(msg.data, aiohttp.WebSocketError):
                        reason = "protocol_error"
                        self.log.warning("agent.protocol_error", error=str(msg.data))
                    return
                else:  # CLOSE, CLOSING, CLOSED
                    if msg.type is aiohttp.WSMsgType.CLOSE:
                        self._note_close(msg.data, msg.extra, "agent")
                    return
        except Exception:
            # A fault of ours (in the sink, say) must not leave the agent's socket dangling.
            reason = "internal_error"
            self.log.exception("agent.reader_failed")
        finally:
            await self._end_from_reader(reason)

    def _deliver(self, text: str, received_ns: int) -> None:
        """Parse one text frame and hand it to the sink."""
        message = parse_agent_message(
            text,
            stream_sid=self.stream_sid,
            audio_format=self.audio_format,
            max_payload_bytes=self.max_payload_bytes,
        )
        if isinstance(message, AgentMedia):
            self.stats.media_received += 1
            if message.payload:
                audio = decode_payload(message.payload, self.audio_format)
                self.sink.on_agent_audio(audio, received_ns)
        elif isinstance(message, AgentMark):
            self.stats.marks_received += 1
            self.sink.on_agent_mark(message.name)
        elif isinstance(message, AgentClear):
            self.stats.clears_received += 1
            self.sink.on_agent_clear()
        elif isinstance(message, AgentIgnored):
            self.stats.messages_ignored += 1
            if message.event not in self._ignored_events:
                # Once per event name, like Twilio's once-per-stream warning.
                self._ignored_events.add(message.event)
                self.log.info("agent.message_ignored", agent_event=message.event[:64])

    def _note_close(self, code: object, reason: object, closed_by: str) -> None:
        """Remember the first close frame of the connection, whoever sent it."""
        if self.closed_by is not None:
            return
        self.close_code = code if isinstance(code, int) else None
        self.close_reason = reason if isinstance(reason, str) else None
        self.closed_by = closed_by

    async def _fail(self, close_code: int, reason: str) -> None:
        """Close on a protocol violation, telling the agent what was wrong."""
        self.log.warning("agent.protocol_error", close_code=close_code, reason=reason)
        self._note_close(close_code, reason, "server")
        await self._outbox.stop()
        await self.ws.close(code=close_code, message=build_close_reason(reason))

    async def _end_from_reader(self, reason: str) -> None:
        """The agent side ended the connection: release it and tell the sink once."""
        if self.state is not ConnectionState.OPEN:
            return  # close() is under way and finishes the job
        self.state = ConnectionState.CLOSED
        await self._outbox.stop()
        await self.ws.close()
        if self.closed_by is None:  # no close frame: the connection was lost
            self._note_close(self.ws.close_code, reason, "agent")
        self._closed.set()
        self.log.info("agent.ended", reason=reason, **self._stats_fields())
        self.sink.on_agent_ended(reason)

    # -- closing -------------------------------------------------------------------------------

    async def close(self, reason: str) -> None:
        """Send `stop`, flush what is queued (bounded), close the socket; idempotent."""
        if self.state is not ConnectionState.OPEN:
            await self._closed.wait()
            return
        self.state = ConnectionState.CLOSING
        self._outbox.put(self._stream.stop())
        await self._outbox.drain(self.close_timeout_s)
        code = compute_close_code(reason)
        self._note_close(code, reason, "server")
        await self.ws.close(code=code, message=build_close_reason(reason))
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            await asyncio.gather(reader, return_exceptions=True)
        self.state = ConnectionState.CLOSED
        self._closed.set()
        self.log.info("agent.closed", reason=reason, **self._stats_fields())

    async def wait_closed(self) -> None:
        """Return once the connection is over, whichever side ended it."""
        await self._closed.wait()

    def _stats_fields(self) -> dict[str, int]:
        """The counters as log fields."""
        outbox = self._outbox
        return {
            "media_sent": outbox.media_sent,
            "media_dropped": outbox.media_dropped,
            **asdict(self.stats),
        }


def check_websocket_handshake(request: web.Request) -> None:
    """Refuse, with AgentProtocolError (400), a request that is no WebSocket handshake."""
    headers = request.headers
    # RFC 6455 §4.2.1. aiohttp checks the same but quotes the header in its error text, which
    # cannot be encoded when the header holds bytes that are not UTF-8: checked here first.
    if headers.get("Upgrade", "").strip().lower() != "websocket":
        raise AgentProtocolError("this route takes a WebSocket: send `Upgrade: websocket`")
    # Connection is a list, and may come in several header lines (RFC 9110 §5.3, §7.6.1).
    if not any("upgrade" in value.lower() for value in headers.getall("Connection", [])):
        raise AgentProtocolError("this route takes a WebSocket: send `Connection: Upgrade`")
    if headers.get("Sec-WebSocket-Version", "") not in _WEBSOCKET_VERSIONS:
        raise AgentProtocolError("this route takes a WebSocket: send `Sec-WebSocket-Version: 13`")


async def accept(
    request: web.Request,
    *,
    sink: AgentMediaSink,
    call_id: str,
    audio_format: AudioFormat | None = None,
    account_sid: str = DEFAULT_ACCOUNT_SID,
    custom_parameters: Mapping[str, str] | None = None,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    max_queued_messages: int = DEFAULT_SEND_QUEUE_MESSAGES,
    clock: Clock | None = None,
) -> tuple[AgentConnection, web.WebSocketResponse]:
    """Upgrade an agent's dial-in request; the handler returns the response once it closes."""
    # Without `audio_format` the format comes from the URL query (`?format=l16&rate=16000`); a
    # bad query raises AgentProtocolError before the upgrade, for the handler to answer 400.
    chosen = audio_format or parse_audio_format_query(request.query)
    check_websocket_handshake(request)
    ws = web.WebSocketResponse(
        heartbeat=heartbeat_s,
        max_msg_size=compute_max_message_bytes(max_payload_bytes),
        # How long a close waits for the agent's closing frame: an agent that never answers
        # must not hold the connection's reader.
        timeout=DEFAULT_CLOSE_TIMEOUT_S,
    )
    await ws.prepare(request)
    connection = AgentConnection(
        ws,
        sink=sink,
        call_id=call_id,
        audio_format=chosen,
        account_sid=account_sid,
        custom_parameters=custom_parameters,
        max_payload_bytes=max_payload_bytes,
        max_queued_messages=max_queued_messages,
        clock=clock,
    )
    await connection.start()
    return connection, ws


async def dial_out(
    url: str,
    *,
    sink: AgentMediaSink,
    call_id: str,
    session: aiohttp.ClientSession,
    audio_format: AudioFormat = MULAW_8K,
    timeout_s: float = 10.0,
    custom_parameters: Mapping[str, str] | None = None,
    account_sid: str = DEFAULT_ACCOUNT_SID,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    max_queued_messages: int = DEFAULT_SEND_QUEUE_MESSAGES,
    clock: Clock | None = None,
) -> AgentConnection:
    """Open a WebSocket to the agent's URL, as Twilio does, and start the stream on it."""
    if urlsplit(url).scheme not in ("ws", "wss"):
        raise AgentDialError(f"agent URL must be ws:// or wss://, got {excerpt(url)}")
    try:
        async with asyncio.timeout(timeout_s):
            ws = await session.ws_connect(
                url,
                heartbeat=heartbeat_s,
                max_msg_size=compute_max_message_bytes(max_payload_bytes),
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=DEFAULT_CLOSE_TIMEOUT_S),
            )
    except TimeoutError:
        raise AgentDialError(f"agent at {url} did not answer within {timeout_s} s") from None
    except aiohttp.ClientConnectorError as exc:
        # asyncio's message carries the address as a Python tuple: name the errno instead.
        errno_value = exc.os_error.errno
        reason = os.strerror(errno_value) if errno_value else "the connection failed"
        raise AgentDialError(f"agent at {url} could not be reached: {reason}") from None
    except aiohttp.WSServerHandshakeError as exc:
        raise AgentDialError(
            f"agent at {url} refused the WebSocket: HTTP {exc.status} {exc.message}"
        ) from None
    except aiohttp.ClientError as exc:
        raise AgentDialError(f"agent at {url} failed: {type(exc).__name__}") from None
    connection = AgentConnection(
        ws,
        sink=sink,
        call_id=call_id,
        audio_format=audio_format,
        account_sid=account_sid,
        custom_parameters=custom_parameters,
        max_payload_bytes=max_payload_bytes,
        max_queued_messages=max_queued_messages,
        clock=clock,
    )
    await connection.start()
    return connection
