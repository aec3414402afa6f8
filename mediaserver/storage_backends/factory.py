"""Open the storage backend the settings name."""

import asyncio
from pathlib import Path

import structlog

from mediaserver.settings import Settings
from mediaserver.storage_backends.gcs import GcsStore, RetryPolicy
from mediaserver.storage_backends.keys import RECORDINGS_PREFIX
from mediaserver.storage_backends.local import LocalStore
from mediaserver.storage_backends.store import ObjectStore

log = structlog.get_logger(__name__)


async def open_store(settings: Settings) -> ObjectStore:
    """Local directory or GCS bucket, as `storage_type` says."""
    if settings.storage_type == "local":
        root = Path(settings.storage_path)
        await asyncio.to_thread(_warn_of_legacy_layout, root)
        return LocalStore(root)
    return await GcsStore.open(
        settings.storage_path,
        create_bucket=settings.gcs_create_bucket,
        retry_policy=RetryPolicy(deadline_s=settings.upload_deadline_s),
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
