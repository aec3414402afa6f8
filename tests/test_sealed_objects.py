"""Sealed objects and journals: ranges byte-exact, tampering refused, keys wrapped with RSA."""

import hashlib
import io
import os
import random
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver.encryption.envelope import parse_envelope, unwrap_data_key
from mediaserver.encryption.keyring import Keyring
from mediaserver.encryption.sealed_journal import (
    TAG_BYTES,
    SealedJournalReader,
    SealedJournalStream,
    open_sealed_journal,
)
from mediaserver.encryption.sealed_object import (
    CHUNK_OVERHEAD_BYTES,
    HEADER_BYTES,
    compute_plain_size,
    compute_sealed_size,
    plan_range,
)
from mediaserver.errors import EncryptionError, EncryptionKeyUnavailableError
from mediaserver.recording.channel import Channel
from mediaserver.recording.spool import CallSpool
from mediaserver.storage_backends.envelope_store import EnvelopeStore
from mediaserver.storage_backends.keys import build_recording_keys
from mediaserver.storage_backends.local import LocalStore

KEYS = build_recording_keys("sealtest", datetime(2026, 11, 22, tzinfo=UTC))
CHUNK = 4096  # small chunks: many boundaries in little data


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    """One operator key pair for the module (generating one takes a moment)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _store(root: Path, key: rsa.RSAPrivateKey, *, private: bool = True) -> EnvelopeStore:
    """An EnvelopeStore over a local directory."""
    keyring = Keyring(key.public_key(), key if private else None)
    return EnvelopeStore(LocalStore(root), keyring, chunk_bytes=CHUNK)


@pytest.mark.parametrize("plain_bytes", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 77])
def test_sizes_map_both_ways(plain_bytes: int) -> None:
    """Plaintext size -> sealed size -> plaintext size, every chunk carrying its overhead."""
    sealed = compute_sealed_size(plain_bytes, CHUNK)
    chunks = max(1, -(-plain_bytes // CHUNK))
    assert sealed == HEADER_BYTES + plain_bytes + chunks * CHUNK_OVERHEAD_BYTES
    assert compute_plain_size(sealed, CHUNK) == plain_bytes
    # Sizes no plaintext seals to: shorter than one record, or a record too short for its
    # nonce and tag. (Whole records cut off the end are caught by the final chunk's flag.)
    for impossible in (HEADER_BYTES + 10, HEADER_BYTES + CHUNK + CHUNK_OVERHEAD_BYTES + 10):
        with pytest.raises(EncryptionError, match="truncated"):
            compute_plain_size(impossible, CHUNK)


def test_a_range_reads_only_the_chunks_it_touches() -> None:
    """Bytes 5000..9000 of 10 chunks: chunks 1 and 2, nothing else."""
    plan = plan_range(5000, 9000, 10 * CHUNK, CHUNK)
    record = CHUNK + CHUNK_OVERHEAD_BYTES
    assert (plan.first_chunk, plan.skip_bytes, plan.length) == (1, 5000 - CHUNK, 4000)
    assert plan.sealed_start == HEADER_BYTES + record
    assert plan.sealed_end == HEADER_BYTES + 3 * record


async def test_every_range_is_byte_exact(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """Random ranges (and the whole) of a sealed object equal the plaintext's; stat is plain."""
    data = random.Random(7).randbytes(13 * CHUNK + 123)
    source = tmp_path / "left.opus"
    source.write_bytes(data)
    store = _store(tmp_path / "store", rsa_key)
    await store.put_file(KEYS.left, source, content_type="audio/ogg")
    stored = (tmp_path / "store" / KEYS.left).read_bytes()
    assert len(stored) == compute_sealed_size(len(data), CHUNK)
    assert data[:64] not in stored
    assert (await store.stat(KEYS.left)).size_bytes == len(data)
    assert await store.get_range(KEYS.left) == data
    rng = random.Random(3)
    for _ in range(200):
        start = rng.randrange(0, len(data) + 10)
        end = rng.choice([None, start + rng.randrange(0, 3 * CHUNK)])
        assert await store.get_range(KEYS.left, start, end) == data[start:end], (start, end)
    chunks = [c async for c in store.iter_range(KEYS.left, 100, 9 * CHUNK, chunk_bytes=1000)]
    assert b"".join(chunks) == data[100 : 9 * CHUNK]


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=3 * 1024), chunk=st.integers(min_value=1, max_value=700))
def test_sealing_round_trips_any_bytes(data: bytes, chunk: int) -> None:
    """Any plaintext and chunk size: the plan covers exactly the plaintext."""
    sealed = compute_sealed_size(len(data), chunk)
    assert compute_plain_size(sealed, chunk) == len(data)
    plan = plan_range(0, None, len(data), chunk)
    assert plan.length == len(data)
    assert plan.sealed_end - plan.sealed_start == (sealed - HEADER_BYTES if data else 0)


async def test_tampered_reordered_swapped_or_cut_chunks_are_refused(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """A flipped bit, two chunks swapped, a chunk from another object, a cut tail: refused."""
    store = _store(tmp_path / "store", rsa_key)
    data = os.urandom(4 * CHUNK)
    for key in (KEYS.left, KEYS.right):
        source = tmp_path / "x"
        source.write_bytes(data)
        await store.put_file(key, source, content_type="audio/ogg")
    left_path = tmp_path / "store" / KEYS.left
    right_path = tmp_path / "store" / KEYS.right
    good = left_path.read_bytes()
    record = CHUNK + CHUNK_OVERHEAD_BYTES

    def chunk_at(blob: bytes, index: int) -> bytes:
        return blob[HEADER_BYTES + index * record : HEADER_BYTES + (index + 1) * record]

    flipped = bytearray(good)
    flipped[HEADER_BYTES + record + 40] ^= 1
    swapped = (
        good[:HEADER_BYTES]
        + chunk_at(good, 1)
        + chunk_at(good, 0)
        + good[HEADER_BYTES + 2 * record :]
    )
    foreign = (
        good[:HEADER_BYTES] + chunk_at(right_path.read_bytes(), 0) + good[HEADER_BYTES + record :]
    )
    cut = good[: HEADER_BYTES + 3 * record]  # whole chunks dropped from the end
    for bad in (bytes(flipped), swapped, foreign, cut):
        left_path.write_bytes(bad)
        with pytest.raises(EncryptionError, match="failed authentication"):
            await store.get_range(KEYS.left)
        store = _store(tmp_path / "store", rsa_key)  # no cached header from the last version


async def test_without_the_private_key_it_stores_but_cannot_read(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """A store-only server seals; reads say why they cannot be served; the envelope unwraps."""
    store = _store(tmp_path / "store", rsa_key, private=False)
    source = tmp_path / "peaks.json"
    source.write_bytes(b'{"version": 2}')
    await store.put_file(KEYS.peaks, source, content_type="application/json")
    await store.put_file(KEYS.right, source, content_type="audio/ogg")
    with pytest.raises(EncryptionKeyUnavailableError, match="no private key"):
        await store.get_range(KEYS.peaks)
    envelope = parse_envelope((tmp_path / "store" / KEYS.envelope).read_bytes())
    data_key = unwrap_data_key(rsa_key, envelope)
    # The wrapping is RSAES-OAEP-SHA256, as the envelope says: cryptography's own OAEP unwraps it.
    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    assert rsa_key.decrypt(envelope.wrapped_key, oaep) == data_key
    assert len(data_key) == 32
    assert await _store(tmp_path / "store", rsa_key).get_range(KEYS.peaks) == b'{"version": 2}'


async def test_manifests_envelopes_and_other_keys_stay_plain(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """The index and the wrapped key are not sealed; nor is anything outside recordings/."""
    store = _store(tmp_path / "store", rsa_key)
    source = tmp_path / "m.json"
    source.write_bytes(b'{"call_id": "sealtest"}')
    for key in (KEYS.manifest, "audit/2026/11/22/x.jsonl"):
        await store.put_file(key, source, content_type="application/json")
        assert (tmp_path / "store" / key).read_bytes() == b'{"call_id": "sealtest"}'
    assert await store.signed_url(KEYS.left, expires_s=60) is None


def test_a_journal_is_sealed_per_flush_and_a_torn_tail_is_dropped(tmp_path: Path) -> None:
    """Each flush is a segment; a crash mid-segment loses that segment only; order is bound."""
    data_key = AESGCM.generate_key(bit_length=256)
    path = tmp_path / "caller.journal"
    with path.open("wb", buffering=0) as raw:
        stream = SealedJournalStream(raw, data_key, "call1/caller")  # type: ignore[arg-type]
        stream.write(b"MSJ1 header ")
        stream.write(b"record one ")
        stream.flush()
        stream.write(b"record two")
        stream.flush()
        stream.write(b"never flushed")
        stream.close()
    sealed = path.read_bytes()
    assert b"record" not in sealed
    whole = open_sealed_journal(sealed, data_key, "call1/caller")
    assert whole == b"MSJ1 header record one record twonever flushed"
    assert open_sealed_journal(sealed[:-5], data_key, "call1/caller") == (
        b"MSJ1 header record one record two"
    )
    with pytest.raises(EncryptionError, match="failed authentication"):
        open_sealed_journal(sealed, data_key, "call1/agent")  # another journal's identity
    assert hashlib.sha256(sealed).digest() != hashlib.sha256(whole).digest()


def _seal_journal(path: Path, data_key: bytes, pieces: list[bytes], flushes: list[bool]) -> bytes:
    """Write `pieces` through a SealedJournalStream, flushing after those marked; the plain."""
    with path.open("wb", buffering=0) as raw:
        stream = SealedJournalStream(raw, data_key, "call1/caller")  # type: ignore[arg-type]
        for piece, flush in zip(pieces, flushes, strict=True):
            stream.write(piece)
            if flush:
                stream.flush()
        stream.close()
    return b"".join(pieces)


@settings(max_examples=60, deadline=None)
@given(
    pieces=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=40),
    flush_seed=st.integers(0, 2**32 - 1),
    reads=st.lists(st.tuples(st.integers(0, 70_000), st.integers(0, 9_000)), max_size=30),
)
def test_a_sealed_journal_reads_and_seeks_as_its_plain_bytes(
    tmp_path_factory: pytest.TempPathFactory,
    pieces: list[bytes],
    flush_seed: int,
    reads: list[tuple[int, int]],
) -> None:
    """Any mix of writes and flushes (segments of every size, some past SEGMENT_MAX_BYTES):
    whole, and at any seek and length, the reader gives the plain journal's bytes."""
    rng = random.Random(flush_seed)
    flushes = [rng.random() < 0.3 for _ in pieces]
    data_key = AESGCM.generate_key(bit_length=256)
    path = tmp_path_factory.mktemp("sealed") / "caller.journal"
    plain = _seal_journal(path, data_key, pieces, flushes)
    assert open_sealed_journal(path.read_bytes(), data_key, "call1/caller") == plain
    with io.BufferedReader(SealedJournalReader(path.open("rb"), data_key, "call1/caller")) as r:
        assert r.read() == plain
        for offset, length in reads:
            assert r.seek(offset) == offset
            assert r.read(length) == plain[offset : offset + length]
        assert r.seek(-1, io.SEEK_END) == len(plain) - 1


def test_a_sealed_journal_is_authenticated_whole_when_opened(tmp_path: Path) -> None:
    """A bit flipped in the last segment is refused before the first byte is read."""
    data_key = AESGCM.generate_key(bit_length=256)
    path = tmp_path / "caller.journal"
    _seal_journal(path, data_key, [b"a" * 100, b"b" * 100, b"c" * 100], [True, True, True])
    sealed = bytearray(path.read_bytes())
    sealed[-TAG_BYTES - 3] ^= 1  # inside the third segment's ciphertext
    path.write_bytes(bytes(sealed))
    with pytest.raises(EncryptionError, match="segment 2 of journal call1/caller failed"):
        SealedJournalReader(path.open("rb"), data_key, "call1/caller")


def test_reading_a_long_sealed_journal_holds_one_segment(tmp_path: Path) -> None:
    """16 MiB of journal (an hour of a call's packets is ~10) opened from the call's spool as
    a build opens it, read a block at a time: under one MiB held, not the journal's size."""
    data_key = AESGCM.generate_key(bit_length=256)
    spool = CallSpool(tmp_path / "call1")
    spool.directory.mkdir()
    pieces = [os.urandom(4096) for _ in range(4096)]
    flushes = [i % 4 == 3 for i in range(4096)]
    plain = _seal_journal(spool.journal_path(Channel.CALLER), data_key, pieces, flushes)
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        reader = spool.open_journal(Channel.CALLER, data_key)
        assert reader is not None
        with reader:
            while block := reader.read(1 << 16):
                digest.update(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest.digest() == hashlib.sha256(plain).digest()
    assert peak < 1 << 20, f"{peak} bytes held"
