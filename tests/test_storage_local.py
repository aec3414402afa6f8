"""LocalStore on a temporary directory, and the object key rules it shares with GCS."""

import asyncio
import hashlib
import os
import random
import signal
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediaserver.errors import InvalidKeyError, ObjectNotFoundError, StorageError
from mediaserver.storage_backends.keys import (
    build_recording_keys,
    compute_content_type,
    validate_call_id,
    validate_key,
    validate_prefix,
)
from mediaserver.storage_backends.local import LocalStore
from mediaserver.storage_backends.store import ObjectStore

UNSAFE_KEYS = [
    "",
    "../x",
    "a/../../x",
    "a/..",
    "/etc/passwd",
    "a\\..\\b",
    "a\x00b",
    "a//b",
    "a/",
    ".hidden",
    "a/.b.tmp",
    "x" * 1025,
    "a/" + "y" * 256,
]


def make_bytes(size_bytes: int, seed: int) -> bytes:
    """Return reproducible pseudo-random bytes."""
    return random.Random(seed).randbytes(size_bytes)


def write_source(directory: Path, name: str, data: bytes) -> Path:
    """Write a source file outside the store's root and return its path."""
    path = directory / name
    path.write_bytes(data)
    return path


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    """A LocalStore whose root does not exist yet."""
    return LocalStore(tmp_path / "store")


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """A directory for source files, beside (not inside) the store root."""
    path = tmp_path / "sources"
    path.mkdir()
    return path


async def test_put_then_read_whole_and_ranges(store: LocalStore, sources: Path) -> None:
    """A stored file is on disk under its key, and ranges read back exactly."""
    data = make_bytes(3 * 1024 * 1024 + 11, seed=1)
    key = "recordings/2026/11/22/conversation_abc_left.opus"
    backend: ObjectStore = store

    stored = await backend.put_file(key, write_source(sources, "l.opus", data), content_type="x")

    assert (store.root / key).read_bytes() == data
    assert stored.key == key
    assert stored.size_bytes == len(data)
    assert stored.sha256_hex == hashlib.sha256(data).hexdigest()
    assert stored.server_crc32c is None
    assert await backend.get_range(key) == data
    assert await backend.get_range(key, 5, 9) == data[5:9]
    assert await backend.get_range(key, len(data) - 3, len(data) + 50) == data[-3:]
    assert await backend.get_range(key, 4, 4) == b""
    assert await backend.get_range(key, len(data) + 1) == b""
    chunks = [c async for c in backend.iter_range(key, 10, 2 * 1024 * 1024, chunk_bytes=1 << 20)]
    assert [len(chunk) for chunk in chunks] == [1 << 20, (1 << 20) - 10]
    assert b"".join(chunks) == data[10 : 2 * 1024 * 1024]


async def test_invalid_ranges_raise_value_error(store: LocalStore, sources: Path) -> None:
    """Negative starts and ends before starts are programming errors."""
    await store.put_file("a.opus", write_source(sources, "a", b"abc"), content_type="audio/ogg")
    with pytest.raises(ValueError, match="negative"):
        await store.get_range("a.opus", -1)
    with pytest.raises(ValueError, match="before its start"):
        await store.get_range("a.opus", 2, 1)


async def test_put_replaces_existing_object(store: LocalStore, sources: Path) -> None:
    """Putting a key again replaces its content and leaves no temporary file."""
    await store.put_file("a.opus", write_source(sources, "1", b"first version"), content_type="")
    await store.put_file("a.opus", write_source(sources, "2", b"second"), content_type="")
    assert await store.get_range("a.opus") == b"second"
    assert sorted(path.name for path in store.root.iterdir()) == ["a.opus"]


async def test_stat_list_and_delete(store: LocalStore, sources: Path) -> None:
    """list filters by string prefix in key order; stat and delete act on one object."""
    keys = [
        "recordings/2026/11/23/conversation_b_manifest.json",
        "recordings/2026/11/22/conversation_a_right.opus",
        "recordings/2026/11/22/conversation_a_left.opus",
        "other/conversation_c_left.opus",
    ]
    for index, key in enumerate(keys):
        source = write_source(sources, str(index), make_bytes(100 + index, seed=index))
        await store.put_file(key, source, content_type="audio/ogg")
    before = datetime.now(UTC) - timedelta(minutes=1)

    listed = await store.list_objects("recordings/2026/11/2")
    assert [info.key for info in listed] == sorted(keys[:3])
    assert [info.size_bytes for info in listed] == [102, 101, 100]
    assert [info.key for info in await store.list_objects()] == sorted(keys)
    assert await store.list_objects("recordings/2027/") == []
    assert await store.list_objects("recordings/2026/11/22/conversation_a_l") == [listed[0]]

    info = await store.stat(keys[0])
    assert (info.key, info.size_bytes, info.content_type) == (keys[0], 100, "application/json")
    assert info.updated_at > before
    assert (await store.stat(keys[1])).content_type == "audio/ogg"

    await store.delete(keys[0])
    assert not (store.root / keys[0]).exists()
    with pytest.raises(ObjectNotFoundError):
        await store.stat(keys[0])
    assert [info.key for info in await store.list_objects("recordings/2026/11/23")] == []


async def test_missing_keys_raise_object_not_found(store: LocalStore, sources: Path) -> None:
    """Reading, stating or deleting a key with no object raises ObjectNotFoundError."""
    await store.put_file("dir/a.opus", write_source(sources, "a", b"a"), content_type="")
    for key in ["absent.opus", "dir", "dir/a.opus/below", "dir/b.opus"]:
        with pytest.raises(ObjectNotFoundError):
            await store.get_range(key)
        with pytest.raises(ObjectNotFoundError):
            await store.stat(key)
        with pytest.raises(ObjectNotFoundError):
            await store.delete(key)
        with pytest.raises(ObjectNotFoundError):
            _ = [chunk async for chunk in store.iter_range(key)]
    assert await store.get_range("dir/a.opus") == b"a"


@pytest.mark.parametrize("key", UNSAFE_KEYS)
async def test_unsafe_keys_are_rejected(store: LocalStore, sources: Path, key: str) -> None:
    """Keys that are empty, absolute, climbing, hidden or too long raise InvalidKeyError."""
    source = write_source(sources, "s", b"s")
    with pytest.raises(InvalidKeyError):
        await store.put_file(key, source, content_type="")
    with pytest.raises(InvalidKeyError):
        await store.get_range(key)
    with pytest.raises(InvalidKeyError):
        await store.stat(key)
    with pytest.raises(InvalidKeyError):
        await store.delete(key)
    with pytest.raises(InvalidKeyError):
        await store.signed_url(key, expires_s=60)
    assert not store.root.exists()


async def test_symlinks_cannot_lead_outside_root(
    store: LocalStore, sources: Path, tmp_path: Path
) -> None:
    """A symlinked directory or file pointing outside the root is neither read nor written."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.opus"
    secret.write_bytes(b"secret")
    store.root.mkdir()
    (store.root / "linkdir").symlink_to(outside, target_is_directory=True)
    (store.root / "linkfile.opus").symlink_to(secret)
    source = write_source(sources, "s", b"intruder")

    for key in ["linkdir/secret.opus", "linkfile.opus"]:
        with pytest.raises(InvalidKeyError, match="escapes"):
            await store.get_range(key)
        with pytest.raises(InvalidKeyError, match="escapes"):
            await store.stat(key)
        with pytest.raises(InvalidKeyError, match="escapes"):
            await store.delete(key)
    with pytest.raises(InvalidKeyError, match="escapes"):
        await store.put_file("linkdir/new.opus", source, content_type="")
    with pytest.raises(InvalidKeyError, match="escapes"):
        await store.put_file("linkfile.opus", source, content_type="")

    assert await store.list_objects() == []
    assert sorted(path.name for path in outside.iterdir()) == ["secret.opus"]
    assert secret.read_bytes() == b"secret"


async def test_symlink_inside_root_is_followed(store: LocalStore, sources: Path) -> None:
    """A symlink whose target stays under the root is an ordinary object."""
    await store.put_file("real/a.opus", write_source(sources, "a", b"inside"), content_type="")
    (store.root / "alias").symlink_to(store.root / "real", target_is_directory=True)
    assert await store.get_range("alias/a.opus") == b"inside"


async def test_missing_source_is_storage_error_and_leaves_nothing(
    store: LocalStore, sources: Path
) -> None:
    """A source file that does not exist raises StorageError and leaves no temporary file."""
    with pytest.raises(StorageError, match="does not exist"):
        await store.put_file("a/b.opus", sources / "absent.opus", content_type="")
    assert [path.name for path in (store.root / "a").iterdir()] == []


async def test_signed_url_is_none(store: LocalStore) -> None:
    """Local objects have no signed URL: the HTTP API serves them itself."""
    assert await store.signed_url("a.opus", expires_s=60) is None


_CRASHING_PUT = """
import asyncio, sys
from pathlib import Path
from mediaserver.storage_backends.local import LocalStore
store = LocalStore(Path(sys.argv[1]))
asyncio.run(store.put_file(sys.argv[2], Path(sys.argv[3]), content_type="audio/ogg"))
"""


async def test_crash_mid_write_never_exposes_a_partial_object(
    store: LocalStore, sources: Path
) -> None:
    """A writer killed mid-copy leaves only a hidden temp file: no object, list stays empty."""
    key = "recordings/2026/11/22/conversation_crash_merged.opus"
    fifo = sources / "slow.fifo"
    os.mkfifo(fifo)
    # The writer reads from a FIFO fed here, so it is stopped mid-copy for certain.
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CRASHING_PUT, str(store.root), key, str(fifo)
    )
    feed = await asyncio.to_thread(open, fifo, "wb")
    try:
        await asyncio.to_thread(feed.write, make_bytes(3 * 1024 * 1024 // 2, seed=9))
        await asyncio.to_thread(feed.flush)
        directory = store.root / "recordings/2026/11/22"
        partial = await asyncio.wait_for(wait_for_partial_file(directory, 1024 * 1024), 30)
        child.send_signal(signal.SIGKILL)
        await child.wait()
    finally:
        await asyncio.to_thread(feed.close)

    assert partial.name.startswith(".conversation_crash_merged.opus.")
    assert partial.exists()
    assert await store.list_objects() == []
    with pytest.raises(ObjectNotFoundError):
        await store.stat(key)
    with pytest.raises(ObjectNotFoundError):
        await store.get_range(key)

    data = make_bytes(2000, seed=10)
    await store.put_file(key, write_source(sources, "ok.opus", data), content_type="audio/ogg")
    assert [info.key for info in await store.list_objects()] == [key]
    assert await store.get_range(key) == data


async def wait_for_partial_file(directory: Path, min_size_bytes: int) -> Path:
    """Return the hidden temp file in `directory` once it holds at least `min_size_bytes`."""
    while True:
        for path in await asyncio.to_thread(lambda: list(directory.glob(".*.tmp"))):
            if (await asyncio.to_thread(path.stat)).st_size >= min_size_bytes:
                return path
        await asyncio.sleep(0.01)


def test_build_recording_keys_uses_seed_names_under_utc_date() -> None:
    """Keys keep the seed's file names under the UTC date of the call's start."""
    # 23:30 on 21 Nov in UTC-05:00 is 04:30 on 22 Nov in UTC.
    started_at = datetime(2026, 11, 21, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    keys = build_recording_keys("call_42-x", started_at)
    assert keys.left == "recordings/2026/11/22/conversation_call_42-x_left.opus"
    assert keys.right == "recordings/2026/11/22/conversation_call_42-x_right.opus"
    assert keys.merged == "recordings/2026/11/22/conversation_call_42-x_merged.opus"
    assert keys.manifest == "recordings/2026/11/22/conversation_call_42-x_manifest.json"
    assert keys.all_keys()[-1] == keys.manifest
    for key in keys.all_keys():
        assert validate_key(key) == key


def test_build_recording_keys_rejects_naive_time() -> None:
    """A start time without a time zone cannot be placed on a UTC date."""
    with pytest.raises(ValueError, match="timezone"):
        build_recording_keys("abc", datetime(2026, 11, 22, 12, 0))


@pytest.mark.parametrize("call_id", ["", "a" * 65, "a/b", "../x", "a b", "é", "a.b", "a\x00"])
def test_invalid_call_ids_are_rejected(call_id: str) -> None:
    """Call ids outside [A-Za-z0-9_-]{1,64} raise InvalidKeyError."""
    with pytest.raises(InvalidKeyError):
        validate_call_id(call_id)
    with pytest.raises(InvalidKeyError):
        build_recording_keys(call_id, datetime(2026, 11, 22, tzinfo=UTC))


def test_validate_prefix() -> None:
    """Prefixes may be empty or end in '/' or mid-segment; climbing prefixes are rejected."""
    for prefix in ["", "recordings/", "recordings/2026/1", "a"]:
        assert validate_prefix(prefix) == prefix
    for prefix in ["/", "../", "recordings/../", "/etc", "a//"]:
        with pytest.raises(InvalidKeyError):
            validate_prefix(prefix)


@pytest.mark.parametrize(
    ("key", "content_type"),
    [
        ("a/conversation_x_merged.opus", "audio/ogg"),
        ("a/conversation_x_manifest.json", "application/json"),
        ("a/b.OGG", "audio/ogg"),
        ("a/b", "application/octet-stream"),
        ("a.b/c", "application/octet-stream"),
    ],
)
def test_compute_content_type(key: str, content_type: str) -> None:
    """Content types follow the key's file suffix."""
    assert compute_content_type(key) == content_type


# The small alphabet makes dots, slashes and separators meet often enough to matter.
@given(st.one_of(st.text(max_size=80), st.text(alphabet="a.-_/\\\x00", max_size=20)))
def test_validate_key_accepts_only_keys_that_stay_under_root(key: str) -> None:
    """Any string is either rejected or is a relative path that cannot climb out of a root."""
    root = Path("/srv/store")
    try:
        validate_key(key)
    except InvalidKeyError:
        return
    parts = key.split("/")
    assert all(part and not part.startswith(".") for part in parts)
    assert "\\" not in key
    assert "\x00" not in key
    assert os.path.normpath(root / key).startswith(f"{root}/")
    assert (root / key).parts[3:] == tuple(parts)
