"""Deleting a stored recording: every object first, the manifest last; one routine for all."""

# The API's DELETE and the retention sweep both come here. Under the recording's lock (the one job
# states are written under, so no job writes its manifest or results meanwhile), the manifest is
# read again: a hold placed since the caller looked is seen, and a recording already gone is
# nothing to do. Then every object goes: the seed's names for each role, whatever the manifest
# lists, what post-call jobs derived (analysis, transcripts), and the data key of an encrypted
# recording; the manifest last. A crash in between leaves a manifest whose files are (partly)
# gone, still listed and deletable again, never audio that nothing points to. Job state lives in
# the manifest; queued jobs of a deleted recording find it gone and end.

from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from mediaserver.errors import ObjectNotFoundError, RecordingHeldError
from mediaserver.jobs.state_store import JobStateStore
from mediaserver.lifecycle.policy import compute_retention
from mediaserver.recording.manifest import Manifest
from mediaserver.storage_backends.keys import build_recording_keys

log = structlog.get_logger(__name__)


def parse_created_at(manifest: Manifest) -> datetime:
    """A manifest's creation time as an aware datetime."""
    return datetime.strptime(manifest.created_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def list_object_keys(manifest: Manifest, manifest_key: str) -> list[str]:
    """Every key a recording may have besides its manifest: its data key first, then sorted."""
    # The data key first: once it is gone, whatever an interrupted delete left is unreadable.
    standard = build_recording_keys(manifest.call_id, parse_created_at(manifest))
    keys = set(standard.object_keys())
    keys |= {entry.key for entry in manifest.files if entry.key is not None}
    keys -= {manifest_key, standard.envelope}
    return [standard.envelope, *sorted(keys)]


class RecordingDeleter:
    """Deletes recordings from the store, holding each one's lock."""

    def __init__(
        self, states: JobStateStore, *, on_deleted: Callable[[str], None] | None = None
    ) -> None:
        """Delete from `states`' store under its per-recording locks (jobs hold them too)."""
        self.states = states
        self._on_deleted = on_deleted

    async def delete(self, call_id: str, manifest_key: str) -> int:
        """Delete every object of one recording, manifest last; how many keys were removed.

        RecordingHeldError if it is under legal hold; 0 if it was gone already.
        """
        async with self.states.locked(call_id):
            manifest = await self.states.read_manifest(manifest_key)
            if manifest is None:
                return 0
            if compute_retention(manifest.lifecycle, parse_created_at(manifest), 0).is_held:
                raise RecordingHeldError(
                    f"recording {call_id} is under legal hold: release it before deleting it"
                )
            keys = list_object_keys(manifest, manifest_key)
            removed = 0
            for key in keys:
                removed += await self._delete_if_present(key)
            removed += await self._delete_if_present(manifest_key)
        if self._on_deleted is not None:
            self._on_deleted(call_id)
        log.info("recording.deleted", call_id=call_id, objects=removed)
        return removed

    async def _delete_if_present(self, key: str) -> int:
        """Delete one object; one already gone is fine (a retried or partial delete)."""
        try:
            await self.states.store.delete(key)
        except ObjectNotFoundError:
            return 0
        return 1
