"""Where a call's next requests go: this node's public URL, so that they reach the call's node."""

from aiohttp import web

from mediaserver.api.keys import SETTINGS


def public_base(request: web.Request) -> str:
    """The base of links in responses: public_url, or "" (links relative to the request)."""
    return request.app[SETTINGS].public_url.rstrip("/")


def absolute_base(request: web.Request) -> str:
    """The base of URLs that must be absolute: public_url, or the address the client used."""
    return public_base(request) or f"{request.scheme}://{request.host}"


def websocket_base(request: web.Request) -> str:
    """absolute_base with the WebSocket scheme (ws:// or wss://)."""
    return "ws" + absolute_base(request).removeprefix("http")
