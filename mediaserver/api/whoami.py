"""GET /v1/whoami: the signed-in token's name and scopes (the console shows what they allow)."""

from aiohttp import web

from mediaserver.api.auth import PRINCIPAL


async def whoami(request: web.Request) -> web.Response:
    """The identity this request acts as."""
    principal = request[PRINCIPAL]
    return web.json_response({"name": principal.name, "scopes": principal.scope_names()})


def add_routes(app: web.Application) -> None:
    """Register the route."""
    app.router.add_get("/v1/whoami", whoami)
