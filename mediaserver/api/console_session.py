"""Console sign-in: an API token traded once for a signed, expiring, HttpOnly session cookie."""

# The value is "<expiry, unix s>.<random nonce>.<token name>.<HMAC-SHA256 hex>". The signature
# also covers the SHA-256 of the token's secret, which the cookie does not carry: revoking the
# token (or giving its name a new secret) ends its sessions, and a session acts with the token's
# scopes as the tokens file says now. The signing key is derived from the api_token when there is
# one (every node of a cluster then accepts it, and changing the token signs every console out);
# with only a tokens file it is random per process, so sessions end when the server restarts.
# Nothing is stored on the server. The cookie is HttpOnly (scripts never see it), SameSite=Strict
# (other sites' requests do not carry it) and Secure behind HTTPS. Requests that change something
# must also come from the console's own origin (the Origin header), so a cookie alone never
# authorizes a cross-site form post.

import hashlib
import hmac
import secrets
from collections.abc import Callable
from enum import Enum
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import structlog
from aiohttp import web

from mediaserver.access.sign_in_limiter import SignInLimiter
from mediaserver.access.tokens import TOKEN_NAME_PATTERN, Principal, TokenTable
from mediaserver.api.body import check_content_type, decode_utf8, read_json_object
from mediaserver.api.errors import ApiError
from mediaserver.clock import Clock

log = structlog.get_logger(__name__)

COOKIE_NAME = "mediaserver_session"
SAFE_METHODS = frozenset({"GET", "HEAD"})
_KEY_CONTEXT = b"mediaserver console session v1"
_FORM = "application/x-www-form-urlencoded"
_MAX_TOKEN_CHARS = 4096
WRONG_TOKEN_MESSAGE = "That is not this server's API token."


class SessionCheck(Enum):
    """What a request's session cookie says."""

    NONE = "none"  # no cookie, or one that is forged, expired or of a token no longer accepted
    VALID = "valid"
    FOREIGN_ORIGIN = "foreign_origin"  # a valid cookie on a cross-site request that changes state


def derive_session_key(secret: str) -> bytes:
    """The signing key of session cookies: the secret itself never leaves the server."""
    return hmac.new(secret.encode(), _KEY_CONTEXT, hashlib.sha256).digest()


def build_session_value(
    key: bytes, *, expires_at_s: int, nonce: str, name: str, token_digest: bytes
) -> str:
    """A signed cookie value for token `name` valid until `expires_at_s` (unix seconds)."""
    payload = f"{expires_at_s}.{nonce}.{name}"
    signed = f"{payload}.{token_digest.hex()}".encode()
    return f"{payload}.{hmac.new(key, signed, hashlib.sha256).hexdigest()}"


def check_session_value(
    key: bytes, value: str, *, now_s: float, tokens: TokenTable
) -> Principal | None:
    """The identity of a cookie value this key signed for a token accepted now, unexpired."""
    parts = value.split(".")
    if len(parts) != 4:
        return None
    expires_text, nonce, name, _ = parts
    if not (expires_text.isascii() and expires_text.isdigit() and nonce):
        return None
    if not TOKEN_NAME_PATTERN.fullmatch(name):
        return None
    entry = tokens.find(name)
    if entry is None:
        return None
    expected = build_session_value(
        key, expires_at_s=int(expires_text), nonce=nonce, name=name, token_digest=entry.digest
    )
    if not hmac.compare_digest(value.encode(), expected.encode()):  # constant time
        return None
    return entry.principal if now_s < int(expires_text) else None


def is_same_origin(origin: str | None, host: str | None) -> bool:
    """Whether an Origin header names the host the request was sent to."""
    if not origin or not host or origin == "null":
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def is_secure(request: web.Request) -> bool:
    """Whether the browser reached us over HTTPS (directly or through a TLS-terminating proxy)."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


class ConsoleSessions:
    """Issues and checks console session cookies for the tokens the server accepts."""

    def __init__(
        self,
        tokens: Callable[[], TokenTable],
        *,
        secret: str,
        ttl_s: float,
        clock: Clock,
        limiter: SignInLimiter,
    ) -> None:
        """Sign with a key derived from `secret` (random if empty); sessions last `ttl_s`."""
        self._tokens = tokens
        self.ttl_s = ttl_s
        self.clock = clock
        self.limiter = limiter  # wrong tokens per client address
        self._key = derive_session_key(secret or secrets.token_urlsafe(32))

    @property
    def is_open(self) -> bool:
        """No token is configured: the console needs no sign-in."""
        return self._tokens().is_open

    def check(self, request: web.Request) -> tuple[SessionCheck, Principal | None]:
        """What the request's cookie allows, and as whom; WebSockets never ride on a cookie."""
        value = request.cookies.get(COOKIE_NAME)
        if value is None or request.headers.get("Upgrade", "").lower() == "websocket":
            return SessionCheck.NONE, None
        principal = check_session_value(
            self._key, value, now_s=self.clock.wall_ns() / 1e9, tokens=self._tokens()
        )
        if principal is None:
            return SessionCheck.NONE, None
        if request.method in SAFE_METHODS:
            return SessionCheck.VALID, principal
        if is_same_origin(request.headers.get("Origin"), request.host):
            return SessionCheck.VALID, principal
        return SessionCheck.FOREIGN_ORIGIN, None

    def authenticate(self, given: str) -> Principal | None:
        """The identity of a token typed into the sign-in page (constant time)."""
        return self._tokens().authenticate(given)

    def set_cookie(
        self, request: web.Request, response: web.StreamResponse, principal: Principal
    ) -> None:
        """Put a fresh session cookie for `principal` on the response."""
        entry = self._tokens().find(principal.name)
        if entry is None:
            return
        expires_at_s = int(self.clock.wall_ns() / 1e9 + self.ttl_s)
        value = build_session_value(
            self._key,
            expires_at_s=expires_at_s,
            nonce=secrets.token_urlsafe(16),
            name=entry.name,
            token_digest=entry.digest,
        )
        response.set_cookie(
            COOKIE_NAME,
            value,
            max_age=int(self.ttl_s),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=is_secure(request),
        )


CONSOLE_SESSIONS = web.AppKey("console_sessions", ConsoleSessions)


async def login(request: web.Request) -> web.Response:
    """POST /login {token}: a session cookie for the right token; JSON, or a form with redirects."""
    if not is_same_origin(request.headers.get("Origin"), request.host):
        raise ApiError(403, "forbidden", "sign in from the console's own page")
    sessions = request.app[CONSOLE_SESSIONS]
    is_form = request.content_type == _FORM
    token, next_path = await _read_login(request, is_form=is_form)
    client = request.remote or "unknown"
    now_s = sessions.clock.monotonic_ns() / 1e9
    if not sessions.is_open and (wait_s := sessions.limiter.retry_after_s(client, now_s)):
        log.warning("console.sign_in_throttled", remote=client, retry_after_s=wait_s)
        raise ApiError(
            429,
            "too_many_requests",
            f"Too many wrong tokens from this address: try again in {wait_s} s.",
            headers={"Retry-After": str(wait_s)},
        )
    principal = None if sessions.is_open else sessions.authenticate(token)
    if not sessions.is_open and principal is None:
        sessions.limiter.record_failure(client, now_s)
        log.warning("console.sign_in_refused", remote=client)
        if is_form:
            query = urlencode({"error": "wrong_token", "next": next_path})
            return web.Response(status=303, headers={"Location": f"/login?{query}"})
        raise ApiError(401, "unauthorized", WRONG_TOKEN_MESSAGE)
    response = (
        web.Response(status=303, headers={"Location": next_path})
        if is_form
        else web.json_response({"next": next_path})
    )
    if principal is not None:
        sessions.limiter.record_success(client)
        sessions.set_cookie(request, response, principal)
    log.info("console.signed_in", remote=request.remote, token=principal and principal.name)
    return response


async def logout(request: web.Request) -> web.Response:
    """POST /logout: forget the session cookie."""
    if not is_same_origin(request.headers.get("Origin"), request.host):
        raise ApiError(403, "forbidden", "sign out from the console's own page")
    response = web.Response(status=204)
    response.del_cookie(COOKIE_NAME, path="/")
    return response


def safe_next_path(value: str | None) -> str:
    """A path on this server to go to after signing in (never another site)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if not (value.isascii() and value.isprintable()) or " " in value:
        return "/"  # it goes into a Location header: no control characters, no spaces
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


async def _read_login(request: web.Request, *, is_form: bool) -> tuple[str, str]:
    """The token and where to go next, from a form or a JSON body (clear 4xx otherwise)."""
    fields: dict[str, Any]
    if is_form:
        check_content_type(request, _FORM)
        text = decode_utf8(await request.read(), "form")
        fields = dict(parse_qsl(text, keep_blank_values=True))
    elif request.content_type == "application/json":
        fields = await read_json_object(request)
    else:
        raise ApiError(415, "unsupported_media_type", f"send application/json or {_FORM}")
    token = fields.get("token")
    if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
        raise ApiError(400, "bad_request", "field token must be the API token")
    next_value = fields.get("next")
    return token, safe_next_path(next_value if isinstance(next_value, str) else None)


def add_routes(app: web.Application) -> None:
    """Register sign-in and sign-out."""
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
