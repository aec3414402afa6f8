"""LocalStore: an ObjectStore on a local directory, written atomically and durably."""

# An object appears only whole: its bytes go to a hidden temporary file in the same directory
# (".{name}.{random}.tmp"), which is fsynced, renamed over the key's path and made durable by
# fsyncing the directory. A crash mid-copy leaves at most that hidden file behind; keys cannot
# start with a dot (see keys.validate_key), so it is never listed, read or returned as an object.
#
# Keys never escape the root: each path is resolved (following symlinks) and must stay under the
# resolved root. This guards against hostile keys and stray symlinks; the root itself is assumed
# to be writable only by the server (a symlink swapped in between check and use is not defended).
# Local files carry no media type, so `ObjectInfo.content_type` is derived from the key's suffix.

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from mediaserver.errors import InvalidKeyError, ObjectNotFoundError, StorageError
from mediaserver.storage_backends.keys import compute_content_type, validate_key, validate_prefix
from mediaserver.storage_backends.store import (
    DEFAULT_READ_CHUNK_BYTES,
    ObjectInfo,
    StoredObject,
    check_range,
)

_COPY_CHUNK_BYTES = 1024 * 1024
_TEMP_SUFFIX = ".tmp"


class LocalStore:
    """An ObjectStore keeping each object as a file under `root`."""

    def __init__(self, root: Path) -> None:
        """Use `root` (created on first write) as the top of the key space."""
        self._root = root

    @property
    def root(self) -> Path:
        """The directory objects are stored under."""
        return self._root

    async def put_file(self, key: str, path: Path, *, content_type: str) -> StoredObject:
        """Copy `path` to `key` atomically; `content_type` is not kept (derived from the key)."""
        validate_key(key)
        return await asyncio.to_thread(self._put_file, key, path)

    async def get_range(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Return bytes [start, end) of an object, clipped to its size."""
        validate_key(key)
        check_range(start, end)
        return await asyncio.to_thread(self._get_range, key, start, end)

    async def iter_range(
        self,
        key: str,
        start: int = 0,
        end: int | None = None,
        *,
        chunk_bytes: int = DEFAULT_READ_CHUNK_BYTES,
    ) -> AsyncIterator[bytes]:
        """Yield bytes [start, end) of an object in chunks of at most `chunk_bytes`."""
        validate_key(key)
        check_range(start, end)
        stream, stop = await asyncio.to_thread(self._open_range, key, start, end)
        try:
            position = start
            while position < stop:
                chunk = await asyncio.to_thread(stream.read, min(chunk_bytes, stop - position))
                if not chunk:
                    # The file shrank under us (replaced objects keep their old inode, so only
                    # an outside truncation does this): end the stream rather than spin.
                    return
                position += len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(stream.close)

    async def stat(self, key: str) -> ObjectInfo:
        """Return an object's size, modification time and content type."""
        validate_key(key)
        return await asyncio.to_thread(self._stat, key)

    async def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        """Return every object whose key starts with `prefix`, sorted by key."""
        validate_prefix(prefix)
        return await asyncio.to_thread(self._list_objects, prefix)

    async def delete(self, key: str) -> None:
        """Delete an object; a missing key raises ObjectNotFoundError."""
        validate_key(key)
        await asyncio.to_thread(self._delete, key)

    async def signed_url(self, key: str, *, expires_s: int) -> str | None:
        """Return None: local files are served by the HTTP API itself."""
        validate_key(key)
        return None

    async def close(self) -> None:
        """Do nothing: a local store holds no connections."""

    def _locate(self, key: str) -> tuple[Path, Path]:
        """Return (path to write or unlink, fully resolved path to read) for a key inside root."""
        root = self._root.resolve()
        path = root / key
        write_path = path.parent.resolve() / path.name
        read_path = path.resolve()
        for candidate in (write_path, read_path):
            if candidate == root or not candidate.is_relative_to(root):
                raise InvalidKeyError(f"object key {key!r} escapes the storage root")
        return write_path, read_path

    def _put_file(self, key: str, source: Path) -> StoredObject:
        """Copy `source` to a temporary file beside the target, fsync, rename, fsync the dir."""
        target, _ = self._locate(key)
        try:
            _make_dirs_durably(self._root.resolve(), target.parent)
            fd, temp_name = tempfile.mkstemp(
                dir=target.parent, prefix=f".{target.name}.", suffix=_TEMP_SUFFIX
            )
        except OSError as exc:
            raise StorageError(f"cannot create {key!r} under {self._root}: {exc}") from exc
        temp_path = Path(temp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                size_bytes, sha256_hex = _copy_and_hash(source, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp_path, target)
            fsync_directory(target.parent)
        except BaseException as exc:
            temp_path.unlink(missing_ok=True)
            if isinstance(exc, FileNotFoundError) and exc.filename == str(source):
                raise StorageError(f"source file {source} does not exist") from exc
            if isinstance(exc, OSError):
                raise StorageError(f"cannot store {key!r}: {exc}") from exc
            raise
        return StoredObject(
            key=key, size_bytes=size_bytes, sha256_hex=sha256_hex, server_crc32c=None
        )

    def _open_range(self, key: str, start: int, end: int | None) -> tuple[BinaryIO, int]:
        """Open an object positioned at `start`; return it with the clipped end offset."""
        _, path = self._locate(key)
        try:
            stream = path.open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFoundError(f"no object {key!r}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {key!r}: {exc}") from exc
        try:
            size_bytes = os.fstat(stream.fileno()).st_size
            stop = size_bytes if end is None else min(end, size_bytes)
            stream.seek(min(start, stop))
        except OSError as exc:
            stream.close()
            raise StorageError(f"cannot read {key!r}: {exc}") from exc
        return stream, stop

    def _get_range(self, key: str, start: int, end: int | None) -> bytes:
        """Read bytes [start, end) of an object."""
        stream, stop = self._open_range(key, start, end)
        with stream:
            try:
                return stream.read(max(0, stop - start))
            except OSError as exc:
                raise StorageError(f"cannot read {key!r}: {exc}") from exc

    def _stat(self, key: str) -> ObjectInfo:
        """Return an object's metadata from the file system."""
        _, path = self._locate(key)
        try:
            status = path.stat()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(f"no object {key!r}") from exc
        except OSError as exc:
            raise StorageError(f"cannot stat {key!r}: {exc}") from exc
        if not path.is_file():
            raise ObjectNotFoundError(f"no object {key!r}")
        return _build_info(key, status)

    def _list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Walk the directory the prefix names and collect regular files matching it."""
        root = self._root.resolve()
        # Only the directory part of the prefix can be walked; the rest filters names.
        directory = root / prefix.rpartition("/")[0]
        infos = []
        for key in _walk_keys(root, directory):
            if not key.startswith(prefix):
                continue
            try:
                infos.append(self._stat(key))
            except (InvalidKeyError, ObjectNotFoundError):
                # Symlinks leading outside the root or to non-files, and files deleted while
                # walking, are not objects.
                continue
        infos.sort(key=lambda info: info.key)
        return infos

    def _delete(self, key: str) -> None:
        """Unlink an object's file and make the removal durable."""
        path, _ = self._locate(key)
        if path.is_dir():
            raise ObjectNotFoundError(f"no object {key!r}")
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(f"no object {key!r}") from exc
        except OSError as exc:
            raise StorageError(f"cannot delete {key!r}: {exc}") from exc
        fsync_directory(path.parent)


def _copy_and_hash(source: Path, out: BinaryIO) -> tuple[int, str]:
    """Copy `source` into `out`; return the byte count and SHA-256 hex of what was written."""
    digest = hashlib.sha256()
    size_bytes = 0
    with source.open("rb") as src:
        while chunk := src.read(_COPY_CHUNK_BYTES):
            digest.update(chunk)
            out.write(chunk)
            size_bytes += len(chunk)
    return size_bytes, digest.hexdigest()


def _make_dirs_durably(root: Path, directory: Path) -> None:
    """Create `directory` and missing parents below `root`, fsyncing each new entry's parent."""
    missing = []
    current = directory
    while current != root and not current.is_dir():
        missing.append(current)
        current = current.parent
    if not root.is_dir():
        root.mkdir(parents=True, exist_ok=True)
    for new_directory in reversed(missing):
        new_directory.mkdir(exist_ok=True)
        fsync_directory(new_directory.parent)


def fsync_directory(directory: Path) -> None:
    """Flush a directory's entries (creations, renames, removals) to disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _walk_keys(root: Path, directory: Path) -> Iterator[str]:
    """Yield candidate keys (root-relative POSIX paths) of files under `directory`."""
    for dir_path, dir_names, file_names in os.walk(directory):
        # Hidden directories and files hold no objects (keys cannot start with a dot).
        dir_names[:] = [name for name in dir_names if not name.startswith(".")]
        for name in file_names:
            if name.startswith("."):
                continue
            key = Path(dir_path, name).relative_to(root).as_posix()
            try:
                yield validate_key(key)
            except InvalidKeyError:
                continue


def _build_info(key: str, status: os.stat_result) -> ObjectInfo:
    """Build ObjectInfo from a file's stat result."""
    return ObjectInfo(
        key=key,
        size_bytes=status.st_size,
        updated_at=datetime.fromtimestamp(status.st_mtime, UTC),
        content_type=compute_content_type(key),
    )
