"""Bearer-token authentication on everything but health checks; console sessions by cookie."""

import hmac
from urllib.parse import quote

from aiohttp import web

from mediaserver.api.console_session import ConsoleSessions, SessionCheck
from mediaserver.api.errors import Handler, error_response

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/demo", "/login", "/logout", "/v1/openapi.json"})
# The console's scripts, styles and vendored libraries: no secrets, and the sign-in page needs them.
OPEN_PREFIXES = ("/console/",)


def read_bearer_token(header: str) -> bytes | None:
    """The credentials of `Authorization: Bearer <token>`, or None if the header is not one."""
    # RFC 9110 §11.1: the auth scheme is case-insensitive; §11.4: one or more spaces follow it.
    # RFC 6750 §2.1: a bearer token is ASCII (token68), so any other byte cannot match.
    scheme, _, credentials = header.partition(" ")
    token = credentials.strip(" ")
    if scheme.lower() != "bearer" or not token or not token.isascii():
        return None
    return token.encode("ascii")


def build_auth_middleware(token: str, sessions: ConsoleSessions | None = None) -> Handler | object:
    """A middleware that requires `Authorization: Bearer <token>` or a console session cookie."""
    # No token configured: everything is open (the server refuses to listen off loopback then).
    expected = token.encode()

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse requests without the right bearer token or a valid session."""
        if (
            not token
            or request.path in OPEN_PATHS
            or request.path.startswith(OPEN_PREFIXES)
            or request.method == "OPTIONS"
        ):
            return await handler(request)
        given = read_bearer_token(request.headers.get("Authorization", ""))
        # constant time: no timing oracle
        if given is not None and hmac.compare_digest(given, expected):
            return await handler(request)
        check = SessionCheck.NONE if sessions is None else sessions.check(request)
        if check is SessionCheck.VALID:
            return await handler(request)
        if check is SessionCheck.FOREIGN_ORIGIN:
            return error_response(
                403, "forbidden", "a console session only works from the console's own pages"
            )
        if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
            # A browser opening a page: send it to sign in, and back here afterwards.
            location = "/login?next=" + quote(request.path_qs, safe="/")
            return web.Response(status=303, headers={"Location": location})
        return error_response(
            401,
            "unauthorized",
            "missing or wrong bearer token",
            {"WWW-Authenticate": 'Bearer realm="mediaserver"'},
        )

    return auth_middleware
