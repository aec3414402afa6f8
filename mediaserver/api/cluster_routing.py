"""Routing among nodes: new calls to the least-loaded node, a call's requests to its node."""

# Installed only with redis_url. Each call lives on one node; any node takes the requests:
# - POST /v1/calls and POST /whip (a new call) are served here or forwarded to the least-loaded
#   node that takes calls; the answer carries absolute URLs on the node that holds the call;
# - a request for a call held elsewhere gets a 307 to that node (with a redirect token, since
#   clients drop Authorization on a redirect to another origin), except the agent's WebSocket,
#   which is relayed (WebSocket clients do not follow redirects);
# - GET /v1/calls lists the calls of every node (?scope=node: this node's only).

import asyncio
import time
from typing import Any

import structlog
from aiohttp import web
from yarl import URL

from mediaserver.api.auth import PRINCIPAL
from mediaserver.api.calls import describe_session
from mediaserver.api.errors import Handler
from mediaserver.api.keys import (
    HUB,
    LOAD,
    LOCAL_NODE,
    NODE_CLIENT,
    REGISTRY,
    RESERVATIONS,
    TOKENS,
)
from mediaserver.cluster.node_client import PLACED_BY_HEADER, RECORDED_AT_HEADER
from mediaserver.cluster.node_record import NodeRecord
from mediaserver.cluster.placement import call_load, rank_nodes
from mediaserver.cluster.redirect_token import QUERY_PARAMETER, build_redirect_token
from mediaserver.cluster.registry import now_ms
from mediaserver.errors import ClusterUnavailableError, OverloadedError

log = structlog.get_logger(__name__)

NEW_CALL_PATHS = frozenset({"/v1/calls", "/whip"})
# Routes of one live call, by their path template; /v1/recordings/{id} shows a live call too.
CALL_PATHS = frozenset(
    {
        "/v1/calls/{call_id}",
        "/v1/calls/{call_id}/rtp",
        "/v1/calls/{call_id}/recording",
        "/v1/calls/{call_id}/agent",
        "/whip/{call_id}",
        "/v1/recordings/{call_id}",
    }
)
REDIRECT_TOKEN_TTL_S = 60


def _template(request: web.Request) -> str | None:
    """The path template of the request's route."""
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical


def _call_id_of(request: web.Request, template: str | None) -> str | None:
    """The id of the live call a request is about, if it is about one."""
    if template in CALL_PATHS:
        return request.match_info.get("call_id")
    if template == "/whip" and request.method == "POST":
        return request.query.get("call_id")  # a WebRTC caller joining a call created earlier
    return None


@web.middleware
async def cluster_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Place new calls, route a call's requests to its node, list every node's calls."""
    template = _template(request)
    if template in NEW_CALL_PATHS and request.method == "POST" and "call_id" not in request.query:
        return await _place_new_call(request, handler)
    if template == "/v1/calls" and request.method == "GET" and request.query.get("scope") != "node":
        return await _list_every_call(request)
    call_id = _call_id_of(request, template)
    if call_id is None or request.method == "OPTIONS" or request.app[LOCAL_NODE].holds(call_id):
        return await handler(request)
    owner = await request.app[REGISTRY].owner_of(call_id)
    if owner is None or owner.node_id == request.app[LOCAL_NODE].node_id:
        return await handler(request)  # not live anywhere (or ended just now): the handler says
    if template == "/v1/calls/{call_id}/agent" and request.headers.get("Upgrade", "").lower() == (
        "websocket"
    ):
        return await request.app[NODE_CLIENT].proxy_websocket(owner, request)
    raise web.HTTPTemporaryRedirect(_redirect_location(request, owner, call_id))


def _redirect_location(request: web.Request, owner: NodeRecord, call_id: str) -> str:
    """The same request on the owner's address, with a redirect token for this call."""
    target = URL(owner.public_url.rstrip("/") + request.path).with_query(request.query)
    principal = request.get(PRINCIPAL)
    entry = None if principal is None else request.app[TOKENS].table.find(principal.name)
    if entry is not None:  # no token at all (loopback only): nothing to carry
        signed = build_redirect_token(
            entry.digest,
            call_id=call_id,
            token_name=entry.name,
            expires_at_s=int(time.time()) + REDIRECT_TOKEN_TTL_S,
        )
        target = target.update_query({QUERY_PARAMETER: signed})
    log.info("cluster.redirected", call_id=call_id, node_id=owner.node_id, path=request.path)
    return str(target)


async def _place_new_call(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve a new call here, or forward it to the node that should take it."""
    if PLACED_BY_HEADER in request.headers:
        return await _serve_here(request, handler)  # placed by another node: never bounced on
    local = request.app[LOCAL_NODE]
    reservations = request.app[RESERVATIONS]
    try:
        nodes = await request.app[REGISTRY].nodes()
    except ClusterUnavailableError as exc:
        log.warning("cluster.placed_locally", reason=str(exc))
        return await _serve_here(request, handler)
    # Counting the calls other requests are placing right now: a burst spreads too.
    per_call = call_load(request.app[LOAD].limits)
    for node in rank_nodes(reservations.apply(nodes, per_call, now_ms()), local.node_id):
        if node.node_id == local.node_id:
            try:
                with reservations.hold(node.node_id):  # until the hub holds the call
                    created = await handler(request)
            except OverloadedError:
                continue  # admitted by its record a moment ago, full now: try the next node
            return await _claim(request, created)
        with reservations.hold(node.node_id):
            body = await request.read()  # cached: the handler reads it again if served here
            response = await request.app[NODE_CLIENT].forward(node, request, body)
            if response is not None and response.status == 201:
                shown_from = response.headers.popall(RECORDED_AT_HEADER, [""])[0]
                reservations.landed(node.node_id, int(shown_from) if shown_from else now_ms())
        if response is not None:
            log.info("cluster.call_forwarded", node_id=node.node_id, path=request.path)
            return response
    # Nobody else took it: this node answers, with a 503 and Retry-After if it is full too.
    return await _serve_here(request, handler)


async def _serve_here(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Create the call on this node and map it to this node in the registry."""
    return await _claim(request, await handler(request))


async def _claim(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Map a call created here to this node in the registry; the creation's response."""
    location = response.headers.get("Location")
    if response.status == 201 and location:
        call_id = location.rstrip("/").rsplit("/", 1)[-1]
        recorded_at_ms = await request.app[REGISTRY].claim_call(call_id)
        if recorded_at_ms is not None and PLACED_BY_HEADER in request.headers:
            response.headers[RECORDED_AT_HEADER] = str(recorded_at_ms)
    return response


async def _list_every_call(request: web.Request) -> web.Response:
    """The live calls of every node, each with the id of its node."""
    local = request.app[LOCAL_NODE]
    nodes = await request.app[REGISTRY].nodes()
    others = [n for n in nodes if n.node_id != local.node_id]
    client = request.app[NODE_CLIENT]
    results = await asyncio.gather(
        *(client.list_calls(node, request.headers) for node in others), return_exceptions=True
    )
    calls: list[Any] = [
        {**describe_session(s), "node_id": local.node_id} for s in request.app[HUB].sessions()
    ]
    unreachable = []
    for node, result in zip(others, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("cluster.list_failed", node_id=node.node_id, error=str(result))
            unreachable.append(node.node_id)
            continue
        calls.extend({**call, "node_id": node.node_id} for call in result if isinstance(call, dict))
    return web.json_response({"calls": calls, "unreachable_nodes": unreachable})
