"""The sealed object format: AES-256-GCM in fixed-size chunks, each readable on its own (pure)."""

# Layout (integers big-endian):
#
#   header, 32 bytes:  magic "MSE1" | version 1 | cipher 1 (AES-256-GCM) | 2 reserved |
#                      chunk size in plaintext bytes (u32) | object id (16 random bytes) |
#                      4 reserved
#   then one record per chunk: nonce (12 random bytes) | ciphertext | tag (16 bytes)
#
# Every chunk holds `chunk size` plaintext bytes but the last, which holds the rest (an empty
# object is one empty chunk), so chunk i starts at a known offset: a range of the plaintext maps
# to a range of whole chunks, and only those are read and decrypted. Each chunk's associated data
# (NIST SP 800-38D: authenticated, not encrypted) is the header, the object's key, the chunk's
# index and whether it is the last: chunks cannot be reordered, moved to another object (or to
# another version of the same key: the object id differs), nor dropped from the end unseen.
# Nonces are random per chunk; one data key seals one recording's few thousand chunks, far
# below the 2^32 messages NIST SP 800-38D §8.3 allows with random 96-bit IVs.

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mediaserver.errors import EncryptionError

MAGIC = b"MSE1"
VERSION = 1
CIPHER_AES_256_GCM = 1
DATA_KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # NIST SP 800-38D §8.2: 96-bit IVs
TAG_BYTES = 16
CHUNK_OVERHEAD_BYTES = NONCE_BYTES + TAG_BYTES
DEFAULT_CHUNK_BYTES = 64 * 1024
_HEADER = struct.Struct(">4sBBHI16s4x")
HEADER_BYTES = _HEADER.size  # 32
_AAD_TAIL = struct.Struct(">QB")


@dataclass(frozen=True, slots=True)
class SealedHeader:
    """A sealed object's header: its chunk size and the bytes every chunk is bound to."""

    chunk_bytes: int
    object_id: bytes
    raw: bytes


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """Which sealed bytes hold a plaintext range, and where the range starts in them."""

    first_chunk: int
    chunk_count: int  # of the object, to know which chunk is the last
    sealed_start: int
    sealed_end: int
    skip_bytes: int  # plaintext before the range in the first chunk
    length: int  # plaintext bytes of the range


def build_header(chunk_bytes: int, object_id: bytes) -> SealedHeader:
    """A new object's header."""
    raw = _HEADER.pack(MAGIC, VERSION, CIPHER_AES_256_GCM, 0, chunk_bytes, object_id)
    return SealedHeader(chunk_bytes, object_id, raw)


def is_sealed(prefix: bytes) -> bool:
    """Whether bytes start like a sealed object (Ogg, JSON and WebVTT never do)."""
    return prefix[: len(MAGIC)] == MAGIC


def parse_header(data: bytes) -> SealedHeader:
    """The header at the start of `data`; EncryptionError if it is not one."""
    if len(data) < HEADER_BYTES or not is_sealed(data):
        raise EncryptionError("not a sealed object: no MSE1 header")
    _, version, cipher, _, chunk_bytes, object_id = _HEADER.unpack_from(data)
    if version != VERSION or cipher != CIPHER_AES_256_GCM:
        raise EncryptionError(f"sealed object version {version} cipher {cipher} is not supported")
    if chunk_bytes <= 0:
        raise EncryptionError("sealed object header has a zero chunk size")
    return SealedHeader(chunk_bytes, object_id, bytes(data[:HEADER_BYTES]))


def count_chunks(plain_bytes: int, chunk_bytes: int) -> int:
    """How many chunks hold `plain_bytes` (at least one)."""
    return max(1, -(-plain_bytes // chunk_bytes))


def compute_sealed_size(plain_bytes: int, chunk_bytes: int) -> int:
    """A sealed object's size for its plaintext's."""
    return (
        HEADER_BYTES + plain_bytes + count_chunks(plain_bytes, chunk_bytes) * CHUNK_OVERHEAD_BYTES
    )


def compute_plain_size(sealed_bytes: int, chunk_bytes: int) -> int:
    """The plaintext size of a sealed object of `sealed_bytes`; EncryptionError if none fits."""
    body = sealed_bytes - HEADER_BYTES
    record = chunk_bytes + CHUNK_OVERHEAD_BYTES
    chunks = max(1, -(-body // record))
    plain = body - chunks * CHUNK_OVERHEAD_BYTES
    if plain < 0 or compute_sealed_size(plain, chunk_bytes) != sealed_bytes:
        raise EncryptionError(f"a sealed object cannot be {sealed_bytes} bytes long: truncated")
    return plain


def plan_range(start: int, end: int | None, plain_bytes: int, chunk_bytes: int) -> ChunkPlan:
    """The chunks that hold plaintext [start, end) (clipped), as a range of sealed bytes."""
    stop = plain_bytes if end is None else min(end, plain_bytes)
    chunks = count_chunks(plain_bytes, chunk_bytes)
    record = chunk_bytes + CHUNK_OVERHEAD_BYTES
    if start >= stop:
        return ChunkPlan(0, chunks, HEADER_BYTES, HEADER_BYTES, 0, 0)
    first = start // chunk_bytes
    last = (stop - 1) // chunk_bytes
    sealed_end = min(
        HEADER_BYTES + (last + 1) * record, compute_sealed_size(plain_bytes, chunk_bytes)
    )
    return ChunkPlan(
        first_chunk=first,
        chunk_count=chunks,
        sealed_start=HEADER_BYTES + first * record,
        sealed_end=sealed_end,
        skip_bytes=start - first * chunk_bytes,
        length=stop - start,
    )


def build_chunk_aad(header: SealedHeader, object_key: str, index: int, final: bool) -> bytes:
    """The associated data chunk `index` of an object is sealed with."""
    key_bytes = object_key.encode()
    return header.raw + struct.pack(">I", len(key_bytes)) + key_bytes + _AAD_TAIL.pack(index, final)


def seal_chunk(
    cipher: AESGCM, header: SealedHeader, object_key: str, index: int, final: bool, data: bytes
) -> bytes:
    """One chunk's record: a fresh nonce, the ciphertext and its tag."""
    nonce = os.urandom(NONCE_BYTES)
    aad = build_chunk_aad(header, object_key, index, final)
    return nonce + cipher.encrypt(nonce, data, aad)


def open_chunk(
    cipher: AESGCM, header: SealedHeader, object_key: str, index: int, final: bool, record: bytes
) -> bytes:
    """One chunk's plaintext; EncryptionError if it was altered, moved or cut short."""
    aad = build_chunk_aad(header, object_key, index, final)
    try:
        return cipher.decrypt(record[:NONCE_BYTES], record[NONCE_BYTES:], aad)
    except InvalidTag:
        raise EncryptionError(
            f"chunk {index} of {object_key!r} failed authentication: altered, moved or truncated"
        ) from None


def seal_stream(
    source: BinaryIO,
    out: BinaryIO,
    data_key: bytes,
    object_key: str,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> tuple[int, str]:
    """Seal `source` into `out`; returns the plaintext's size and SHA-256 hex."""
    cipher = AESGCM(data_key)
    header = build_header(chunk_bytes, os.urandom(16))
    out.write(header.raw)
    digest = hashlib.sha256()
    size = 0
    index = 0
    current = source.read(chunk_bytes)
    while True:
        following = source.read(chunk_bytes) if len(current) == chunk_bytes else b""
        final = not following
        out.write(seal_chunk(cipher, header, object_key, index, final, current))
        digest.update(current)
        size += len(current)
        if final:
            return size, digest.hexdigest()
        current = following
        index += 1


def open_records(
    cipher: AESGCM, header: SealedHeader, object_key: str, plan: ChunkPlan, sealed: bytes
) -> Iterator[bytes]:
    """The plaintext of the whole chunk records `sealed` holds, from the plan's first chunk."""
    record = header.chunk_bytes + CHUNK_OVERHEAD_BYTES
    for offset in range(0, len(sealed), record):
        index = plan.first_chunk + offset // record
        final = index == plan.chunk_count - 1
        yield open_chunk(cipher, header, object_key, index, final, sealed[offset : offset + record])
