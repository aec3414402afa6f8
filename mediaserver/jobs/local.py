"""LocalJobQueue: the in-process JobQueue, durable as one small file per job on local disk."""

# Each queued job is `<directory>/<sequence>-<call id>-<kind>.json`, written to a temporary name,
# fsynced and renamed (then the directory fsynced), so a job is either whole or absent after a
# crash. The file is removed only once the handler has returned: a job interrupted by a crash
# or a shutdown is found again by start() and runs again. Sequence numbers are nanoseconds of
# wall time (kept increasing within a process), so file names sort in the order of enqueueing,
# across restarts too.

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from mediaserver.durable_file import write_file_durably
from mediaserver.jobs.queue import Job, JobHandler, parse_job

log = structlog.get_logger(__name__)

_SUFFIX = ".json"


@dataclass(slots=True)
class _Entry:
    """A queued job and its file."""

    sequence: int
    job: Job
    path: Path


class LocalJobQueue:
    """Jobs in files under `directory`, run by `concurrency` tasks of this process."""

    def __init__(
        self, directory: Path, *, concurrency: int = 2, retry_delay_s: float = 60.0
    ) -> None:
        """Use `directory` (created at start) for the queue's files."""
        if concurrency < 1:
            raise ValueError("a job queue needs at least one worker")
        self.directory = directory
        self.concurrency = concurrency
        self.retry_delay_s = retry_delay_s  # a job whose handler raised runs again this much later
        self._retries: set[asyncio.Task[None]] = set()
        self._waiting: list[_Entry] = []
        self._running: dict[str, _Entry] = {}  # by call id: one job per recording at a time
        self._changed = asyncio.Condition()
        self._last_sequence = 0

    async def start(self) -> None:
        """Load the jobs an earlier process left, oldest first."""
        entries = await asyncio.to_thread(_load_entries, self.directory)
        self._waiting = entries
        if entries:
            self._last_sequence = entries[-1].sequence
            log.info("jobs.resumed", jobs=[f"{e.job.call_id}/{e.job.kind.value}" for e in entries])

    async def enqueue(self, job: Job) -> None:
        """Write the job's file durably, replacing a waiting job for the same call and kind."""
        self._last_sequence = max(time.time_ns(), self._last_sequence + 1)
        name = f"{self._last_sequence:020d}-{job.call_id}-{job.kind.value}{_SUFFIX}"
        path = self.directory / name
        await asyncio.to_thread(write_file_durably, path, job.to_json())
        replaced = [
            e for e in self._waiting if e.job.call_id == job.call_id and e.job.kind is job.kind
        ]
        async with self._changed:
            for entry in replaced:
                self._waiting.remove(entry)
            self._waiting.append(_Entry(self._last_sequence, job, path))
            self._changed.notify_all()
        for entry in replaced:
            await asyncio.to_thread(entry.path.unlink, missing_ok=True)
        log.info("job.queued", call_id=job.call_id, kind=job.kind.value, job_id=job.job_id)

    async def run(self, handler: JobHandler) -> None:
        """Run jobs with `concurrency` workers until cancelled."""
        workers = [
            asyncio.create_task(self._work(handler), name=f"jobs.worker.{index}")
            for index in range(self.concurrency)
        ]
        try:
            # wait(), unlike gather(), does not cancel the workers itself: each is cancelled
            # exactly once below, so its clean-up after the cancellation is not cut short.
            await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    def depth(self) -> int:
        """Jobs waiting or running."""
        return len(self._waiting) + len(self._running)

    def waiting(self) -> list[Job]:
        """Jobs waiting to run, oldest first."""
        return [entry.job for entry in self._waiting]

    async def close(self) -> None:
        """Nothing to release: unfinished jobs' files stay for the next start."""
        for retry in list(self._retries):
            retry.cancel()
        await asyncio.gather(*self._retries, return_exceptions=True)
        self._waiting = []

    async def _work(self, handler: JobHandler) -> None:
        """One worker: take the oldest runnable job, run it, remove it."""
        while True:
            entry = await self._take()
            finished = False
            try:
                await handler(entry.job)
                finished = True
            except asyncio.CancelledError:
                raise  # shutting down: the job's file stays and it runs after the restart
            except Exception as exc:
                # The handler asks for another attempt (it counts them and gives up by returning).
                log.info("job.retry_scheduled", call_id=entry.job.call_id, error=repr(exc))
                retry = asyncio.create_task(self._retry_later(entry), name="jobs.retry")
                self._retries.add(retry)
                retry.add_done_callback(self._retries.discard)
            finally:
                async with self._changed:
                    self._running.pop(entry.job.call_id, None)
                    self._changed.notify_all()
            if finished:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(entry.path.unlink, missing_ok=True)

    async def _retry_later(self, entry: _Entry) -> None:
        """Put a job back in line after the retry delay (its file stays meanwhile)."""
        await asyncio.sleep(self.retry_delay_s)
        async with self._changed:
            self._waiting.append(entry)
            self._changed.notify_all()

    async def _take(self) -> _Entry:
        """Wait for the oldest waiting job whose recording has no job running."""
        async with self._changed:
            while True:
                for entry in self._waiting:
                    if entry.job.call_id not in self._running:
                        self._waiting.remove(entry)
                        self._running[entry.job.call_id] = entry
                        return entry
                await self._changed.wait()


def _load_entries(directory: Path) -> list[_Entry]:
    """The queue's job files, oldest first; unreadable ones are logged and skipped."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for path in sorted(directory.glob(f"*{_SUFFIX}")):
        if path.name.startswith("."):
            continue
        try:
            sequence = int(path.name.split("-", 1)[0])
            entries.append(_Entry(sequence, parse_job(path.read_text()), path))
        except (ValueError, OSError) as exc:
            log.warning("jobs.unreadable_file", path=str(path), error=str(exc))
    return entries
