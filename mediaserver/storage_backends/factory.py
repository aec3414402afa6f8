"""Open the storage backend the settings name."""

import asyncio
from pathlib import Path

import structlog

from mediaserver.encryption.keyring import Keyring
from mediaserver.settings import Settings
from mediaserver.storage_backends.envelope_store import EnvelopeStore
from mediaserver.storage_backends.gcs import GcsStore, RetryPolicy
from mediaserver.storage_backends.keys import RECORDINGS_PREFIX
from mediaserver.storage_backends.local import LocalStore
from mediaserver.storage_backends.store import ObjectStore

log = structlog.get_logger(__name__)


async def open_store(settings: Settings, keyring: Keyring | None = None) -> ObjectStore:
    """Local directory or GCS bucket, as `storage_type` says; sealed with `encryption`."""
    inner = await open_backend(settings)
    if settings.encryption != "envelope":
        return inner
    if keyring is None:
        keyring = await asyncio.to_thread(load_keyring, settings)
    assert keyring is not None
    return EnvelopeStore(inner, keyring)


def load_keyring(settings: Settings) -> Keyring | None:
    """The operator's keys when encryption is on (blocking: reads the PEM files)."""
    if settings.encryption != "envelope":
        return None
    private = settings.encryption_private_key_path
    keyring = Keyring.load(
        Path(settings.encryption_public_key_path), Path(private) if private else None
    )
    log.info(
        "storage.encryption",
        scheme="envelope",
        public_key_sha256=keyring.key_id,
        can_play=keyring.can_unwrap,
    )
    return keyring


def find_backend(store: ObjectStore) -> ObjectStore:
    """The backend under an encrypting store (or the store itself)."""
    return store.inner if isinstance(store, EnvelopeStore) else store


async def open_backend(settings: Settings) -> ObjectStore:
    """The local directory or the GCS bucket, as it stores bytes (sealed ones stay sealed)."""
    if settings.storage_type == "local":
        root = Path(settings.storage_path)
        await asyncio.to_thread(_warn_of_legacy_layout, root)
        return LocalStore(root)
    return await GcsStore.open(
        settings.storage_path,
        create_bucket=settings.gcs_create_bucket,
        retry_policy=RetryPolicy(deadline_s=settings.upload_deadline_s),
        kms_key_name=settings.kms_key_name or None,
    )


def _warn_of_legacy_layout(root: Path) -> None:
    """Say how to move recordings stored under the old default path (blocking: one stat)."""
    # Until storage_path defaulted to ./data it was ./data/recordings, and every key starts with
    # recordings/, so files landed in data/recordings/recordings/. With the new default those are
    # under keys no recording has; moving them up one level makes them readable again unchanged.
    legacy = root / RECORDINGS_PREFIX / RECORDINGS_PREFIX
    if legacy.is_dir():
        log.warning(
            "storage.legacy_layout",
            found=str(legacy),
            fix=f"mv {legacy}/* {root / RECORDINGS_PREFIX}/ && rmdir {legacy}",
        )
