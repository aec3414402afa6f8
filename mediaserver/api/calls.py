"""Calls API: create, list and end calls; plain-RTP caller legs; the agent's WebSocket."""

import json
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from mediaserver.api.body import read_json_object
from mediaserver.api.errors import ApiError
from mediaserver.api.keys import HTTP_CLIENT, HUB, SETTINGS
from mediaserver.api.links import absolute_base, public_base, websocket_base
from mediaserver.errors import (
    AgentDialError,
    CallStateError,
)
from mediaserver.lifecycle.policy import parse_retention_days
from mediaserver.recorder import CALL_ID_PATTERN
from mediaserver.recording.call import EndReason
from mediaserver.recording.channel import Channel, Codec
from mediaserver.session import CallSession
from mediaserver.transports.agent import AgentConnection, accept, dial_out
from mediaserver.transports.echo_agent import EchoAgent, is_builtin_agent_url, parse_echo_delay_s
from mediaserver.transports.rtp import RtpCallerTransport
from mediaserver.transports.twilio_protocol import (
    MULAW_8K,
    AudioFormat,
    Encoding,
    parse_audio_format_query,
)
from mediaserver.transports.webrtc import WebRtcCallerTransport
from mediaserver.webhooks import with_status_callback

log = structlog.get_logger(__name__)

MAX_METADATA_BYTES = 4096
SDP = "application/sdp"
# RFC 5761 §4: with RTCP on the RTP port, payload types 64-95 read as RTCP packet types.
_RTCP_CONFLICT_PAYLOAD_TYPES = range(64, 96)
_UNSPECIFIED_ADDRESSES = frozenset({"0.0.0.0", "::"})  # RFC 3264 §8.4: put on hold
# Drop reasons of the agent's leg (its audio towards the caller); every other reason is the
# caller's leg (its packets towards the recording and the agent). Silence skipped to catch up
# after late agent audio is not a loss.
_AGENT_LEG_DROPS = frozenset({"agent_late_frames", "playout_overflow_frames"})
_NOT_A_LOSS = frozenset({"agent_silence_skipped_frames"})


def parse_codec(value: Any, field: str) -> Codec:
    """A codec name from a request."""
    try:
        return Codec(value)
    except ValueError:
        choices = ", ".join(c.value for c in Codec)
        raise ApiError(400, "bad_request", f"{field} must be one of {choices}") from None


def _retention_days(value: Any) -> int | None:
    """The call's own retention in days (0: keep forever), or None for the server's default."""
    if value is None:
        return None
    try:
        return parse_retention_days(value)
    except ValueError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None


def describe_session(session: CallSession) -> dict[str, Any]:
    """A live call as the API shows it."""
    bridge = session.bridge
    record = session.record.agent()
    agent: dict[str, Any] = {
        "kind": _link_kind(session.agent),
        "connected": bridge is not None and session.leg_open(Channel.AGENT),
        "open": session.leg_open(Channel.AGENT),
        "url": session.record.agent_url,
        "error": session.record.agent_error,
        "connected_at": record.get("connected_at"),
        "frames_played": session.stats.agent_frames_played,
        # Frames of silence the caller got while the agent said nothing (not journalled).
        "silence_frames_sent": session.feed.silence_frames_sent,
        "buffered_ms": bridge.buffered_ms if bridge is not None else 0.0,
    }
    if bridge is not None:
        agent.update(
            marks_echoed=bridge.stats.marks_echoed,
            clears=bridge.stats.clears,
            caller_frames_sent=bridge.stats.caller_frames_to_agent,
            connection=bridge.agent.describe(),
        )
    dropped = session.drop_counts()
    agent["dropped"] = sum(dropped.get(reason, 0) for reason in _AGENT_LEG_DROPS)
    return {
        "call_id": session.call_id,
        "status": "recording",
        "caller_codec": session.caller_codec.value,
        "created_at_ns": session.recording.wall_start_ns,
        "recording": {
            "status": "recording" if session.recording.paused is None else "paused",
            "pause_behavior": (
                None if session.recording.paused is None else session.recording.paused.value
            ),
        },
        "dtmf_digits": session.stats.dtmf_digits,
        "latency_ms": session.latency.summary_ms(),
        "legs": {
            "caller": {
                "kind": _link_kind(session.caller),
                "connected": session.caller is not None,
                "open": session.leg_open(Channel.CALLER),
                "packets": session.stats.caller_packets,
                "dropped": sum(
                    count
                    for reason, count in dropped.items()
                    if reason not in _AGENT_LEG_DROPS | _NOT_A_LOSS
                ),
                "transport": None if session.caller is None else session.caller.describe(),
            },
            "agent": agent,
        },
        "dropped": dropped,
        "metadata": session.metadata,
    }


def _link_kind(link: object) -> str | None:
    """What carries a leg: webrtc, rtp, websocket (an agent) or echo (the built-in agent)."""
    kinds = {
        WebRtcCallerTransport: "webrtc",
        RtpCallerTransport: "rtp",
        AgentConnection: "websocket",
        EchoAgent: "echo",
    }
    return None if link is None else kinds.get(type(link), type(link).__name__)


def _agent_format(value: Any) -> AudioFormat:
    """The agent's audio format from a request: μ-law 8 kHz unless it asks for L16."""
    if value is None:
        return MULAW_8K
    if not isinstance(value, dict):
        raise ApiError(400, "bad_request", "agent_format must be an object")
    try:
        encoding = Encoding(str(value.get("encoding", Encoding.MULAW.value)))
        return AudioFormat(encoding, int(value.get("sample_rate", 8000)))
    except (ValueError, TypeError) as exc:
        raise ApiError(
            400,
            "bad_request",
            "agent_format must be {encoding: audio/x-mulaw, sample_rate: 8000}"
            f" or {{encoding: audio/x-l16, sample_rate: 16000|24000}} ({exc})",
        ) from None


async def _dial_agent(
    session: CallSession,
    url: str,
    *,
    audio_format: AudioFormat,
    client: aiohttp.ClientSession,
    timeout_s: float,
) -> None:
    """Dial out to the call's agent, as Twilio does, and keep the leg until it closes."""
    try:
        connection = await dial_out(
            url,
            sink=session,
            call_id=session.call_id,
            session=client,
            audio_format=audio_format,
            timeout_s=timeout_s,
        )
    except AgentDialError as exc:
        log.warning("call.agent_dial_failed", call_id=session.call_id, error=str(exc))
        session.record.agent_dial_failed(str(exc))
        session.end_agent_leg(EndReason.DIAL_FAILED, detail=str(exc))
        return
    if session.closed or not session.leg_open(Channel.AGENT):
        await connection.close("call ended")
        return
    session.attach_agent(connection)
    await connection.wait_closed()


async def create_call(request: web.Request) -> web.Response:
    """POST /v1/calls: open a call (optionally dialling out to its agent)."""
    body = await read_json_object(request)
    fields = {
        "call_id",
        "caller_codec",
        "agent_url",
        "agent_format",
        "metadata",
        "retention_days",
        "status_callback",
    }
    unknown = set(body) - fields
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field(s): {', '.join(sorted(unknown))}")
    call_id = body.get("call_id")
    if call_id is not None and (
        not isinstance(call_id, str) or not CALL_ID_PATTERN.fullmatch(call_id)
    ):
        raise ApiError(400, "bad_request", f"call_id must match {CALL_ID_PATTERN.pattern}")
    metadata = body.get("metadata", {})
    if not isinstance(metadata, dict) or len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        raise ApiError(
            400, "bad_request", f"metadata must be a JSON object under {MAX_METADATA_BYTES} bytes"
        )
    # The call's own webhook receiver travels with its metadata into the recording's manifest.
    metadata = with_status_callback(metadata, body.get("status_callback"))
    retention_days = _retention_days(body.get("retention_days"))
    codec = parse_codec(body.get("caller_codec", "opus"), "caller_codec")
    agent_url = body.get("agent_url")
    audio_format = _agent_format(body.get("agent_format"))
    settings = request.app[SETTINGS]
    echo_delay_s: float | None = None
    if isinstance(agent_url, str) and is_builtin_agent_url(agent_url):
        echo_delay_s = parse_echo_delay_s(agent_url, settings.echo_agent_delay_s)
    elif agent_url is not None and (
        not isinstance(agent_url, str) or not agent_url.startswith(("ws://", "wss://"))
    ):
        raise ApiError(
            400, "bad_request", "agent_url must be a ws:// or wss:// URL or builtin:echo"
        )
    hub = request.app[HUB]
    session = hub.create(
        call_id, caller_codec=codec, metadata=metadata, retention_days=retention_days
    )
    if isinstance(agent_url, str):
        session.record.agent_dialled(agent_url)
    if echo_delay_s is not None:
        # Caller audio is decoded at the rate the caller's codec carries, so the echo loses nothing.
        rate_hz = 48000 if codec is Codec.OPUS else codec.clock_rate_hz
        echo = EchoAgent(
            session,
            call_id=session.call_id,
            sample_rate_hz=rate_hz,
            delay_s=echo_delay_s,
            clock=hub.clock,
        )
        session.attach_agent(echo)
    elif agent_url is not None:
        hub.spawn(
            _dial_agent(
                session,
                agent_url,
                audio_format=audio_format,
                client=request.app[HTTP_CLIENT],
                timeout_s=settings.agent_connect_timeout_s,
            )
        )
    # With public_url (several nodes) the links are absolute, on this node: the call lives here.
    base = public_base(request)
    location = f"{base}/v1/calls/{session.call_id}"
    return web.json_response(
        {
            **describe_session(session),
            "links": {
                "self": location,
                "whip": f"{base}/whip?call_id={session.call_id}",
                "rtp": f"{location}/rtp",
                "agent": f"{location}/agent",
                "recording": f"{base}/v1/recordings/{session.call_id}",
            },
            "whip_url": f"{absolute_base(request)}/whip?call_id={session.call_id}",
            "agent_ws_url": f"{websocket_base(request)}/v1/calls/{session.call_id}/agent",
        },
        status=201,
        headers={"Location": location},
    )


async def list_calls(request: web.Request) -> web.Response:
    """GET /v1/calls: live calls with per-leg stats."""
    hub = request.app[HUB]
    return web.json_response({"calls": [describe_session(s) for s in hub.sessions()]})


async def get_call(request: web.Request) -> web.Response:
    """GET /v1/calls/{id}: one live call."""
    return web.json_response(describe_session(request.app[HUB].get(request.match_info["call_id"])))


async def end_call(request: web.Request) -> web.Response:
    """DELETE /v1/calls/{id}: end both legs; the recording is finalized in the background."""
    call_id = request.match_info["call_id"]
    request.app[HUB].get(call_id).end(EndReason.API)
    return web.json_response(
        {"call_id": call_id, "status": "finalizing", "recording": f"/v1/recordings/{call_id}"},
        status=202,
    )


async def agent_socket(request: web.Request) -> web.StreamResponse:
    """GET /v1/calls/{id}/agent: the agent dials in (Twilio Media Streams messages)."""
    session = request.app[HUB].get(request.match_info["call_id"])
    if session.agent is not None or not session.leg_open(Channel.AGENT):
        raise CallStateError(f"call {session.call_id} already has an agent")
    audio_format = parse_audio_format_query(request.query)
    connection, ws = await accept(
        request, sink=session, call_id=session.call_id, audio_format=audio_format
    )
    # No await between accept and attach: no agent message can reach the session before it.
    session.attach_agent(connection)
    await connection.wait_closed()
    return ws


def add_routes(app: web.Application) -> None:
    """Register the calls routes."""
    app.router.add_post("/v1/calls", create_call)
    app.router.add_get("/v1/calls", list_calls)
    app.router.add_get("/v1/calls/{call_id}", get_call)
    app.router.add_delete("/v1/calls/{call_id}", end_call)
    app.router.add_get("/v1/calls/{call_id}/agent", agent_socket)
