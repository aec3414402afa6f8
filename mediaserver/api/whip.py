"""WHIP signalling (RFC 9725 conventions): an SDP offer in, an answer out, and a caller leg."""

from aiohttp import web

from mediaserver.api.body import read_text
from mediaserver.api.errors import ApiError
from mediaserver.api.keys import HUB, SETTINGS
from mediaserver.api.links import public_base
from mediaserver.errors import CallStateError
from mediaserver.recording.call import EndReason
from mediaserver.recording.channel import Channel, Codec
from mediaserver.settings import split_list
from mediaserver.transports.webrtc import WebRtcCallerTransport, parse_offered_audio

SDP = "application/sdp"
TRICKLE = "application/trickle-ice-sdpfrag"
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Link",
}


async def create_session(request: web.Request) -> web.Response:
    """POST /whip: the offer in, 201 with the answer and the session's Location out."""
    offer = await read_text(request, SDP, "SDP")
    parse_offered_audio(offer)  # a bad offer is refused before any call is set up for it
    hub = request.app[HUB]
    call_id = request.query.get("call_id")
    created = call_id is None
    if call_id is None:
        session = hub.create(caller_codec=Codec.OPUS, metadata={"caller": "webrtc"})
    else:
        session = hub.get(call_id)
        if session.caller is not None or not session.leg_open(Channel.CALLER):
            raise CallStateError(f"call {call_id} already has a caller")
        if session.caller_codec is not Codec.OPUS:
            raise CallStateError(f"call {call_id} expects {session.caller_codec.value} over RTP")
    settings = request.app[SETTINGS]
    try:
        transport, answer = await WebRtcCallerTransport.answer(
            offer,
            sink=session,
            ice_servers=split_list(settings.ice_servers),
            ice_host_addresses=split_list(settings.ice_host_addresses),
            clock=hub.clock,
        )
    except BaseException:
        if created:
            hub.discard(session)  # nothing stays allocated for a refused offer
        raise
    session.attach_caller(transport)
    location = f"{public_base(request)}/whip/{session.call_id}"  # absolute with public_url
    return web.Response(
        status=201,
        text=answer,
        content_type=SDP,
        headers={**CORS_HEADERS, "Location": location, "ETag": f'"{session.call_id}"'},
    )


def _transport(request: web.Request) -> WebRtcCallerTransport:
    """The WebRTC leg of the call named in the URL."""
    session = request.app[HUB].get(request.match_info["call_id"])
    if not isinstance(session.caller, WebRtcCallerTransport):
        raise ApiError(404, "not_found", "this call has no WHIP session")
    return session.caller


async def patch_session(request: web.Request) -> web.Response:
    """PATCH /whip/{id}: trickled ICE candidates (RFC 8840 SDP fragment)."""
    fragment = await read_text(request, TRICKLE, "SDP fragment")
    transport = _transport(request)
    await transport.add_ice_candidates(fragment)
    return web.Response(status=204, headers=CORS_HEADERS)


async def delete_session(request: web.Request) -> web.Response:
    """DELETE /whip/{id}: the caller hangs up."""
    session = request.app[HUB].get(request.match_info["call_id"])
    session.end(EndReason.WHIP_DELETE)
    return web.Response(status=200, headers=CORS_HEADERS)


async def preflight(request: web.Request) -> web.Response:
    """CORS preflight for browsers on other origins."""
    return web.Response(status=204, headers={**CORS_HEADERS, "Accept-Post": SDP})


def add_routes(app: web.Application) -> None:
    """Register the WHIP routes."""
    app.router.add_post("/whip", create_session)
    app.router.add_route("OPTIONS", "/whip", preflight)
    app.router.add_patch("/whip/{call_id}", patch_session)
    app.router.add_delete("/whip/{call_id}", delete_session)
    app.router.add_route("OPTIONS", "/whip/{call_id}", preflight)
