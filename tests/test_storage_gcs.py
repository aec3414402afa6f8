# google-auth and google-api-core ship py.typed but leave these constructors unannotated.
# mypy: disable-error-code="no-untyped-call"
"""GcsStore against a real gcp-storage-emulator subprocess, plus its pure retry helpers."""

import asyncio
import base64
import hashlib
import random
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import google_crc32c
import pytest
import requests
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.oauth2 import service_account

from mediaserver.errors import (
    InvalidKeyError,
    ObjectNotFoundError,
    SettingsError,
    StorageError,
)
from mediaserver.storage_backends.gcs import (
    GcsStore,
    RetryPolicy,
    build_gcs_client,
    compute_backoff_s,
    is_transient_error,
    validate_bucket_name,
)

from gcs_emulator import GcsEmulator, find_free_port, write_service_account_key

MIB = 1024 * 1024
# Short retries keep failing tests fast; the deadline still allows several attempts.
FAST_RETRY = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, deadline_s=1.0)


def make_bytes(size_bytes: int, seed: int) -> bytes:
    """Return reproducible pseudo-random bytes."""
    return random.Random(seed).randbytes(size_bytes)


def crc32c_b64(data: bytes) -> str:
    """CRC32C as GCS reports it, computed by google_crc32c (the oracle)."""
    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()


def new_bucket_name() -> str:
    """Return a bucket name no other test uses."""
    return f"rec-{uuid.uuid4().hex[:16]}"


def emulator_client(emulator: GcsEmulator) -> storage.Client:
    """A plain google-cloud-storage client on the emulator, independent of GcsStore."""
    return storage.Client(
        project="test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": emulator.url},
    )


async def fetch_with_plain_client(
    emulator: GcsEmulator, bucket_name: str, key: str
) -> tuple[int, str, bytes]:
    """Return (size, crc32c, bytes) of an object as the plain client sees it (the oracle)."""

    def fetch() -> tuple[int, str, bytes]:
        blob = emulator_client(emulator).bucket(bucket_name).get_blob(key)
        return blob.size, blob.crc32c, blob.download_as_bytes()

    return await asyncio.to_thread(fetch)


@pytest.fixture(scope="module")
def emulator() -> Iterator[GcsEmulator]:
    """One emulator for the module; each test uses its own bucket."""
    with GcsEmulator(find_free_port()) as running:
        yield running


@pytest.fixture
async def store(emulator: GcsEmulator) -> AsyncIterator[GcsStore]:
    """A GcsStore on a fresh bucket of the running emulator."""
    client = build_gcs_client({"STORAGE_EMULATOR_HOST": emulator.url})
    gcs = GcsStore(new_bucket_name(), client=client, retry_policy=FAST_RETRY, owns_client=True)
    await gcs.create_bucket_if_missing()
    yield gcs
    await gcs.close()


async def test_large_file_goes_resumable_and_reads_back_by_range(
    store: GcsStore, emulator: GcsEmulator, tmp_path: Path
) -> None:
    """A 9 MiB file is uploaded as a resumable session, verified, and read back in ranges."""
    data = make_bytes(9 * MIB + 17, seed=1)
    source = tmp_path / "merged.opus"
    source.write_bytes(data)
    key = "recordings/2026/11/22/conversation_big_merged.opus"

    stored = await store.put_file(key, source, content_type="audio/ogg")

    assert stored.key == key
    assert stored.size_bytes == len(data)
    assert stored.sha256_hex == hashlib.sha256(data).hexdigest()
    assert stored.server_crc32c == crc32c_b64(data)
    assert f"/b/{store.bucket_name}/o?uploadType=resumable" in emulator.read_log()
    assert await fetch_with_plain_client(emulator, store.bucket_name, key) == (
        len(data),
        crc32c_b64(data),
        data,
    )

    assert await store.get_range(key, 0, 10) == data[:10]
    assert await store.get_range(key, 8 * MIB - 3, 8 * MIB + 3) == data[8 * MIB - 3 : 8 * MIB + 3]
    assert await store.get_range(key, len(data) - 5) == data[-5:]
    assert await store.get_range(key, len(data) - 5, len(data) + 100) == data[-5:]
    assert await store.get_range(key, 7, 7) == b""
    assert await store.get_range(key, len(data) + 10) == b""

    chunks = [chunk async for chunk in store.iter_range(key, 100, 3 * MIB + 1, chunk_bytes=MIB)]
    assert [len(chunk) for chunk in chunks] == [MIB, MIB, MIB - 99]
    assert b"".join(chunks) == data[100 : 3 * MIB + 1]


async def test_small_file_put_stat_list_delete(store: GcsStore, tmp_path: Path) -> None:
    """Objects are listed by prefix in key order, stat reports them, delete removes them."""
    keys = [
        "recordings/2026/11/23/conversation_b_left.opus",
        "recordings/2026/11/22/conversation_a_right.opus",
        "recordings/2026/11/22/conversation_a_left.opus",
        "other/conversation_c_left.opus",
    ]
    for index, key in enumerate(keys):
        source = tmp_path / f"{index}.opus"
        source.write_bytes(make_bytes(1000 + index, seed=index))
        await store.put_file(key, source, content_type="audio/ogg")

    listed = await store.list_objects("recordings/2026/11/2")
    assert [info.key for info in listed] == sorted(keys[:3])
    assert [info.size_bytes for info in listed] == [1002, 1001, 1000]
    assert [info.key for info in await store.list_objects()] == sorted(keys)
    assert await store.list_objects("recordings/2027/") == []

    info = await store.stat(keys[0])
    assert (info.size_bytes, info.content_type) == (1000, "audio/ogg")
    assert info.updated_at.utcoffset() is not None

    await store.delete(keys[0])
    with pytest.raises(ObjectNotFoundError):
        await store.stat(keys[0])
    with pytest.raises(ObjectNotFoundError):
        await store.delete(keys[0])
    with pytest.raises(ObjectNotFoundError):
        await store.get_range(keys[0])
    with pytest.raises(ObjectNotFoundError):
        _ = [chunk async for chunk in store.iter_range(keys[0])]
    assert [info.key for info in await store.list_objects("recordings/2026/11/23/")] == []


async def test_put_replaces_existing_object(store: GcsStore, tmp_path: Path) -> None:
    """Putting the same key again replaces the object's bytes."""
    source = tmp_path / "a.opus"
    source.write_bytes(b"first version")
    await store.put_file("a.opus", source, content_type="audio/ogg")
    source.write_bytes(b"second")
    stored = await store.put_file("a.opus", source, content_type="audio/ogg")
    assert stored.size_bytes == 6
    assert await store.get_range("a.opus") == b"second"


async def test_invalid_keys_are_rejected_before_any_request(
    store: GcsStore, tmp_path: Path
) -> None:
    """Unsafe keys raise InvalidKeyError on every method."""
    source = tmp_path / "x"
    source.write_bytes(b"x")
    for key in ["", "../x", "/etc/passwd", "a\\b", "a\x00b", "a//b"]:
        with pytest.raises(InvalidKeyError):
            await store.put_file(key, source, content_type="audio/ogg")
        with pytest.raises(InvalidKeyError):
            await store.stat(key)
        with pytest.raises(InvalidKeyError):
            await store.delete(key)


async def test_put_into_missing_bucket_fails_without_retrying(
    emulator: GcsEmulator, tmp_path: Path
) -> None:
    """A bucket that does not exist is a permanent StorageError, not a retried one."""
    source = tmp_path / "x.opus"
    source.write_bytes(b"x")
    client = build_gcs_client({"STORAGE_EMULATOR_HOST": emulator.url})
    gcs = GcsStore(new_bucket_name(), client=client, retry_policy=FAST_RETRY, owns_client=True)
    with pytest.raises(StorageError, match="does not exist"):
        await gcs.put_file("x.opus", source, content_type="audio/ogg")
    assert gcs.retries_total == 0
    await gcs.close()


async def test_missing_source_file_is_a_storage_error(store: GcsStore, tmp_path: Path) -> None:
    """Uploading a file that does not exist raises StorageError."""
    with pytest.raises(StorageError, match="source file"):
        await store.put_file("x.opus", tmp_path / "absent.opus", content_type="audio/ogg")


async def test_signed_url_is_none_with_anonymous_credentials(store: GcsStore) -> None:
    """Emulator (anonymous) clients cannot sign, so no URL is offered."""
    assert await store.signed_url("any.opus", expires_s=60) is None


async def test_signed_url_v4_serves_the_object(
    store: GcsStore, emulator: GcsEmulator, tmp_path: Path
) -> None:
    """With a service-account key the store returns a V4 signed URL that serves the bytes."""
    data = make_bytes(5000, seed=7)
    source = tmp_path / "s.opus"
    source.write_bytes(data)
    await store.put_file("s.opus", source, content_type="audio/ogg")
    key_file = write_service_account_key(tmp_path / "sa.json")
    credentials = service_account.Credentials.from_service_account_file(str(key_file))
    signing_client = storage.Client(
        project="test", credentials=credentials, client_options={"api_endpoint": emulator.url}
    )
    signer = GcsStore(store.bucket_name, client=signing_client, owns_client=True)

    url = await signer.signed_url("s.opus", expires_s=300)

    assert url is not None
    assert url.startswith(f"{emulator.url}/{store.bucket_name}/s.opus?")
    assert "X-Goog-Algorithm=GOOG4-RSA-SHA256" in url
    assert "X-Goog-Expires=300" in url
    assert "X-Goog-Signature=" in url
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
    assert body == data
    await signer.close()


async def test_put_fails_while_emulator_down_then_succeeds_once_up(tmp_path: Path) -> None:
    """With GCS down put_file raises StorageError after retrying; later the same put succeeds."""
    data = make_bytes(3 * MIB + 5, seed=3)
    source = tmp_path / "left.opus"
    source.write_bytes(data)
    bucket_name = new_bucket_name()
    emulator = GcsEmulator(find_free_port(), default_bucket=bucket_name)
    client = build_gcs_client({"STORAGE_EMULATOR_HOST": emulator.url})
    gcs = GcsStore(bucket_name, client=client, retry_policy=FAST_RETRY, owns_client=True)
    key = "recordings/2026/11/22/conversation_down_left.opus"

    with pytest.raises(StorageError, match="attempts"):
        await gcs.put_file(key, source, content_type="audio/ogg")
    assert gcs.retries_total >= 1
    assert source.read_bytes() == data

    await asyncio.to_thread(emulator.start)
    try:
        stored = await gcs.put_file(key, source, content_type="audio/ogg")
        assert stored.sha256_hex == hashlib.sha256(data).hexdigest()
        assert await fetch_with_plain_client(emulator, bucket_name, key) == (
            len(data),
            crc32c_b64(data),
            data,
        )
    finally:
        await asyncio.to_thread(emulator.stop)
        await gcs.close()


async def test_put_retries_until_emulator_comes_up(tmp_path: Path) -> None:
    """put_file started while GCS is down keeps retrying and succeeds once the emulator starts."""
    data = make_bytes(2 * MIB, seed=4)
    source = tmp_path / "right.opus"
    source.write_bytes(data)
    bucket_name = new_bucket_name()
    emulator = GcsEmulator(find_free_port(), default_bucket=bucket_name)
    client = build_gcs_client({"STORAGE_EMULATOR_HOST": emulator.url})
    patient = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.25, deadline_s=60.0)
    gcs = GcsStore(bucket_name, client=client, retry_policy=patient, owns_client=True)
    key = "recordings/2026/11/22/conversation_late_right.opus"

    upload = asyncio.create_task(gcs.put_file(key, source, content_type="audio/ogg"))
    try:
        async with asyncio.timeout(30):
            while gcs.retries_total == 0:
                assert not upload.done(), "put_file ended before any retry"
                await asyncio.sleep(0.01)
            await asyncio.to_thread(emulator.start)
            stored = await upload
        assert stored.size_bytes == len(data)
        assert await fetch_with_plain_client(emulator, bucket_name, key) == (
            len(data),
            crc32c_b64(data),
            data,
        )
    finally:
        upload.cancel()
        await asyncio.to_thread(emulator.stop)
        await gcs.close()


async def test_open_builds_emulator_client_and_creates_bucket(emulator: GcsEmulator) -> None:
    """GcsStore.open with STORAGE_EMULATOR_HOST and create_bucket=True yields a usable store."""
    bucket_name = new_bucket_name()
    gcs = await GcsStore.open(
        bucket_name,
        environ={"STORAGE_EMULATOR_HOST": emulator.url},
        create_bucket=True,
        retry_policy=FAST_RETRY,
    )
    found = await asyncio.to_thread(emulator_client(emulator).lookup_bucket, bucket_name)
    assert found is not None
    assert await gcs.list_objects() == []
    await gcs.create_bucket_if_missing()  # a second call finds it and changes nothing
    await gcs.close()


@pytest.mark.parametrize(
    ("attempt", "random_fraction", "expected_s"),
    [
        (0, 1.0, 0.5),  # first pause: up to the initial backoff
        (1, 1.0, 1.0),  # doubles
        (3, 0.5, 2.0),  # jitter scales the ceiling (4.0 * 0.5)
        (10, 1.0, 16.0),  # capped at max_backoff_s
        (2, 0.0, 0.0),  # full jitter may not wait at all
    ],
)
def test_compute_backoff_s(attempt: int, random_fraction: float, expected_s: float) -> None:
    """Backoff grows exponentially to its cap and is scaled by the jitter fraction."""
    assert compute_backoff_s(RetryPolicy(), attempt, random_fraction) == pytest.approx(expected_s)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionRefusedError(), True),
        (requests.ConnectionError(), True),
        (api_exceptions.from_http_status(408, "timeout"), True),
        (api_exceptions.TooManyRequests("slow down"), True),
        (api_exceptions.ServiceUnavailable("busy"), True),
        (api_exceptions.from_http_status(502, "bad gateway"), True),
        (api_exceptions.NotFound("no such object"), False),
        (api_exceptions.Forbidden("denied"), False),
        (api_exceptions.BadRequest("bad"), False),
        (ValueError("bug"), False),
    ],
)
def test_is_transient_error(error: Exception, transient: bool) -> None:
    """Connection failures, 408, 429 and 5xx are retried; other errors are not."""
    assert is_transient_error(error) is transient


@pytest.mark.parametrize("name", ["ab", "-abc", "abc-", "ABC", "a" * 64, "a..b", "a b c"])
def test_validate_bucket_name_rejects_invalid_names(name: str) -> None:
    """Bucket names GCS would refuse are a SettingsError."""
    with pytest.raises(SettingsError):
        validate_bucket_name(name)


def test_validate_bucket_name_accepts_valid_names() -> None:
    """Ordinary bucket names pass through unchanged."""
    for name in ["abc", "my-audio-bucket", "rec_2026.calls", "a" * 63]:
        assert validate_bucket_name(name) == name
