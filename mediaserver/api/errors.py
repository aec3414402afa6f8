"""Every error leaves the API as JSON: {"error": {"code", "message"}} with a fitting status."""

import errno
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from mediaserver.errors import (
    CallStateError,
    EncryptionError,
    EncryptionKeyUnavailableError,
    InvalidKeyError,
    MalformedSdpError,
    MediaServerError,
    ObjectNotFoundError,
    OverloadedError,
    SdpNegotiationError,
    SdpParseError,
    StorageError,
    UnknownCallError,
    UnsupportedSdpError,
    WebRtcSetupError,
)

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(web.HTTPException):
    """An HTTP error with a stable machine-readable code."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ):
        self.status_code = status
        super().__init__(headers=headers, reason=None)
        self.code = code
        self.message = message


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The JSON body every error has."""
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "unprocessable",
    503: "unavailable",
}


def _map_error(exc: MediaServerError) -> tuple[int, str]:
    """Status and code for one of our own errors."""
    if isinstance(exc, OverloadedError):
        return 503, "overloaded"
    if isinstance(exc, MalformedSdpError | SdpParseError):
        return 400, "malformed_sdp"  # RFC 9110 §15.5.1
    if isinstance(exc, UnsupportedSdpError | SdpNegotiationError):
        return 422, "unsupported_sdp"  # well-formed, asking for what this server does not do
    if isinstance(exc, WebRtcSetupError):
        return 500, "webrtc_setup_failed"  # our configuration, not the request
    if isinstance(exc, EncryptionKeyUnavailableError):
        return 409, "encryption_key_unavailable"  # this server stores but cannot play
    if isinstance(exc, EncryptionError):
        return 500, "encryption_error"  # a sealed object failed authentication: damaged
    if isinstance(exc, UnknownCallError | ObjectNotFoundError):
        return 404, "not_found"
    if isinstance(exc, CallStateError):
        return 409, "conflict"
    if isinstance(exc, InvalidKeyError | ValueError):
        return 400, "bad_request"
    if isinstance(exc, StorageError):
        return 503, "storage_unavailable"
    return 500, "internal_error"


def _extra_headers(exc: web.HTTPException) -> dict[str, str]:
    """An exception's own headers (Allow, Retry-After, ...) without its text body's headers."""
    return {
        key: value
        for key, value in exc.headers.items()
        if key.lower() not in ("content-type", "content-length")
    }


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn exceptions into JSON errors; log the unexpected ones."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status_code, exc.code, exc.message, _extra_headers(exc))
    except web.HTTPException as exc:
        if exc.status_code < 400:
            raise
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, exc.reason, _extra_headers(exc))
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            # A path too long for the file system (the console's static files) names no file.
            return error_response(404, "not_found", "no such file")
        return _internal_error(request)
    except MediaServerError as exc:
        status, code = _map_error(exc)
        headers = None
        if isinstance(exc, OverloadedError):
            headers = {"Retry-After": str(exc.retry_after_s)}
        elif status >= 500:
            log.error("api.error", path=request.path, error=str(exc))
        return error_response(status, code, str(exc), headers)
    except Exception:
        return _internal_error(request)


def _internal_error(request: web.Request) -> web.Response:
    """A bug, not bad input: logged with its traceback, answered without internals."""
    # The fuzz test in tests/test_api_fuzz.py hunts for these.
    log.exception("api.unhandled_error", method=request.method, path=request.path)
    return error_response(500, "internal_error", "the server failed to handle this request")
