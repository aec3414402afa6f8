"""Redirect tokens: a short-lived, call-scoped credential carried by a 307 to the call's node."""

# HTTP clients drop the Authorization header when a redirect leads to another origin (the Fetch
# standard, aiohttp, requests), and every node has its own origin. So a node that redirects a
# request for another node's call adds `access_token=<token>` (RFC 6750 §2.3) to the Location:
# "<expiry, unix s>.<call id>.<HMAC-SHA256 hex>", signed with a key derived from the API token,
# which every node shares. It opens that one call's routes, for a minute, and nothing else.

import hashlib
import hmac

QUERY_PARAMETER = "access_token"  # RFC 6750 §2.3
_KEY_CONTEXT = b"mediaserver call redirect v1"


def derive_redirect_key(api_token: str) -> bytes:
    """The signing key of redirect tokens (the API token itself never travels)."""
    return hmac.new(api_token.encode(), _KEY_CONTEXT, hashlib.sha256).digest()


def build_redirect_token(key: bytes, call_id: str, *, expires_at_s: int) -> str:
    """A token for `call_id`'s routes, valid until `expires_at_s` (unix seconds)."""
    payload = f"{expires_at_s}.{call_id}"
    signature = hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()
    return f"{payload}.{signature}"


def check_redirect_token(key: bytes, token: str, call_id: str, *, now_s: float) -> bool:
    """Whether `token` was signed with `key` for `call_id` and has not expired."""
    expires_text, _, rest = token.partition(".")
    if not (expires_text.isascii() and expires_text.isdigit()):
        return False
    expected = build_redirect_token(key, call_id, expires_at_s=int(expires_text))
    if not hmac.compare_digest(token.encode(), expected.encode()):  # constant time
        return False
    return now_s < int(expires_text) and rest.startswith(call_id + ".")
