"""Plain-RTP caller legs described as telephony does (JSON or an SDP offer); pausing a recording."""

import secrets
from typing import Any

from aiohttp import web

from mediaserver.api.body import read_json_object, read_text
from mediaserver.api.calls import parse_codec
from mediaserver.api.errors import ApiError
from mediaserver.api.keys import HUB, PORTS, SETTINGS
from mediaserver.call_recording import PauseBehavior
from mediaserver.calls import CallHub
from mediaserver.errors import CallStateError, PortsExhaustedError, SdpNegotiationError
from mediaserver.recording.call import EndReason
from mediaserver.recording.channel import Channel, Codec
from mediaserver.rtp.offer_answer import Negotiation, build_answer, negotiate, read_audio_offer
from mediaserver.rtp.sdp import SessionDescription, build_sdp, parse_sdp
from mediaserver.settings import Settings
from mediaserver.transports.rtp import RtpCallerTransport

SDP = "application/sdp"
# RFC 5761 §4: with RTCP on the RTP port, payload types 64-95 read as RTCP packet types.
_RTCP_CONFLICT_PAYLOAD_TYPES = range(64, 96)
_UNSPECIFIED_ADDRESSES = frozenset({"0.0.0.0", "::"})  # RFC 3264 §8.4: put on hold


async def create_rtp_leg(request: web.Request) -> web.Response:
    """POST /v1/calls/{id}/rtp: a UDP port for the caller's plain RTP (JSON, or an SDP offer)."""
    hub: CallHub = request.app[HUB]
    session = hub.get(request.match_info["call_id"])
    offer: SessionDescription | None = None
    payload_type: int | None
    if request.content_type == SDP:
        offer = parse_sdp(await read_text(request, SDP, "SDP"))
        negotiation = _negotiate(offer, session.caller_codec)
        codec = session.caller_codec
        payload_type = negotiation.audio.payload_type
        event = negotiation.telephone_event
        dtmf_payload_type = None if event is None else event.payload_type
        remote = _offered_remote(negotiation)
    else:
        body = await read_json_object(request)
        unknown = set(body) - {"codec", "payload_type", "dtmf_payload_type"}
        if unknown:
            raise ApiError(400, "bad_request", f"unknown field(s): {', '.join(sorted(unknown))}")
        codec = parse_codec(body.get("codec", session.caller_codec.value), "codec")
        if codec is not session.caller_codec:
            raise ApiError(
                409,
                "conflict",
                f"call {session.call_id} was created for {session.caller_codec.value}",
            )
        payload_type = _payload_type(body.get("payload_type"), "payload_type")
        dtmf_payload_type = _payload_type(body.get("dtmf_payload_type"), "dtmf_payload_type")
        if dtmf_payload_type is not None and dtmf_payload_type == payload_type:
            raise ApiError(400, "bad_request", "dtmf_payload_type must differ from payload_type")
        remote = None
    if session.caller is not None or not session.leg_open(Channel.CALLER):
        raise CallStateError(f"call {session.call_id} already has a caller leg")
    settings = request.app[SETTINGS]
    transport = RtpCallerTransport(
        codec=codec,
        sink=session,
        host=settings.rtp_host,
        ports=request.app[PORTS],
        media_timeout_s=settings.rtp_media_timeout_s,
        offered_remote=remote,
        payload_type=payload_type,
        dtmf_payload_type=dtmf_payload_type,
        relatch_after_s=settings.rtp_relatch_after_s,
        relatch_any_source=settings.rtp_relatch_any_source,
        clock=hub.clock,
    )
    try:
        port = await transport.start()
    except PortsExhaustedError as exc:
        # The call cannot get its caller: release it rather than leave it alive with no legs.
        session.record.note(f"no caller leg could be set up: {exc}")
        session.end(EndReason.SETUP_FAILED)
        raise
    try:
        session.attach_caller(transport)
    except CallStateError:
        await transport.close()
        raise
    host = _public_host(settings)
    if offer is not None:
        answer = build_answer(
            offer,
            negotiation,
            address=host,
            port=port,
            session_id=secrets.randbits(62),
        )
        return web.Response(
            status=201,
            text=build_sdp(answer),
            content_type=SDP,
            headers={"Location": f"/v1/calls/{session.call_id}"},
        )
    return web.json_response(
        {
            "call_id": session.call_id,
            "host": host,
            "port": port,
            "codec": codec.value,
            "payload_type": transport.payload_type,
            "dtmf_payload_type": transport.dtmf_payload_type,
            "clock_rate_hz": codec.clock_rate_hz,
        },
        status=201,
    )


def _negotiate(offer: SessionDescription, codec: Codec) -> Negotiation:
    """Negotiate the call's codec; name the codec to create the call with if it is not offered."""
    audio = read_audio_offer(offer)
    try:
        return negotiate(audio, preferences=(codec.value,))
    except SdpNegotiationError:
        try:
            other = negotiate(audio).codec
        except SdpNegotiationError:
            raise  # nothing usable at all: the first message says what was offered
        raise SdpNegotiationError(
            f"SDP offer has no {codec.value}, which this call records; it offers {other}:"
            f" create the call with caller_codec {other}"
        ) from None


def _offered_remote(negotiation: Negotiation) -> tuple[str, int] | None:
    """Where the offer asks for our audio, until the caller's own packets say where it is."""
    address, port = negotiation.remote_address, negotiation.remote_port
    if address in _UNSPECIFIED_ADDRESSES or not 0 < port <= 0xFFFF:
        return None
    return address, port


def _payload_type(value: Any, field: str) -> int | None:
    """An RTP payload type from a request: 0-127, outside 64-95 (RTCP shares the port)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 127:
        raise ApiError(400, "bad_request", f"{field} must be an integer from 0 to 127")
    if value in _RTCP_CONFLICT_PAYLOAD_TYPES:
        raise ApiError(
            400,
            "bad_request",
            f"{field} {value} reads as RTCP on a port RTCP shares (RFC 5761 §4): use 96-127",
        )
    return value


def _public_host(settings: Settings) -> str:
    """The address callers send RTP to."""
    return settings.rtp_public_host or settings.rtp_host


async def set_recording(request: web.Request) -> web.Response:
    """POST /v1/calls/{id}/recording: pause or resume recording (both channels)."""
    session = request.app[HUB].get(request.match_info["call_id"])
    body = await read_json_object(request)
    unknown = set(body) - {"status", "pause_behavior"}
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field(s): {', '.join(sorted(unknown))}")
    status = body.get("status")
    if status not in ("paused", "recording"):
        raise ApiError(400, "bad_request", "status must be paused or recording")
    behavior_name = body.get("pause_behavior", PauseBehavior.SILENCE.value)
    try:
        behavior = PauseBehavior(behavior_name)
    except ValueError:
        raise ApiError(400, "bad_request", "pause_behavior must be silence or skip") from None
    if status == "paused":
        session.pause_recording(behavior)
    else:
        session.resume_recording()
    paused = session.recording.paused
    return web.json_response(
        {
            "call_id": session.call_id,
            "status": "recording" if paused is None else "paused",
            "pause_behavior": None if paused is None else paused.value,
        }
    )


def add_routes(app: web.Application) -> None:
    """Register the RTP leg and recording-control routes."""
    app.router.add_post("/v1/calls/{call_id}/rtp", create_rtp_leg)
    app.router.add_post("/v1/calls/{call_id}/recording", set_recording)
