"""The job queue interface: what the server hands to whatever runs post-call jobs."""

# Two implementations fit it: jobs/local.py (in-process, durable on local disk: the embedded
# default) and, for several nodes, jobs/redis_queue.py (Redis Streams) whose `run` executes in
# separate `mediaserver worker` processes. Their contract:
# - enqueue() returns once the job is durable: a crash afterwards never loses it;
# - delivery is at least once: a job is removed only after its handler returned, so a job cut
#   short by a crash or a shutdown runs again; handlers must therefore be idempotent (ours write
#   whole objects under fixed keys);
# - a handler that raises has its job run again later (after the retry delay, or the visibility
#   timeout): the handler counts attempts and gives up by returning;
# - one (call, kind) is queued at most once: enqueueing it again while it waits replaces it;
# - jobs of one recording never run at the same time (they read and rewrite its manifest), and
#   among them the one enqueued first starts first.

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from mediaserver.jobs.state import JobKind


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of post-call work: which recording, what to produce, with which parameters."""

    job_id: str
    call_id: str
    kind: JobKind
    manifest_key: str
    params: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        """The job as JSON (what a durable queue stores)."""
        return json.dumps(
            {
                "job_id": self.job_id,
                "call_id": self.call_id,
                "kind": self.kind.value,
                "manifest_key": self.manifest_key,
                "params": self.params,
            },
            sort_keys=True,
        )


def parse_job(text: str) -> Job:
    """A job read back from its JSON; ValueError if it is not one."""
    try:
        data: Mapping[str, Any] = json.loads(text)
        return Job(
            job_id=str(data["job_id"]),
            call_id=str(data["call_id"]),
            kind=JobKind(data["kind"]),
            manifest_key=str(data["manifest_key"]),
            params={str(k): str(v) for k, v in data.get("params", {}).items()},
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a job: {exc}") from None


JobHandler = Callable[[Job], Awaitable[None]]


class JobQueue(Protocol):
    """Durable, at-least-once delivery of jobs to a handler (see the module comment)."""

    async def start(self) -> None:
        """Open the queue (a durable one loads what an earlier process left)."""
        ...

    async def enqueue(self, job: Job) -> None:
        """Queue a job durably; one waiting for the same call and kind is replaced."""
        ...

    async def run(self, handler: JobHandler) -> None:
        """Hand jobs to `handler` until cancelled; a job leaves the queue when it returns."""
        ...

    def depth(self) -> int:
        """Jobs waiting or running, as far as this process knows."""
        ...

    async def close(self) -> None:
        """Release the queue; jobs not finished stay queued for the next start."""
        ...
