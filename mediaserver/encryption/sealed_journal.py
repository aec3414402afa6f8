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

import bisect
import io
import os
import struct
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

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
    with SealedJournalReader(io.BytesIO(data), data_key, identity) as reader:
        return reader.read()


class SealedJournalReader(io.RawIOBase):
    """The plain journal a sealed file holds, read and sought one segment at a time."""

    # Every segment is authenticated when the reader opens (a journal altered anywhere is
    # refused before anything is built from it); then only the segment being read is held, so
    # reading a long call's journal takes memory of one segment, not of the call.

    def __init__(self, raw: BinaryIO, data_key: bytes, identity: str) -> None:
        """Index and authenticate the sealed file `raw` (which the reader then owns)."""
        super().__init__()
        self._raw = raw
        self._identity = identity
        size = raw.seek(0, io.SEEK_END)
        raw.seek(0)
        self._header = raw.read(HEADER_BYTES)
        if len(self._header) < HEADER_BYTES or not is_sealed_journal(self._header):
            raise EncryptionError(f"journal {identity} is not sealed")
        _, version, _ = _HEADER.unpack(self._header)
        if version != VERSION:
            raise EncryptionError(f"sealed journal version {version} is not supported")
        self._cipher = AESGCM(data_key)
        # Per whole segment: where its nonce starts in the file, its sealed length, and where
        # its plain bytes start in the journal. A segment cut short by a crash ends the list.
        self._nonce_at = array("q")
        self._sealed_length = array("q")
        self._plain_start = array("q")
        plain_bytes = 0
        offset = HEADER_BYTES
        while offset + _LENGTH.size + NONCE_BYTES <= size:
            raw.seek(offset)
            (length,) = _LENGTH.unpack(raw.read(_LENGTH.size))
            nonce_at = offset + _LENGTH.size
            if length < TAG_BYTES or nonce_at + NONCE_BYTES + length > size:
                break
            self._nonce_at.append(nonce_at)
            self._sealed_length.append(length)
            self._plain_start.append(plain_bytes)
            plain_bytes += length - TAG_BYTES
            offset = nonce_at + NONCE_BYTES + length
        self._size = plain_bytes
        self._position = 0
        self._held: tuple[int, bytes] = (-1, b"")
        for index in range(len(self._nonce_at)):
            self._segment(index)

    def readable(self) -> bool:
        """A reader."""
        return True

    def seekable(self) -> bool:
        """Seeks anywhere in the plain journal."""
        return True

    def tell(self) -> int:
        """The position in the plain journal."""
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move in the plain journal (as `io.IOBase.seek`); the new position."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        """Read from the segment holding the position, up to its end; 0 at the journal's end."""
        if self._position >= self._size:
            return 0
        index = bisect.bisect_right(self._plain_start, self._position) - 1
        plain = self._segment(index)
        at = self._position - self._plain_start[index]
        count = min(len(buffer), len(plain) - at)
        memoryview(buffer).cast("B")[:count] = plain[at : at + count]
        self._position += count
        return count

    def close(self) -> None:
        """Close the sealed file."""
        if not self.closed:
            self._raw.close()
        super().close()

    def _segment(self, index: int) -> bytes:
        """Segment `index` opened (the last one opened is kept)."""
        held_index, plain = self._held
        if held_index == index:
            return plain
        self._raw.seek(self._nonce_at[index])
        nonce = self._raw.read(NONCE_BYTES)
        sealed = self._raw.read(self._sealed_length[index])
        try:
            plain = self._cipher.decrypt(
                nonce, sealed, _segment_aad(self._header, self._identity, index)
            )
        except InvalidTag:  # altered, reordered, or not this journal's key
            raise EncryptionError(
                f"segment {index} of journal {self._identity} failed authentication"
            ) from None
        self._held = (index, plain)
        return plain
