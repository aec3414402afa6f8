"""Bearer-token authentication and scopes on everything but health checks; console sessions."""

import time
from urllib.parse import quote

from aiohttp import web

from mediaserver.access.tokens import ANONYMOUS, Principal, Scope, TokenTable
from mediaserver.api.console_session import ConsoleSessions, SessionCheck
from mediaserver.api.errors import Handler, error_response
from mediaserver.api.route_scopes import OPEN, find_route_scope, route_template
from mediaserver.api.token_registry import TokenRegistry
from mediaserver.cluster.redirect_token import (
    QUERY_PARAMETER,
    check_redirect_token,
    parse_redirect_token,
)

# The identity a request acts as, set by the middleware for every request past it.
PRINCIPAL = web.RequestKey("principal", Principal)


def read_bearer_token(header: str) -> bytes | None:
    """The credentials of `Authorization: Bearer <token>`, or None if the header is not one."""
    # RFC 9110 §11.1: the auth scheme is case-insensitive; §11.4: one or more spaces follow it.
    # RFC 6750 §2.1: a bearer token is ASCII (token68), so any other byte cannot match.
    scheme, _, credentials = header.partition(" ")
    token = credentials.strip(" ")
    if scheme.lower() != "bearer" or not token or not token.isascii():
        return None
    return token.encode("ascii")


def build_auth_middleware(
    tokens: TokenRegistry, sessions: ConsoleSessions | None = None
) -> Handler | object:
    """A middleware that requires a bearer token or a console session holding the route's scope."""

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse requests without an accepted token or session, or without the route's scope."""
        required = find_route_scope(request.method, route_template(request))
        if required == OPEN or request.method == "OPTIONS":
            return await handler(request)
        table = tokens.table
        principal: Principal | None = ANONYMOUS if table.is_open else None
        if principal is None:
            given = read_bearer_token(request.headers.get("Authorization", ""))
            principal = None if given is None else table.authenticate(given)
        if principal is None and QUERY_PARAMETER in request.query:
            principal = _redirected_principal(request, table)  # another node's 307
        if principal is None and sessions is not None:
            check, principal = sessions.check(request)
            if check is SessionCheck.FOREIGN_ORIGIN:
                return error_response(
                    403, "forbidden", "a console session only works from the console's own pages"
                )
        if principal is None:
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
        assert not isinstance(required, str)
        request[PRINCIPAL] = principal  # refusals below are audited as this identity's too
        if not principal.allows(required):
            return _insufficient_scope(principal, required)
        return await handler(request)

    return auth_middleware


def _redirected_principal(request: web.Request, table: TokenTable) -> Principal | None:
    """The identity a valid redirect token for the call the request names acts as."""
    signed = request.query.get(QUERY_PARAMETER, "")
    call_id = request.match_info.get("call_id") or request.query.get("call_id")
    claim = parse_redirect_token(signed)
    entry = None if claim is None else table.find(claim.token_name)
    if call_id is None or entry is None:
        return None
    if not check_redirect_token(entry.digest, signed, call_id=call_id, now_s=time.time()):
        return None
    return entry.principal


def _insufficient_scope(principal: Principal, scope: Scope | None) -> web.Response:
    """403 naming the scope the token lacks (RFC 6750 §3.1 insufficient_scope)."""
    name = "" if scope is None else scope.value
    return error_response(
        403,
        "insufficient_scope",
        f"token {principal.name} lacks the scope {name} this request needs",
        {
            "WWW-Authenticate": (
                f'Bearer realm="mediaserver", error="insufficient_scope", scope="{name}"'
            )
        },
    )
