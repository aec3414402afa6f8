"""Sealed journals: a live call's packets sealed with its data key at every flush."""

# A journal grows while the call lasts and must survive a crash up to its last flush, so it is
# sealed in segments rather than fixed chunks: the writer keeps what the journal writes and seals
# it as one AES-256-GCM segment each time the recorder flushes (every flush_interval_s) or when it
# reaches SEGMENT_MAX_BYTES. Layout (integers big-endian):
#
#   header, 24 bytes: magic "MSJE" | version 1 | 3 reserved | file id (16 random bytes)
#   segments:         ciphertext length incl. tag (u32) | nonce (12) | ciphertext | tag (16)
#
# Each segment's associated data is the header, the journal's identity (call id and channel) and
# the segment's index: segments cannot be reordered or moved between journals. A crash leaves at
# most a torn last segment, which the reader skips, as it skips a torn last plain record.

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mediaserver.errors import EncryptionError

MAGIC = b"MSJE"
VERSION = 1
_HEADER = struct.Struct(">4sB3x16s")
HEADER_BYTES = _HEADER.size  # 24
_LENGTH = struct.Struct(">I")
NONCE_BYTES = 12
TAG_BYTES = 16
SEGMENT_MAX_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class JournalSealing:
    """How a live call's journals are sealed: its data key, and its envelope for the spool."""

    data_key: bytes
    envelope_json: str


def open_sealed_journal_file(path: Path, data_key: bytes, identity: str) -> BinaryIO:
    """A new journal file at `path` that seals what is written to it."""
    raw = path.open("wb", buffering=0)
    # A write-only stream with the three methods journals use (write, flush, close).
    return cast(BinaryIO, SealedJournalStream(raw, data_key, identity))


def is_sealed_journal(prefix: bytes) -> bool:
    """Whether a journal file is sealed (a plain one starts with MSJ1)."""
    return prefix[: len(MAGIC)] == MAGIC


def _segment_aad(header: bytes, identity: str, index: int) -> bytes:
    """What segment `index` of a journal is bound to."""
    return header + identity.encode() + struct.pack(">Q", index)


class SealedJournalStream:
    """A write-only stream that seals what it is given, one segment per flush."""

    def __init__(self, raw: BinaryIO, data_key: bytes, identity: str) -> None:
        """Seal into the unbuffered file `raw`; `identity` is e.g. "<call id>/caller"."""
        self._raw = raw
        self._cipher = AESGCM(data_key)
        self._identity = identity
        self._header = _HEADER.pack(MAGIC, VERSION, os.urandom(16))
        self._buffer = bytearray()
        self._index = 0
        raw.write(self._header)

    def write(self, data: bytes) -> int:
        """Take bytes to seal at the next flush (O(1): an append)."""
        self._buffer += data
        if len(self._buffer) >= SEGMENT_MAX_BYTES:
            self._seal()
        return len(data)

    def flush(self) -> None:
        """Seal what was written since the last flush and hand it to the operating system."""
        self._seal()
        self._raw.flush()

    def close(self) -> None:
        """Seal the rest and close the file."""
        if not self._raw.closed:
            self._seal()
            self._raw.close()

    @property
    def closed(self) -> bool:
        """Whether the file is closed."""
        return self._raw.closed

    def _seal(self) -> None:
        """Write the buffer as one segment."""
        if not self._buffer:
            return
        nonce = os.urandom(NONCE_BYTES)
        aad = _segment_aad(self._header, self._identity, self._index)
        sealed = self._cipher.encrypt(nonce, bytes(self._buffer), aad)
        self._raw.write(_LENGTH.pack(len(sealed)) + nonce + sealed)
        self._buffer.clear()
        self._index += 1


def open_sealed_journal(data: bytes, data_key: bytes, identity: str) -> bytes:
    """The plain journal a sealed one holds, up to its last whole segment."""
    if len(data) < HEADER_BYTES or not is_sealed_journal(data):
        raise EncryptionError(f"journal {identity} is not sealed")
    _, version, _ = _HEADER.unpack_from(data)
    if version != VERSION:
        raise EncryptionError(f"sealed journal version {version} is not supported")
    header = data[:HEADER_BYTES]
    cipher = AESGCM(data_key)
    plain = bytearray()
    offset = HEADER_BYTES
    index = 0
    while offset + _LENGTH.size + NONCE_BYTES <= len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        start = offset + _LENGTH.size + NONCE_BYTES
        if length < TAG_BYTES or start + length > len(data):
            break  # a segment cut short by a crash: everything before it is whole
        nonce = data[offset + _LENGTH.size : start]
        try:
            plain += cipher.decrypt(
                nonce, data[start : start + length], _segment_aad(header, identity, index)
            )
        except InvalidTag:  # altered, reordered, or not this journal's key
            raise EncryptionError(
                f"segment {index} of journal {identity} failed authentication"
            ) from None
        offset = start + length
        index += 1
    return bytes(plain)
