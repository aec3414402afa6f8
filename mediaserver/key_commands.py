"""`mediaserver decrypt` and `mediaserver rekey`: the operator's offline side of encryption."""

# decrypt reads the configured store (a local directory, or the bucket) with the operator's
# private key, which the server itself may never hold, and writes every recording's objects in
# plain under the same keys in a local directory; the manifest's SHA-256 of each file checks the
# result. rekey re-wraps each recording's data key (and the spool's, for calls not yet stored)
# for a new key pair: only the small envelopes are rewritten, never the audio.

import asyncio
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import structlog

from mediaserver.encryption.envelope import (
    Envelope,
    compute_key_id,
    parse_envelope,
    unwrap_data_key,
    wrap_data_key,
)
from mediaserver.encryption.keyring import Keyring, load_private_key, load_public_key
from mediaserver.errors import EncryptionError, StorageError
from mediaserver.recording.manifest import parse_manifest
from mediaserver.recording.spool import Spool
from mediaserver.settings import Settings
from mediaserver.storage_backends.envelope_store import EnvelopeStore
from mediaserver.storage_backends.factory import open_backend
from mediaserver.storage_backends.keys import (
    ENVELOPE_SUFFIX,
    JSON_CONTENT_TYPE,
    RECORDINGS_PREFIX,
    parse_recording_key,
)
from mediaserver.storage_backends.store import ObjectStore

log = structlog.get_logger(__name__)

PLAIN_FILE_MODE = 0o600  # decrypted recordings are personal data: the owner's only


@dataclass(slots=True)
class DecryptReport:
    """What `decrypt` wrote, per recording; what did not match, failed, or was not found."""

    files: dict[str, list[Path]] = field(default_factory=dict)
    verified: int = 0
    mismatched: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (call id, why)
    missing: list[str] = field(default_factory=list)  # asked for with --call-id, not stored


@dataclass(slots=True)
class RekeyReport:
    """Envelopes rewrapped, already done, and failed (with why)."""

    rewrapped: list[str] = field(default_factory=list)
    already: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def describe_store(settings: Settings) -> str:
    """Where the configured store is, as an operator writes it."""
    if settings.storage_type == "gcs":
        return f"gs://{settings.storage_path}"
    return str(Path(settings.storage_path))


async def _open_existing_backend(settings: Settings) -> ObjectStore:
    """The configured store; a local directory that does not exist is a mistake, not empty."""
    if settings.storage_type == "local" and not await asyncio.to_thread(
        Path(settings.storage_path).is_dir
    ):
        raise StorageError(f"storage_path {settings.storage_path} is not a directory")
    return await open_backend(settings)


async def decrypt_recordings(
    settings: Settings, output: Path, private_key_path: Path, call_ids: set[str]
) -> DecryptReport:
    """Write the plain objects of the recordings (all, or `call_ids`) under `output`."""
    private = await asyncio.to_thread(load_private_key, private_key_path)
    inner = await _open_existing_backend(settings)
    store = EnvelopeStore(inner, Keyring(private.public_key(), private))
    report = DecryptReport()
    try:
        objects: dict[str, list[str]] = {}
        for info in await inner.list_objects(RECORDINGS_PREFIX):
            found = parse_recording_key(info.key)
            if found is None or found.name == "envelope.json":
                continue
            if call_ids and found.call_id not in call_ids:
                continue
            objects.setdefault(found.call_id, []).append(info.key)
        report.missing = sorted(call_ids - set(objects))
        for call_id, keys in sorted(objects.items()):
            written: list[Path] = []
            try:
                for key in keys:
                    target = output / key
                    await _download(store, key, target)
                    written.append(target)
            except (EncryptionError, StorageError) as exc:
                # A recording is written whole or not at all: no empty or cut file is left to
                # be taken for the plaintext. The others go on.
                await asyncio.to_thread(_remove, written)
                report.failed.append((call_id, str(exc)))
                continue
            report.files[call_id] = written
            await asyncio.to_thread(_verify, written, report)
    finally:
        await inner.close()
    return report


async def _download(store: ObjectStore, key: str, target: Path) -> None:
    """Copy an object's plaintext to a file readable by its owner only, renamed in when whole."""
    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    out = await asyncio.to_thread(_open_private, partial)
    try:
        try:
            async for chunk in store.iter_range(key):
                await asyncio.to_thread(out.write, chunk)
        finally:
            await asyncio.to_thread(out.close)
        await asyncio.to_thread(partial.replace, target)
    finally:
        await asyncio.to_thread(partial.unlink, missing_ok=True)


def _open_private(path: Path) -> BinaryIO:
    """A new file, mode 0600 whatever the umask, for writing (blocking)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PLAIN_FILE_MODE)
    os.fchmod(fd, PLAIN_FILE_MODE)  # an existing file keeps its mode through O_CREAT
    return os.fdopen(fd, "wb")


def _remove(paths: list[Path]) -> None:
    """Delete the files written for a recording that failed (blocking)."""
    for path in paths:
        path.unlink(missing_ok=True)


def _verify(paths: list[Path], report: DecryptReport) -> None:
    """Compare each written file with its manifest's SHA-256 (blocking)."""
    manifests = [p for p in paths if p.name.endswith("_manifest.json")]
    for manifest_path in manifests:
        manifest = parse_manifest(manifest_path.read_text())
        for entry in manifest.files:
            if entry.key is None:
                continue
            written = manifest_path.parent / entry.key.rsplit("/", 1)[-1]
            if not written.exists():
                continue
            if hashlib.sha256(written.read_bytes()).hexdigest() == entry.sha256:
                report.verified += 1
            else:
                report.mismatched.append(written)


async def rekey_recordings(
    settings: Settings, old_private_path: Path, new_public_path: Path
) -> RekeyReport:
    """Re-wrap every stored and spooled data key from the old key pair to the new public key."""
    old = await asyncio.to_thread(load_private_key, old_private_path)
    new = await asyncio.to_thread(load_public_key, new_public_path)
    new_id = compute_key_id(new)
    report = RekeyReport()

    def rewrap(text: bytes | str) -> Envelope | None:
        envelope = parse_envelope(text)
        if envelope.public_key_sha256 == new_id:
            report.already += 1
            return None
        return wrap_data_key(new, envelope.call_id, unwrap_data_key(old, envelope))

    inner = await _open_existing_backend(settings)
    try:
        for info in await inner.list_objects(RECORDINGS_PREFIX):
            if not info.key.endswith(ENVELOPE_SUFFIX):
                continue
            try:
                rewrapped = rewrap(await inner.get_range(info.key))
            except EncryptionError as exc:
                report.failed.append((info.key, str(exc)))
                continue
            if rewrapped is not None:
                await _put_text(inner, info.key, rewrapped.to_json())
                report.rewrapped.append(info.key)
    finally:
        await inner.close()
    for spool in await asyncio.to_thread(Spool(settings.spool_path).list_calls):
        text = await asyncio.to_thread(spool.read_envelope)
        if text is None:
            continue
        where = str(spool.directory / "envelope.json")
        try:
            rewrapped = rewrap(text)
        except EncryptionError as exc:
            report.failed.append((where, str(exc)))
            continue
        if rewrapped is not None:
            await asyncio.to_thread(spool.write_envelope, rewrapped.to_json())
            report.rewrapped.append(where)
    log.info(
        "encryption.rekeyed",
        rewrapped=len(report.rewrapped),
        already=report.already,
        failed=len(report.failed),
        new_public_key_sha256=new_id,
    )
    return report


async def _put_text(store: ObjectStore, key: str, text: str) -> None:
    """Store a small text object through a temporary file."""
    fd, name = await asyncio.to_thread(tempfile.mkstemp, prefix=".envelope.", suffix=".json")
    path = Path(name)
    try:
        await asyncio.to_thread(_write_fd, fd, text.encode())
        await store.put_file(key, path, content_type=JSON_CONTENT_TYPE)
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)


def _write_fd(fd: int, data: bytes) -> None:
    """Write and close a file descriptor."""
    with os.fdopen(fd, "wb") as out:
        out.write(data)
