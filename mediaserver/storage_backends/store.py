"""The ObjectStore Protocol every storage backend implements, and the values it returns."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

# Large enough to keep per-chunk overhead (a thread hop, or an HTTP request on GCS) small,
# small enough that a few concurrent downloads stay within a few MiB of memory.
DEFAULT_READ_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What a backend confirmed after storing a file."""

    key: str
    size_bytes: int
    sha256_hex: str
    # Base64 CRC32C (as GCS reports it) that the backend computed and we compared with our
    # own; None when the backend reports no checksum (local disk: the fsync is the guarantee).
    server_crc32c: str | None


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """Metadata of one stored object."""

    key: str
    size_bytes: int
    updated_at: datetime
    content_type: str


class ObjectStore(Protocol):
    """Where finished recordings live."""

    async def put_file(self, key: str, path: Path, *, content_type: str) -> StoredObject:
        """Store the local file at `path` under `key`, replacing any object already there."""
        ...

    async def get_range(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Return bytes [start, end) of an object; `end` None means to its end, both clipped."""
        ...

    def iter_range(
        self,
        key: str,
        start: int = 0,
        end: int | None = None,
        *,
        chunk_bytes: int = DEFAULT_READ_CHUNK_BYTES,
    ) -> AsyncIterator[bytes]:
        """Yield bytes [start, end) of an object in chunks; errors surface on the first chunk."""
        ...

    async def stat(self, key: str) -> ObjectInfo:
        """Return an object's size, last update time and content type."""
        ...

    async def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        """Return every object whose key starts with `prefix`, sorted by key."""
        ...

    async def delete(self, key: str) -> None:
        """Delete an object; a missing key raises ObjectNotFoundError."""
        ...

    async def signed_url(self, key: str, *, expires_s: int) -> str | None:
        """Return a time-limited URL that serves the object, or None if the backend has none."""
        ...

    async def close(self) -> None:
        """Release the backend's connections."""
        ...


def check_range(start: int, end: int | None) -> None:
    """Raise ValueError unless 0 <= start and (end is None or start <= end)."""
    if start < 0:
        raise ValueError(f"range start {start} is negative")
    if end is not None and end < start:
        raise ValueError(f"range end {end} is before its start {start}")
