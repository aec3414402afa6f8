"""Placing and releasing a legal hold: the manifest says it, under the recording's lock."""

from dataclasses import replace
from typing import Any

from mediaserver.jobs.objects import write_text_object
from mediaserver.jobs.state_store import JobStateStore
from mediaserver.lifecycle.policy import with_hold
from mediaserver.recording.manifest import Manifest
from mediaserver.storage_backends.keys import MANIFEST_CONTENT_TYPE


async def write_hold(
    states: JobStateStore, call_id: str, manifest_key: str, hold: dict[str, Any] | None
) -> Manifest | None:
    """Set (or with None, release) a recording's hold; None if the recording is gone."""
    async with states.locked(call_id):
        manifest = await states.read_manifest(manifest_key)
        if manifest is None:
            return None
        updated = replace(manifest, lifecycle=with_hold(manifest.lifecycle, hold))
        await write_text_object(
            states.store,
            manifest_key,
            updated.to_json(),
            content_type=MANIFEST_CONTENT_TYPE,
            scratch_dir=states.scratch_dir,
        )
        return updated
