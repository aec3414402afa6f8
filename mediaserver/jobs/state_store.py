"""JobStateStore: keeps each job's state in its recording's manifest, one writer per recording."""

# The state lives with the recording (the manifest's "jobs"), so the API shows it wherever the
# recording is read and a restart finds it. Every rewrite of a manifest goes through one
# per-recording lock, so job transitions and API requests never overwrite each other. With
# several nodes the lock is Redis's (jobs/redis_lock.py), given as `locks`.

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import structlog

from mediaserver.clock import Clock, SystemClock
from mediaserver.errors import StorageError
from mediaserver.jobs.objects import read_text_object, write_text_object
from mediaserver.jobs.state import JobKind, JobState, parse_job_states
from mediaserver.recording.manifest import Manifest, format_utc, parse_manifest
from mediaserver.storage_backends.keys import MANIFEST_CONTENT_TYPE
from mediaserver.storage_backends.store import ObjectStore

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Lock:
    """A recording's lock and how many tasks hold or wait for it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class RecordingLocks(Protocol):
    """Locks shared with other processes, one per recording."""

    def locked(self, call_id: str) -> AbstractAsyncContextManager[None]:
        """Hold the recording's lock for a block."""
        ...


class JobStateStore:
    """Reads manifests and rewrites their job states, serialized per recording."""

    def __init__(
        self,
        store: ObjectStore,
        scratch_dir: Path,
        clock: Clock | None = None,
        locks: RecordingLocks | None = None,
    ) -> None:
        """Keep states in `store`'s manifests; temporary files go to `scratch_dir`."""
        self.store = store
        self._shared_locks = locks
        self.scratch_dir = scratch_dir
        self.clock: Clock = clock or SystemClock()
        self._locks: dict[str, _Lock] = {}

    def now(self) -> str:
        """The current time as the manifest writes times."""
        return format_utc(self.clock.wall_ns())

    @contextlib.asynccontextmanager
    async def locked(self, call_id: str) -> AsyncIterator[None]:
        """Hold the recording's lock (forgotten again once nobody holds or waits for it)."""
        entry = self._locks.setdefault(call_id, _Lock())
        entry.users += 1
        try:
            async with entry.lock:  # this process's tasks queue here, not on the shared lock
                if self._shared_locks is None:
                    yield
                else:
                    async with self._shared_locks.locked(call_id):
                        yield
        finally:
            entry.users -= 1
            if not entry.users:
                self._locks.pop(call_id, None)

    async def read_manifest(self, manifest_key: str) -> Manifest | None:
        """The stored manifest, or None if it is gone (the recording was deleted)."""
        text = await read_text_object(self.store, manifest_key)
        if text is None:
            return None
        try:
            return parse_manifest(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"manifest {manifest_key!r} is unreadable: {exc}") from exc

    async def read_states(self, manifest_key: str) -> dict[JobKind, JobState]:
        """The job states a stored manifest holds (none if it is gone)."""
        manifest = await self.read_manifest(manifest_key)
        return {} if manifest is None else parse_job_states(manifest.jobs)

    async def write_state(self, manifest_key: str, state: JobState) -> Manifest | None:
        """Put one job's state into the manifest (hold `locked`); None if the manifest is gone."""
        manifest = await self.read_manifest(manifest_key)
        if manifest is None:
            return None
        updated = replace(manifest, jobs={**manifest.jobs, state.kind.value: state.to_dict()})
        await write_text_object(
            self.store,
            manifest_key,
            updated.to_json(),
            content_type=MANIFEST_CONTENT_TYPE,
            scratch_dir=self.scratch_dir,
        )
        log.info(
            "job.state",
            call_id=manifest.call_id,
            kind=state.kind.value,
            status=state.status.value,
            job_id=state.job_id,
        )
        return updated
