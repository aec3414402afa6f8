"""Open the storage backend the settings name."""

from pathlib import Path

from mediaserver.settings import Settings
from mediaserver.storage_backends.gcs import GcsStore, RetryPolicy
from mediaserver.storage_backends.local import LocalStore
from mediaserver.storage_backends.store import ObjectStore


async def open_store(settings: Settings) -> ObjectStore:
    """Local directory or GCS bucket, as `storage_type` says."""
    if settings.storage_type == "local":
        return LocalStore(Path(settings.storage_path))
    return await GcsStore.open(
        settings.storage_path,
        create_bucket=settings.gcs_create_bucket,
        retry_policy=RetryPolicy(deadline_s=settings.upload_deadline_s),
    )
