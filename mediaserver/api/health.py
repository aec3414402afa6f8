"""Liveness, readiness and metrics."""

from aiohttp import web

from mediaserver.api.keys import HUB, LOAD, METRICS


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready for new calls: not while draining for shutdown, nor while overloaded."""
    hub = request.app[HUB]
    if hub.draining:
        return web.json_response({"status": "draining"}, status=503)
    if not request.app[LOAD].ready(len(hub.sessions())):
        return web.json_response({"status": "overloaded"}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    body = request.app[METRICS].render()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


def add_routes(app: web.Application) -> None:
    """Register the health routes."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
