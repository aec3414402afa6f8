"""JobScheduler: queues the jobs of stored recordings and of API requests, and runs the queue."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager

import structlog

from mediaserver.errors import CallStateError, UnknownCallError
from mediaserver.jobs.queue import Job, JobHandler, JobQueue
from mediaserver.jobs.state import JobKind, JobState, build_queued, parse_job_states
from mediaserver.jobs.state_store import JobStateStore
from mediaserver.recording.manifest import Manifest

log = structlog.get_logger(__name__)

# (kind, parameters) of the jobs every stored recording gets, in the order they run.
JobPlan = Sequence[tuple[JobKind, Mapping[str, str]]]


def new_job_id() -> str:
    """A unique job id."""
    return "job_" + secrets.token_urlsafe(12)


class JobScheduler:
    """Owns the queue's consumer task and the short tasks that queue jobs."""

    def __init__(
        self,
        *,
        queue: JobQueue,
        states: JobStateStore,
        plan: JobPlan,
        handler: JobHandler | None,
    ) -> None:
        """Queue `plan` for each stored recording; run jobs with `handler` (None: elsewhere)."""
        self.queue = queue
        self.states = states
        self.plan = plan
        self._handler = handler
        self._consumer: asyncio.Task[None] | None = None
        self._queueing: set[str] = set()  # recordings whose planned jobs are being queued

    async def start(self) -> None:
        """Open the queue (resuming what it holds) and start running jobs."""
        await self.queue.start()
        if self._handler is not None:
            self._consumer = asyncio.create_task(self.queue.run(self._handler), name="jobs.run")

    async def close(self) -> None:
        """Stop running jobs (unfinished ones stay queued), close the queue."""
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
        await self.queue.close()

    async def queue_planned(self, manifest: Manifest) -> None:
        """Queue every planned job of a just-stored recording durably; raise if one cannot be."""
        # The finalizer awaits this before it releases the recording's spool, so a crash (or a
        # queue that fails) before every job is queued leaves the spool, and recovery stores the
        # recording and calls this again: a job is never lost between storing and queueing.
        if not self.plan:
            return
        manifest_key = manifest.storage.get("manifest_key")
        if not isinstance(manifest_key, str):
            raise CallStateError(f"recording {manifest.call_id} has no manifest key")
        self._queueing.add(manifest.call_id)
        try:
            for kind, params in self.plan:
                await self.request(manifest.call_id, manifest_key, kind, params)
        finally:
            self._queueing.discard(manifest.call_id)

    def locked(self, call_id: str) -> AbstractAsyncContextManager[None]:
        """Hold a recording's lock: no job state is written to its manifest meanwhile."""
        return self.states.locked(call_id)

    def is_queueing(self, call_id: str) -> bool:
        """True while a just-stored recording's jobs are being queued."""
        return call_id in self._queueing

    async def request(
        self,
        call_id: str,
        manifest_key: str,
        kind: JobKind,
        params: Mapping[str, str],
        *,
        refuse_pending: bool = False,
    ) -> JobState:
        """Queue one job now; CallStateError if `refuse_pending` and one is already pending."""
        async with self.states.locked(call_id):
            manifest = await self.states.read_manifest(manifest_key)
            if manifest is None:
                raise UnknownCallError(f"no recording {call_id}")
            current = parse_job_states(manifest.jobs).get(kind)
            if refuse_pending and current is not None and current.status.is_pending:
                raise CallStateError(
                    f"recording {call_id} already has a {kind.value} job {current.status.value}"
                )
            job = Job(new_job_id(), call_id, kind, manifest_key, dict(params))
            # Durable first: if the process dies before the state is written, the job still
            # runs after the restart and writes its state then.
            await self.queue.enqueue(job)
            state = build_queued(kind, job.job_id, self.states.now(), params)
            await self.states.write_state(manifest_key, state)
            return state
