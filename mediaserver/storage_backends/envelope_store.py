"""EnvelopeStore: an ObjectStore that seals every recording object on the way in (encryption)."""

# It wraps the configured store, so nothing else changes: the finalizer, the jobs and the API
# put plain files and read plain bytes. Every object of a recording (audio, peaks, analysis,
# transcripts) is sealed with the recording's data key (encryption/sealed_object.py); two stay
# plain: the manifest (the index that listing, retention and job state read, with no audio in
# it) and the envelope, `conversation_<id>_envelope.json`, the data key wrapped with the
# operator's RSA public key. Keys outside recordings/ (the audit log's) pass through as they are.
#
# A recording's data key: the one its call was recorded with while this process still holds it
# (journals were sealed with it), otherwise the stored envelope's, unwrapped with the private key;
# a recording with no envelope yet gets a new key, whose envelope is stored before the first
# object sealed with it. Without a private key, reads fail with EncryptionKeyUnavailableError
# (the API answers 409). Objects stored before encryption was switched on have no header and
# are served as they are. Sizes from stat() are the plaintext's; a range maps to whole chunks,
# and only those are read (one request for the header, cached per object version, one for the
# chunks) and decrypted, in a thread. signed_url() is always None: a bucket's bytes are sealed.

import asyncio
import os
import tempfile
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mediaserver.encryption.envelope import Envelope, parse_envelope
from mediaserver.encryption.keyring import NO_PRIVATE_KEY, Keyring
from mediaserver.encryption.sealed_object import (
    CHUNK_OVERHEAD_BYTES,
    DEFAULT_CHUNK_BYTES,
    HEADER_BYTES,
    ChunkPlan,
    SealedHeader,
    compute_plain_size,
    is_sealed,
    open_records,
    parse_header,
    plan_range,
    seal_stream,
)
from mediaserver.errors import (
    EncryptionError,
    EncryptionKeyUnavailableError,
    ObjectNotFoundError,
    StorageError,
)
from mediaserver.storage_backends.keys import (
    JSON_CONTENT_TYPE,
    RecordingObject,
    parse_recording_key,
)
from mediaserver.storage_backends.store import (
    DEFAULT_READ_CHUNK_BYTES,
    ObjectInfo,
    ObjectStore,
    StoredObject,
    check_range,
)

_PLAIN_NAMES = frozenset({"manifest.json", "envelope.json"})
_CACHE_SIZE = 1024
# Sealed records read per inner request when streaming: 16 x 64 KiB, about 1 MiB, as plain reads.
_RECORDS_PER_READ = 16


def find_sealed_recording(key: str) -> RecordingObject | None:
    """The recording whose sealed object `key` is, or None for keys stored as they are."""
    found = parse_recording_key(key)
    if found is None or found.name in _PLAIN_NAMES:
        return None
    return found


class EnvelopeStore:
    """Seals recording objects with per-recording data keys, on top of another store."""

    def __init__(
        self, inner: ObjectStore, keyring: Keyring, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> None:
        """Store sealed objects in `inner`; keys come from and go to `keyring`."""
        self.inner = inner
        self.keyring = keyring
        self.chunk_bytes = chunk_bytes
        # call id -> data key known to match the stored envelope
        self._data_keys: OrderedDict[str, bytes] = OrderedDict()
        # key -> (size, update time, header or None for a plain object) of one object version
        self._headers: OrderedDict[str, tuple[int, datetime, SealedHeader | None]] = OrderedDict()
        # Held while a recording's data key is found or made: its envelope is written once.
        self._key_lock = asyncio.Lock()

    async def put_file(self, key: str, path: Path, *, content_type: str) -> StoredObject:
        """Seal `path` into `key` (recording objects), or store it as it is."""
        recording = find_sealed_recording(key)
        if recording is None:
            return await self.inner.put_file(key, path, content_type=content_type)
        data_key = await self._data_key_for_write(recording)
        sealed = await asyncio.to_thread(self._seal_file, path, key, data_key)
        try:
            stored = await self.inner.put_file(key, sealed, content_type=content_type)
        finally:
            await asyncio.to_thread(sealed.unlink, missing_ok=True)
        self._headers.pop(key, None)
        return stored

    async def get_range(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Plaintext bytes [start, end) of an object, clipped to its size."""
        return b"".join([chunk async for chunk in self.iter_range(key, start, end)])

    async def iter_range(
        self,
        key: str,
        start: int = 0,
        end: int | None = None,
        *,
        chunk_bytes: int = DEFAULT_READ_CHUNK_BYTES,
    ) -> AsyncIterator[bytes]:
        """Yield plaintext [start, end), decrypting only the chunks the range touches."""
        check_range(start, end)
        recording = find_sealed_recording(key)
        info = None if recording is None else await self.inner.stat(key)
        header = None if info is None else await self._header(key, info)
        if recording is None or info is None or header is None:
            async for chunk in self.inner.iter_range(key, start, end, chunk_bytes=chunk_bytes):
                yield chunk
            return
        data_key = await self._data_key_for_read(recording)
        plain_bytes = compute_plain_size(info.size_bytes, header.chunk_bytes)
        plan = plan_range(start, end, plain_bytes, header.chunk_bytes)
        if plan.length == 0:
            return
        async for chunk in self._decrypt(key, header, AESGCM(data_key), plan):
            yield chunk

    async def stat(self, key: str) -> ObjectInfo:
        """An object's metadata; a sealed object's size is its plaintext's."""
        info = await self.inner.stat(key)
        if find_sealed_recording(key) is None:
            return info
        header = await self._header(key, info)
        if header is None:
            return info
        plain = compute_plain_size(info.size_bytes, header.chunk_bytes)
        return ObjectInfo(info.key, plain, info.updated_at, info.content_type)

    async def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        """The inner store's listing (sizes as stored: sealed objects are a little larger)."""
        return await self.inner.list_objects(prefix)

    async def delete(self, key: str) -> None:
        """Delete an object (a deleted envelope takes its cached data key along)."""
        self._headers.pop(key, None)
        found = parse_recording_key(key)
        if found is not None and found.name == "envelope.json":
            self._data_keys.pop(found.call_id, None)
        await self.inner.delete(key)

    async def signed_url(self, key: str, *, expires_s: int) -> str | None:
        """None: the store holds sealed bytes, so the API decrypts and serves them itself."""
        return None

    async def close(self) -> None:
        """Close the inner store."""
        await self.inner.close()

    async def _decrypt(
        self, key: str, header: SealedHeader, cipher: AESGCM, plan: ChunkPlan
    ) -> AsyncIterator[bytes]:
        """Stream the plan's chunks from the inner store and yield its plaintext range."""
        record_bytes = header.chunk_bytes + CHUNK_OVERHEAD_BYTES
        sealed_total = plan.sealed_end - plan.sealed_start
        pending = bytearray()
        received = 0
        skip = plan.skip_bytes
        left = plan.length
        next_chunk = plan.first_chunk
        reads = self.inner.iter_range(
            key, plan.sealed_start, plan.sealed_end, chunk_bytes=record_bytes * _RECORDS_PER_READ
        )
        try:
            async for data in reads:
                pending += data
                received += len(data)
                # Whole records only, but at the end everything: the last record may be short.
                whole = (
                    len(pending)
                    if received >= sealed_total
                    else len(pending) // record_bytes * record_bytes
                )
                if not whole:
                    continue
                batch = bytes(pending[:whole])
                del pending[:whole]
                plain = await asyncio.to_thread(
                    _open_batch, cipher, header, key, plan, next_chunk, batch
                )
                next_chunk += -(-len(batch) // record_bytes)
                piece = plain[skip : skip + left]
                skip = max(0, skip - len(plain))
                left -= len(piece)
                if piece:
                    yield piece
                if left <= 0:
                    return
        finally:
            if isinstance(reads, AsyncGenerator):
                await reads.aclose()
        raise EncryptionError(f"{key!r} ended {left} bytes early: truncated")

    async def _header(self, key: str, info: ObjectInfo) -> SealedHeader | None:
        """A sealed object's header (None: stored plain), read once per object version."""
        cached = self._headers.get(key)
        if cached is not None and cached[:2] == (info.size_bytes, info.updated_at):
            self._headers.move_to_end(key)
            return cached[2]
        prefix = await self.inner.get_range(key, 0, HEADER_BYTES)
        header = parse_header(prefix) if is_sealed(prefix) else None
        self._headers[key] = (info.size_bytes, info.updated_at, header)
        if len(self._headers) > _CACHE_SIZE:
            self._headers.popitem(last=False)
        return header

    async def _read_envelope(self, recording: RecordingObject) -> Envelope | None:
        """The recording's stored envelope, or None."""
        try:
            data = await self.inner.get_range(recording.envelope_key)
        except ObjectNotFoundError:
            return None
        return parse_envelope(data)

    async def _data_key_for_read(self, recording: RecordingObject) -> bytes:
        """The data key to open a recording's objects with."""
        if not self.keyring.can_unwrap:
            # Even for a key still in memory: a store-only server never plays anything back.
            raise EncryptionKeyUnavailableError(NO_PRIVATE_KEY)
        known = self._known(recording.call_id)
        if known is not None:
            return known
        envelope = await self._read_envelope(recording)
        if envelope is None:
            raise EncryptionError(
                f"recording {recording.call_id} has sealed objects but no envelope (data key)"
            )
        data_key = self.keyring.unwrap(envelope)
        self._remember(recording.call_id, data_key)
        return data_key

    async def _data_key_for_write(self, recording: RecordingObject) -> bytes:
        """The data key to seal a recording's object with (its envelope stored first)."""
        async with self._key_lock:
            known = self._known(recording.call_id)
            if known is not None:
                return known
            stored = await self._read_envelope(recording)
            if stored is not None:
                data_key = self.keyring.unwrap(stored)
            else:
                pinned = self.keyring.pinned(recording.call_id)
                data_key, envelope = pinned or self.keyring.create(recording.call_id)
                await self._store_envelope(recording, envelope)
            self._remember(recording.call_id, data_key)
            return data_key

    async def _store_envelope(self, recording: RecordingObject, envelope: Envelope) -> None:
        """Write a recording's envelope (plain: it holds only the wrapped key)."""
        path = await asyncio.to_thread(_write_temp, envelope.to_json().encode())
        try:
            await self.inner.put_file(recording.envelope_key, path, content_type=JSON_CONTENT_TYPE)
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)

    def _known(self, call_id: str) -> bytes | None:
        """A data key this store already matched with the stored envelope."""
        data_key = self._data_keys.get(call_id)
        if data_key is not None:
            self._data_keys.move_to_end(call_id)
        return data_key

    def _remember(self, call_id: str, data_key: bytes) -> None:
        """Keep a recording's data key for its next objects."""
        self._data_keys[call_id] = data_key
        if len(self._data_keys) > _CACHE_SIZE:
            self._data_keys.popitem(last=False)

    def _seal_file(self, source: Path, key: str, data_key: bytes) -> Path:
        """Seal `source` into a temporary file beside it (blocking: run in a thread)."""
        try:
            fd, name = tempfile.mkstemp(
                dir=source.parent, prefix=f".{source.name}.", suffix=".sealed"
            )
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                seal_stream(src, out, data_key, key, chunk_bytes=self.chunk_bytes)
        except FileNotFoundError as exc:
            raise StorageError(f"source file {source} does not exist") from exc
        except OSError as exc:
            raise StorageError(f"cannot seal {source} for {key!r}: {exc}") from exc
        return Path(name)


def _open_batch(
    cipher: AESGCM,
    header: SealedHeader,
    key: str,
    plan: ChunkPlan,
    first_chunk: int,
    batch: bytes,
) -> bytes:
    """The plaintext of whole records starting at chunk `first_chunk` (blocking: a thread)."""
    from_here = ChunkPlan(first_chunk, plan.chunk_count, 0, 0, 0, 0)
    return b"".join(open_records(cipher, header, key, from_here, batch))


def _write_temp(data: bytes) -> Path:
    """A temporary file holding `data`."""
    fd, name = tempfile.mkstemp(prefix=".envelope.", suffix=".json")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return Path(name)
