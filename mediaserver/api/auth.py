"""Bearer-token authentication on everything but health checks; console sessions by cookie."""

import hmac
from urllib.parse import quote

from aiohttp import web

from mediaserver.api.console_session import ConsoleSessions, SessionCheck
from mediaserver.api.errors import Handler, error_response

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/demo", "/login", "/logout"})
# The console's scripts, styles and vendored libraries: no secrets, and the sign-in page needs them.
OPEN_PREFIXES = ("/console/",)


def build_auth_middleware(token: str, sessions: ConsoleSessions | None = None) -> Handler | object:
    """A middleware that requires `Authorization: Bearer <token>` or a console session cookie."""
    # No token configured: everything is open (the server refuses to listen off loopback then).
    expected = f"Bearer {token}".encode()

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
        given = request.headers.get("Authorization", "").encode()
        if hmac.compare_digest(given, expected):  # constant time: no timing oracle
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
