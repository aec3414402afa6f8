"""Which scope each route needs: one table, checked against the registered routes by a test."""

# A route missing from the table needs `admin` (fail closed); tests/test_scopes.py fails when a
# registered route is missing, so a new route gets its scope chosen on purpose. OPEN routes need
# no token at all; None means any signed-in token. The OpenAPI document repeats each operation's
# scope as `x-required-scope`, and the same test keeps the two equal.

from aiohttp import web

from mediaserver.access.tokens import Scope

OPEN = "open"
RouteScope = Scope | None | str  # a Scope, None (any token) or OPEN

_READ = Scope.RECORDINGS_READ
_RECORDING = "/v1/recordings/{call_id}"

ROUTE_SCOPES: dict[tuple[str, str], RouteScope] = {
    ("GET", "/healthz"): OPEN,
    ("GET", "/readyz"): OPEN,
    ("GET", "/metrics"): None,  # counters only, no personal data: any token (a scraper's)
    ("GET", "/v1/openapi.json"): OPEN,
    ("GET", "/demo"): OPEN,
    ("GET", "/login"): OPEN,
    ("POST", "/login"): OPEN,
    ("POST", "/logout"): OPEN,
    ("GET", "/console/{filename}"): OPEN,
    ("OPTIONS", "/whip"): OPEN,  # CORS preflights carry no credentials (Fetch standard)
    ("OPTIONS", "/whip/{call_id}"): OPEN,
    # Console pages: any signed-in token; each page shows only what its token may do.
    ("GET", "/"): None,
    ("GET", "/recordings/{call_id}"): None,
    ("GET", "/live"): None,
    ("GET", "/try"): None,
    ("GET", "/v1/whoami"): None,
    # Calls: create, watch and end them, carry their legs.
    ("POST", "/v1/calls"): Scope.CALLS,
    ("GET", "/v1/calls"): Scope.CALLS,
    ("GET", "/v1/calls/{call_id}"): Scope.CALLS,
    ("DELETE", "/v1/calls/{call_id}"): Scope.CALLS,
    ("POST", "/v1/calls/{call_id}/rtp"): Scope.CALLS,
    ("POST", "/v1/calls/{call_id}/recording"): Scope.CALLS,  # pause and resume recording
    ("GET", "/v1/calls/{call_id}/agent"): Scope.CALLS,
    ("GET", "/v1/nodes"): Scope.CALLS,  # where calls can go: with several nodes
    ("POST", "/whip"): Scope.CALLS,
    ("PATCH", "/whip/{call_id}"): Scope.CALLS,
    ("DELETE", "/whip/{call_id}"): Scope.CALLS,
    # Recordings: reading (and deriving documents from what may be read), deleting.
    ("GET", "/v1/recordings"): _READ,
    ("GET", _RECORDING): _READ,
    ("GET", _RECORDING + "/audio"): _READ,
    ("GET", _RECORDING + "/peaks"): _READ,
    ("GET", _RECORDING + "/analysis"): _READ,
    ("POST", _RECORDING + "/analysis"): _READ,
    ("GET", _RECORDING + "/transcript"): _READ,
    ("POST", _RECORDING + "/transcript"): _READ,
    ("DELETE", _RECORDING): Scope.RECORDINGS_DELETE,
    # Administration: legal holds and the audit log.
    ("PUT", _RECORDING + "/hold"): Scope.ADMIN,
    ("DELETE", _RECORDING + "/hold"): Scope.ADMIN,
    ("GET", "/v1/audit"): Scope.ADMIN,
}


def route_template(request: web.Request) -> str | None:
    """The path template of the route a request matched, or None when none did."""
    match_info = request.match_info
    resource = match_info.route.resource
    if resource is None or match_info.http_exception is not None:
        return None
    canonical = resource.canonical
    if isinstance(resource, web.StaticResource):
        canonical += "/{filename}"
    return canonical


def find_route_scope(method: str, template: str | None) -> RouteScope:
    """What a request needs: OPEN, None (any token) or a scope; unknown routes need admin."""
    if template is None:
        return None  # matched nothing: any token, then the 404 (or 405) is answered
    if method == "HEAD":
        method = "GET"
    return ROUTE_SCOPES.get((method, template), Scope.ADMIN)
