"""GcsStore: an ObjectStore on a Google Cloud Storage bucket, with verified uploads and retries."""

# Every blocking client call runs in a thread (`asyncio.to_thread`); retries happen here, on the
# event loop, with exponential backoff and full jitter up to a deadline, so they can be cancelled
# and counted. The client's own retries are switched off (`retry=None`) so that one policy governs.
# A failed upload is retried from the start: an emulator restart (or an expired session) would
# lose a resumable session anyway, and the local copy is kept until an upload is confirmed.
# Cancelling a call stops its retries at once; a request already running in a thread finishes
# in the background (threads cannot be interrupted) within `request_timeout_s`.
#
# Configuration follows the seed: the bucket name comes from AUDIO_STORAGE_PATH (read by the
# settings), credentials from GOOGLE_APPLICATION_CREDENTIALS (read by google-auth itself), and when
# STORAGE_EMULATOR_HOST is set the client talks anonymously to that endpoint as project "test".
#
# Behaviour of gcp-storage-emulator (2026.7.19) that differs from GCS, found while testing:
# - it ignores `if_generation_match` preconditions (an upload with `if_generation_match=0` over
#   an existing object succeeds), so nothing here relies on them;
# - a ranged read starting past the end answers 206 with no body instead of 416;
# - it does not check signed-URL signatures (it serves `/{bucket}/{key}` to anyone);
# - `--in-memory` state vanishes when it stops: after a restart the bucket must be created again
#   (`--default-bucket` or `create_bucket=True`).

import asyncio
import base64
import hashlib
import http.client
import os
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import google_crc32c
import requests
import structlog
import urllib3
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials, Signing
from google.cloud import storage
from google.resumable_media.common import DataCorruption, InvalidResponse

from mediaserver.errors import MediaServerError, ObjectNotFoundError, SettingsError, StorageError
from mediaserver.storage_backends.keys import validate_key, validate_prefix
from mediaserver.storage_backends.store import (
    DEFAULT_READ_CHUNK_BYTES,
    ObjectInfo,
    StoredObject,
    check_range,
)

_T = TypeVar("_T")

log = structlog.get_logger(__name__)

EMULATOR_PROJECT = "test"

# The client uploads files up to 8 MiB (its _MAX_MULTIPART_SIZE) in one multipart request and
# larger ones as resumable sessions sent in chunks of this size, which must be a multiple of
# 256 KiB (GCS JSON API, resumable uploads). 8 MiB bounds memory per upload.
DEFAULT_UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024
_UPLOAD_CHUNK_GRANULE_BYTES = 256 * 1024

# Statuses GCS documents as retryable: 408, 429 and 5xx ("Retry strategy", Cloud Storage docs).
_TRANSIENT_STATUS_CODES = frozenset(
    {
        http.client.REQUEST_TIMEOUT,
        http.client.TOO_MANY_REQUESTS,
        http.client.INTERNAL_SERVER_ERROR,
        http.client.BAD_GATEWAY,
        http.client.SERVICE_UNAVAILABLE,
        http.client.GATEWAY_TIMEOUT,
    }
)
_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused / reset at the socket level
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    http.client.IncompleteRead,
    http.client.BadStatusLine,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.TimeoutError,
    DataCorruption,  # a transfer whose checksum did not match: sending it again fixes it
)

# Bucket names: 3-63 characters of [a-z0-9._-], starting and ending with a letter or digit
# (Cloud Storage docs, "Bucket naming"). Dotted names up to 222 are not needed here.
_BUCKET_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, given up once `deadline_s` would be passed."""

    initial_backoff_s: float = 0.5
    max_backoff_s: float = 16.0
    multiplier: float = 2.0
    deadline_s: float = 120.0


def compute_backoff_s(policy: RetryPolicy, attempt: int, random_fraction: float) -> float:
    """Return the pause after failed attempt number `attempt` (0-based), scaled by [0, 1) jitter."""
    ceiling_s = min(policy.max_backoff_s, policy.initial_backoff_s * policy.multiplier**attempt)
    return ceiling_s * random_fraction


def is_transient_error(exc: BaseException) -> bool:
    """Return True if a failed storage call may succeed when simply tried again."""
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return exc.code in _TRANSIENT_STATUS_CODES
    if isinstance(exc, InvalidResponse):
        return getattr(exc.response, "status_code", None) in _TRANSIENT_STATUS_CODES
    if isinstance(exc, auth_exceptions.TransportError):
        # google-auth wraps the transport's exception (e.g. a refused token request).
        return any(is_transient_error(arg) for arg in exc.args if isinstance(arg, BaseException))
    return False


def build_gcs_client(environ: Mapping[str, str] | None = None) -> storage.Client:
    """Build a client: anonymous on STORAGE_EMULATOR_HOST if set, else default credentials."""
    # Blocking: default credentials may read GOOGLE_APPLICATION_CREDENTIALS or ask a metadata
    # server, so call it from a thread.
    env = os.environ if environ is None else environ
    emulator_host = env.get("STORAGE_EMULATOR_HOST")
    if emulator_host:
        return storage.Client(
            project=EMULATOR_PROJECT,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]  # unannotated
            client_options={"api_endpoint": emulator_host},
        )
    return storage.Client()


def validate_bucket_name(bucket_name: str) -> str:
    """Return `bucket_name` if GCS accepts it, else raise SettingsError."""
    if not _BUCKET_NAME_PATTERN.fullmatch(bucket_name) or ".." in bucket_name:
        raise SettingsError(
            f"GCS bucket name {bucket_name!r} is not 3-63 characters of [a-z0-9._-] "
            "starting and ending with a letter or digit"
        )
    return bucket_name


class GcsStore:
    """An ObjectStore on one GCS bucket."""

    def __init__(
        self,
        bucket_name: str,
        *,
        client: storage.Client,
        retry_policy: RetryPolicy | None = None,
        upload_chunk_bytes: int = DEFAULT_UPLOAD_CHUNK_BYTES,
        request_timeout_s: float = 60.0,
        owns_client: bool = False,
        clock: Callable[[], float] = time.monotonic,
        random_fraction: Callable[[], float] = random.random,
        kms_key_name: str | None = None,
    ) -> None:
        """Use `client` for `bucket_name`; close the client on close() only if `owns_client`."""
        if upload_chunk_bytes <= 0 or upload_chunk_bytes % _UPLOAD_CHUNK_GRANULE_BYTES:
            raise SettingsError(
                f"upload chunk size {upload_chunk_bytes} is not a positive multiple of 256 KiB"
            )
        self._bucket_name = validate_bucket_name(bucket_name)
        self._client = client
        self._bucket = client.bucket(bucket_name)
        self._retry_policy = retry_policy or RetryPolicy()
        self._upload_chunk_bytes = upload_chunk_bytes
        self._request_timeout_s = request_timeout_s
        self._owns_client = owns_client
        self._clock = clock
        self._random_fraction = random_fraction
        # Cloud KMS key objects are written with (customer-managed encryption, CMEK); None: the
        # bucket's default key. Reads need nothing: GCS decrypts for whoever may read.
        self.kms_key_name = kms_key_name
        self.retries_total = 0  # exported as a metric: transient failures that were retried

    @classmethod
    async def open(
        cls,
        bucket_name: str,
        *,
        environ: Mapping[str, str] | None = None,
        create_bucket: bool = False,
        retry_policy: RetryPolicy | None = None,
        request_timeout_s: float = 60.0,
        kms_key_name: str | None = None,
    ) -> "GcsStore":
        """Build a client from the environment (in a thread) and, if asked, create the bucket."""
        validate_bucket_name(bucket_name)
        client = await asyncio.to_thread(build_gcs_client, environ)
        store = cls(
            bucket_name,
            client=client,
            retry_policy=retry_policy,
            request_timeout_s=request_timeout_s,
            owns_client=True,
            kms_key_name=kms_key_name,
        )
        if create_bucket:
            try:
                await store.create_bucket_if_missing()
            except BaseException:
                await store.close()
                raise
        return store

    @property
    def bucket_name(self) -> str:
        """The bucket objects are stored in."""
        return self._bucket_name

    async def create_bucket_if_missing(self) -> None:
        """Create the bucket unless it exists (for emulators and first deployments)."""
        await self._call("create_bucket", "", self._create_bucket_if_missing)

    async def put_file(self, key: str, path: Path, *, content_type: str) -> StoredObject:
        """Upload `path` to `key`, then check the stored size and CRC32C against the file's."""
        validate_key(key)
        size_bytes, sha256_hex, crc32c_b64 = await asyncio.to_thread(_hash_file, path)
        upload = partial(self._upload, key, path, content_type, size_bytes, crc32c_b64)
        await self._call("put_file", key, upload)
        log.info("storage.gcs.stored", bucket=self._bucket_name, key=key, size_bytes=size_bytes)
        return StoredObject(
            key=key, size_bytes=size_bytes, sha256_hex=sha256_hex, server_crc32c=crc32c_b64
        )

    async def get_range(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Return bytes [start, end) of an object, clipped to its size."""
        validate_key(key)
        check_range(start, end)
        return await self._call("get_range", key, partial(self._download, key, start, end, None))

    async def iter_range(
        self,
        key: str,
        start: int = 0,
        end: int | None = None,
        *,
        chunk_bytes: int = DEFAULT_READ_CHUNK_BYTES,
    ) -> AsyncIterator[bytes]:
        """Yield bytes [start, end) of one generation of an object, one ranged request per chunk."""
        validate_key(key)
        check_range(start, end)
        blob = await self._call("stat", key, partial(self._reload, key))
        # Pinning the generation makes a concurrent overwrite fail the stream (404 on GCS)
        # instead of splicing two versions together.
        generation = blob.generation
        stop = blob.size if end is None else min(end, blob.size)
        position = start
        while position < stop:
            chunk_end = min(position + chunk_bytes, stop)
            chunk = await self._call(
                "get_range", key, partial(self._download, key, position, chunk_end, generation)
            )
            if not chunk:
                return
            position += len(chunk)
            yield chunk

    async def stat(self, key: str) -> ObjectInfo:
        """Return an object's size, update time and content type."""
        validate_key(key)
        blob = await self._call("stat", key, partial(self._reload, key))
        return _build_info(blob)

    async def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        """Return every object whose key starts with `prefix`, sorted by key."""
        validate_prefix(prefix)
        blobs = await self._call("list_objects", prefix, partial(self._list_blobs, prefix))
        return sorted((_build_info(blob) for blob in blobs), key=lambda info: info.key)

    async def delete(self, key: str) -> None:
        """Delete an object; a missing key raises ObjectNotFoundError."""
        # If a delete succeeds but its response is lost, the retry finds no object and raises
        # ObjectNotFoundError: callers deleting to clean up may treat that as done.
        validate_key(key)
        await self._call("delete", key, partial(self._delete, key))

    async def signed_url(self, key: str, *, expires_s: int) -> str | None:
        """Return a V4 signed GET URL, or None when the credentials cannot sign (anonymous)."""
        # Emulator clients use anonymous credentials, so they get None and the HTTP API streams
        # the object itself. The signature is computed locally from a service-account key.
        validate_key(key)
        if expires_s <= 0:
            raise ValueError(f"signed URL lifetime {expires_s} s is not positive")
        # storage.Client has no public accessor for its credentials; _credentials is the
        # attribute google-cloud-core sets in its constructor.
        if not isinstance(self._client._credentials, Signing):
            return None
        url: str = await asyncio.to_thread(
            self._bucket.blob(key).generate_signed_url,
            version="v4",
            expiration=timedelta(seconds=expires_s),
            method="GET",
        )
        return url

    async def close(self) -> None:
        """Close the client's HTTP session if this store created the client."""
        if self._owns_client:
            await asyncio.to_thread(self._client.close)

    # GCS-only, for mirroring retention into the bucket (mediaserver/lifecycle/gcs_mirror.py).

    async def read_lifecycle_rules(self) -> list[dict[str, Any]]:
        """The bucket's Object Lifecycle Management rules."""
        return await self._call("lifecycle", "", self._read_lifecycle_rules)

    async def write_lifecycle_rules(self, rules: list[dict[str, Any]]) -> None:
        """Replace the bucket's lifecycle rules."""
        await self._call("lifecycle", "", partial(self._write_lifecycle_rules, rules))

    async def set_custom_time(self, key: str, when: datetime) -> None:
        """Set an object's Custom-Time (GCS only ever moves it later: an earlier one fails)."""
        validate_key(key)
        await self._call("patch", key, partial(self._patch_custom_time, key, when))

    async def read_custom_time(self, key: str) -> datetime | None:
        """An object's Custom-Time, if it has one."""
        blob = await self._call("stat", key, partial(self._reload, key))
        custom_time: datetime | None = blob.custom_time
        return custom_time

    def _read_lifecycle_rules(self) -> list[dict[str, Any]]:
        """Fetch the bucket and its rules."""
        bucket = self._client.get_bucket(
            self._bucket_name, retry=None, timeout=self._request_timeout_s
        )
        return [dict(rule) for rule in bucket.lifecycle_rules]

    def _write_lifecycle_rules(self, rules: list[dict[str, Any]]) -> None:
        """Patch the bucket's lifecycle property."""
        bucket = self._client.bucket(self._bucket_name)
        bucket.lifecycle_rules = rules
        bucket.patch(retry=None, timeout=self._request_timeout_s)

    def _patch_custom_time(self, key: str, when: datetime) -> None:
        """Patch one object's customTime."""
        blob = self._bucket.blob(key)
        blob.custom_time = when
        blob.patch(retry=None, timeout=self._request_timeout_s)

    async def _call(self, operation: str, key: str, func: Callable[[], _T]) -> _T:
        """Run blocking `func` in a thread, retrying transient failures until the deadline."""
        policy = self._retry_policy
        started_s = self._clock()
        attempt = 0
        while True:
            try:
                return await asyncio.to_thread(func)
            except MediaServerError:
                raise
            except Exception as exc:
                if not is_transient_error(exc):
                    raise _translate_error(exc, operation, key, self._bucket_name) from exc
                backoff_s = compute_backoff_s(policy, attempt, self._random_fraction())
                elapsed_s = self._clock() - started_s
                if elapsed_s + backoff_s > policy.deadline_s:
                    raise StorageError(
                        f"GCS {operation} of {key!r} in bucket {self._bucket_name!r} failed "
                        f"after {attempt + 1} attempts in {elapsed_s:.1f} s: {exc}"
                    ) from exc
                self.retries_total += 1
                log.warning(
                    "storage.gcs.retry",
                    operation=operation,
                    key=key,
                    attempt=attempt + 1,
                    backoff_s=round(backoff_s, 3),
                    error=type(exc).__name__,
                )
                await asyncio.sleep(backoff_s)
                attempt += 1

    def _create_bucket_if_missing(self) -> None:
        """Create the bucket; an existing one (409 Conflict) is fine."""
        if self._client.lookup_bucket(self._bucket_name, retry=None) is not None:
            return
        try:
            self._client.create_bucket(self._bucket_name, retry=None)
        except api_exceptions.Conflict:
            return

    def _upload(
        self, key: str, path: Path, content_type: str, size_bytes: int, crc32c_b64: str
    ) -> None:
        """Upload one file and check what the server says it stored."""
        blob = self._bucket.blob(
            key, chunk_size=self._upload_chunk_bytes, kms_key_name=self.kms_key_name
        )
        blob.upload_from_filename(
            str(path),
            content_type=content_type,
            checksum="crc32c",
            retry=None,
            timeout=self._request_timeout_s,
        )
        if blob.size != size_bytes or blob.crc32c != crc32c_b64:
            raise DataCorruption(  # type: ignore[no-untyped-call]  # unannotated library class
                None,
                f"GCS stored {key!r} as {blob.size} bytes crc32c {blob.crc32c}, "
                f"sent {size_bytes} bytes crc32c {crc32c_b64}",
            )

    def _download(self, key: str, start: int, end: int | None, generation: int | None) -> bytes:
        """Download bytes [start, end) (exclusive end) of an object."""
        if end is not None and end <= start:
            return b""
        blob = self._bucket.blob(key, generation=generation)
        try:
            data: bytes = blob.download_as_bytes(
                start=start,
                # GCS ranges (RFC 9110 section 14.1.2 byte ranges) include their last byte.
                end=None if end is None else end - 1,
                retry=None,
                timeout=self._request_timeout_s,
            )
        except api_exceptions.RequestRangeNotSatisfiable:
            return b""  # start is at or past the end: an empty range, as on local disk
        return data

    def _reload(self, key: str) -> Any:
        """Fetch an object's metadata (a Blob)."""
        blob = self._bucket.blob(key)
        blob.reload(retry=None, timeout=self._request_timeout_s)
        return blob

    def _list_blobs(self, prefix: str) -> list[Any]:
        """Fetch every page of a listing."""
        return list(
            self._client.list_blobs(
                self._bucket_name,
                prefix=prefix or None,
                retry=None,
                timeout=self._request_timeout_s,
            )
        )

    def _delete(self, key: str) -> None:
        """Delete one object."""
        self._bucket.blob(key).delete(retry=None, timeout=self._request_timeout_s)


def _hash_file(path: Path) -> tuple[int, str, str]:
    """Return size, SHA-256 hex and base64 CRC32C of a local file, read once."""
    # google_crc32c ships py.typed but leaves these methods unannotated.
    sha256 = hashlib.sha256()
    crc32c = google_crc32c.Checksum()  # type: ignore[no-untyped-call]
    size_bytes = 0
    try:
        with path.open("rb") as src:
            while chunk := src.read(DEFAULT_READ_CHUNK_BYTES):
                sha256.update(chunk)
                crc32c.update(chunk)  # type: ignore[no-untyped-call]
                size_bytes += len(chunk)
    except OSError as exc:
        raise StorageError(f"cannot read source file {path}: {exc}") from exc
    crc32c_b64 = base64.b64encode(crc32c.digest()).decode("ascii")  # type: ignore[no-untyped-call]
    return size_bytes, sha256.hexdigest(), crc32c_b64


def _translate_error(exc: Exception, operation: str, key: str, bucket_name: str) -> StorageError:
    """Map a permanent client error to our hierarchy."""
    if isinstance(exc, api_exceptions.NotFound):
        if operation in {"put_file", "list_objects", "create_bucket"}:
            return StorageError(f"GCS bucket {bucket_name!r} does not exist")
        return ObjectNotFoundError(f"no object {key!r} in GCS bucket {bucket_name!r}")
    return StorageError(f"GCS {operation} of {key!r} in bucket {bucket_name!r} failed: {exc}")


def _build_info(blob: Any) -> ObjectInfo:
    """Build ObjectInfo from a Blob's metadata."""
    updated_at = blob.updated if blob.updated is not None else datetime.fromtimestamp(0, UTC)
    return ObjectInfo(
        key=blob.name,
        size_bytes=int(blob.size),
        updated_at=updated_at,
        content_type=blob.content_type or "application/octet-stream",
    )
