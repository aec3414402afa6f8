"""Bearer-token authentication on everything but health checks."""

import hmac

from aiohttp import web

from mediaserver.api.errors import Handler, error_response

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/demo", "/v1/openapi.json"})


def read_bearer_token(header: str) -> bytes | None:
    """The credentials of `Authorization: Bearer <token>`, or None if the header is not one."""
    # RFC 9110 §11.1: the auth scheme is case-insensitive; §11.4: one or more spaces follow it.
    # RFC 6750 §2.1: a bearer token is ASCII (token68), so any other byte cannot match.
    scheme, _, credentials = header.partition(" ")
    token = credentials.strip(" ")
    if scheme.lower() != "bearer" or not token or not token.isascii():
        return None
    return token.encode("ascii")


def build_auth_middleware(token: str) -> Handler | object:
    """A middleware that requires `Authorization: Bearer <token>` (no token configured: open)."""
    expected = token.encode()

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse requests without the right bearer token."""
        if not token or request.path in OPEN_PATHS or request.method == "OPTIONS":
            return await handler(request)
        given = read_bearer_token(request.headers.get("Authorization", ""))
        # constant time: no timing oracle
        if given is None or not hmac.compare_digest(given, expected):
            return error_response(
                401,
                "unauthorized",
                "missing or wrong bearer token",
                {"WWW-Authenticate": 'Bearer realm="mediaserver"'},
            )
        return await handler(request)

    return auth_middleware
