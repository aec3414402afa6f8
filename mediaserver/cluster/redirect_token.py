"""Redirect tokens: a short-lived, call-scoped credential carried by a 307 to the call's node."""

# HTTP clients drop the Authorization header when a redirect leads to another origin (the Fetch
# standard, aiohttp, requests), and every node has its own origin. So a node that redirects a
# request for another node's call adds `access_token=<token>` (RFC 6750 §2.3) to the Location:
# "<expiry, unix s>.<call id>.<token name>.<HMAC-SHA256 hex>". It is signed with a key derived
# from the SHA-256 of the redirected token's secret, which every node's token table holds and
# the token does not carry: it opens that one call's routes, for a minute, with that token's
# scopes, and revoking the token revokes it. (Whoever holds the secret could sign one too, but
# gains nothing the secret does not already give.)

import hashlib
import hmac
from typing import NamedTuple

QUERY_PARAMETER = "access_token"  # RFC 6750 §2.3
_KEY_CONTEXT = b"mediaserver call redirect v1"


class RedirectClaim(NamedTuple):
    """What a redirect token says, before its signature is checked."""

    expires_at_s: int
    call_id: str
    token_name: str


def _sign(token_digest: bytes, payload: str) -> str:
    """The signature of a payload for the token whose secret has this SHA-256."""
    key = hmac.new(token_digest, _KEY_CONTEXT, hashlib.sha256).digest()
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def build_redirect_token(
    token_digest: bytes, *, call_id: str, token_name: str, expires_at_s: int
) -> str:
    """A token for `call_id`'s routes acting as `token_name`, valid until `expires_at_s`."""
    payload = f"{expires_at_s}.{call_id}.{token_name}"
    return f"{payload}.{_sign(token_digest, payload)}"


def parse_redirect_token(token: str) -> RedirectClaim | None:
    """The claim of a well-formed token (call ids and token names hold no dots), else None."""
    parts = token.split(".")
    if len(parts) != 4 or not (parts[0].isascii() and parts[0].isdigit()):
        return None
    return RedirectClaim(int(parts[0]), parts[1], parts[2])


def check_redirect_token(token_digest: bytes, token: str, *, call_id: str, now_s: float) -> bool:
    """Whether `token` was signed for this token's digest and `call_id`, and is unexpired."""
    claim = parse_redirect_token(token)
    if claim is None or claim.call_id != call_id or now_s >= claim.expires_at_s:
        return False
    expected = build_redirect_token(
        token_digest,
        call_id=claim.call_id,
        token_name=claim.token_name,
        expires_at_s=claim.expires_at_s,
    )
    return hmac.compare_digest(token.encode(), expected.encode())  # constant time
