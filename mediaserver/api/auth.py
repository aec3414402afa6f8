"""Bearer-token authentication on everything but health checks."""

import hmac

from aiohttp import web

from mediaserver.api.errors import Handler, error_response

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/demo"})


def build_auth_middleware(token: str) -> Handler | object:
    """A middleware that requires `Authorization: Bearer <token>` (no token configured: open)."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse requests without the right bearer token."""
        if not token or request.path in OPEN_PATHS or request.method == "OPTIONS":
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):  # constant time: no timing oracle
            return error_response(
                401,
                "unauthorized",
                "missing or wrong bearer token",
                {"WWW-Authenticate": 'Bearer realm="mediaserver"'},
            )
        return await handler(request)

    return auth_middleware
