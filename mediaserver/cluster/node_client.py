"""NodeClient: a node's requests to the others: forwarded new calls, call lists, agent sockets."""

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict

from mediaserver.cluster.node_record import NodeRecord
from mediaserver.errors import CallStateError, ClusterUnavailableError, UnknownCallError
from mediaserver.transports.agent import check_websocket_handshake

log = structlog.get_logger(__name__)

# The node that placed a call on another sends this: the receiver creates it, never forwards it.
PLACED_BY_HEADER = "X-Mediaserver-Placed-By"
# ...and the node that took it answers with the `updated_at_ms` of its first record counting it.
RECORDED_AT_HEADER = "X-Mediaserver-Recorded-At"
# What a forwarded request carries over from the client's: its credentials and its body's type.
FORWARDED_REQUEST_HEADERS = ("Authorization", "Content-Type", "Cookie", "Origin", "Accept")
# What a relayed response leaves out: hop-by-hop headers and those aiohttp sets itself.
DROPPED_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "date",
        "server",
    }
)
CONNECT_TIMEOUT_S = 2.0
FORWARD_TIMEOUT_S = 30.0  # a WHIP offer is answered after ICE gathering
LIST_TIMEOUT_S = 3.0


def websocket_url(http_url: str) -> str:
    """The ws:// or wss:// form of an http:// or https:// URL."""
    return "ws" + http_url.removeprefix("http")


def pick_headers(headers: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    """The headers among `names` that are present."""
    return {name: headers[name] for name in names if name in headers}


class NodeClient:
    """HTTP and WebSocket requests from this node to the others, at their public URLs."""

    def __init__(self, session: aiohttp.ClientSession, *, node_id: str) -> None:
        """Use `session`; requests say they come from `node_id`."""
        self._session = session
        self._node_id = node_id

    async def forward(
        self, node: NodeRecord, request: web.Request, body: bytes
    ) -> web.Response | None:
        """Create the call on `node` instead; its answer, or None if it cannot take the call."""
        headers = pick_headers(request.headers, FORWARDED_REQUEST_HEADERS)
        headers[PLACED_BY_HEADER] = self._node_id
        url = node.public_url.rstrip("/") + request.path_qs
        timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        try:
            async with self._session.request(
                request.method,
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=timeout,
            ) as response:
                if response.status == 503:  # full or draining since it last published
                    log.info("cluster.forward_refused", node_id=node.node_id)
                    return None
                payload = await response.read()
                relayed = CIMultiDict(
                    (k, v)
                    for k, v in response.headers.items()
                    if k.lower() not in DROPPED_RESPONSE_HEADERS
                )
                return web.Response(status=response.status, body=payload, headers=relayed)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("cluster.forward_failed", node_id=node.node_id, url=url, error=repr(exc))
            return None

    async def list_calls(self, node: NodeRecord, headers: Mapping[str, str]) -> list[Any]:
        """The live calls of `node`; ClusterUnavailableError if it does not answer."""
        url = node.public_url.rstrip("/") + "/v1/calls?scope=node"
        timeout = aiohttp.ClientTimeout(total=LIST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        try:
            async with self._session.get(
                url, headers=pick_headers(headers, ("Authorization", "Cookie")), timeout=timeout
            ) as response:
                if response.status != 200:
                    raise ClusterUnavailableError(f"node {node.node_id} answered {response.status}")
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ClusterUnavailableError(f"node {node.node_id} did not answer: {exc!r}") from None
        calls = body.get("calls") if isinstance(body, dict) else None
        return calls if isinstance(calls, list) else []

    async def proxy_websocket(
        self, node: NodeRecord, request: web.Request
    ) -> web.WebSocketResponse:
        """Relay a WebSocket to the same path on `node`, frames and close codes both ways."""
        check_websocket_handshake(request)  # before asking the owner to take it
        url = websocket_url(node.public_url.rstrip("/")) + request.path_qs
        headers = pick_headers(request.headers, ("Authorization", "Cookie"))
        try:
            upstream = await self._session.ws_connect(
                url, headers=headers, timeout=aiohttp.ClientWSTimeout(ws_close=5.0)
            )
        except aiohttp.WSServerHandshakeError as exc:
            # The owner refused (404 ended meanwhile, 409 already has an agent): say so as it did.
            raise _refusal(node, exc) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ClusterUnavailableError(
                f"node {node.node_id}, which holds this call, cannot be reached: {exc!r}"
            ) from None
        downstream = web.WebSocketResponse(autoping=True, heartbeat=None)
        await downstream.prepare(request)
        log.info("cluster.websocket_proxied", node_id=node.node_id, path=request.path)
        await _relay(downstream, upstream)
        return downstream


def _refusal(node: NodeRecord, exc: aiohttp.WSServerHandshakeError) -> Exception:
    """The owner's handshake refusal as the same kind of error here."""
    message = f"node {node.node_id} refused the agent socket ({exc.status})"
    if exc.status == 404:
        return UnknownCallError(message)
    if exc.status == 409:
        return CallStateError(message)
    return ClusterUnavailableError(message)


Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _copy(source: Socket, target: Socket) -> tuple[int, str]:
    """Copy frames from one socket to the other until `source` closes: its close code, reason."""
    while True:
        message = await source.receive()
        if message.type is aiohttp.WSMsgType.TEXT:
            await target.send_str(message.data)
        elif message.type is aiohttp.WSMsgType.BINARY:
            await target.send_bytes(message.data)
        elif message.type is aiohttp.WSMsgType.CLOSE:
            return int(message.data or 1000), str(message.extra or "")
        else:  # CLOSING, CLOSED, ERROR
            return int(source.close_code or 1006), ""


async def _relay(
    downstream: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
) -> None:
    """Copy frames both ways until one side closes; close the other with the same code."""
    inbound = asyncio.create_task(_copy(downstream, upstream))
    outbound = asyncio.create_task(_copy(upstream, downstream))
    try:
        done, _ = await asyncio.wait({inbound, outbound}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (inbound, outbound):
            task.cancel()
        await asyncio.gather(inbound, outbound, return_exceptions=True)
    finished = done.pop()
    code, reason = (1011, "") if finished.cancelled() or finished.exception() else finished.result()
    code = code if code not in (1005, 1006) else 1000  # reserved: never sent in a close frame
    with contextlib.suppress(ConnectionError, RuntimeError):
        if finished is outbound:
            await downstream.close(code=code, message=reason.encode())
            await upstream.close()
        else:
            await upstream.close(code=code, message=reason.encode())
            await downstream.close()
