"""The local job queue: durable, at least once, one job per recording at a time, in order."""

import asyncio
from pathlib import Path

import pytest

from mediaserver.jobs.local import LocalJobQueue
from mediaserver.jobs.queue import Job, parse_job
from mediaserver.jobs.state import JobError, JobKind, JobStatus, advance, build_queued


def _job_files(directory: Path) -> list[Path]:
    return list(directory.glob("*.json"))


def _job(call_id: str, kind: JobKind = JobKind.ANALYSIS, job_id: str = "") -> Job:
    return Job(job_id or f"job-{call_id}-{kind.value}", call_id, kind, f"m/{call_id}.json")


async def _run_until(queue: LocalJobQueue, handled: list[Job], count: int) -> None:
    """Run the queue until `count` jobs were handled."""
    done = asyncio.Event()

    async def handle(job: Job) -> None:
        handled.append(job)
        if len(handled) >= count:
            done.set()

    runner = asyncio.create_task(queue.run(handle))
    try:
        await asyncio.wait_for(done.wait(), 5)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


def test_job_json_round_trips() -> None:
    """A job read back from its JSON equals the job; garbage is a ValueError."""
    job = Job("j1", "call", JobKind.TRANSCRIPT, "recordings/x_manifest.json", {"backend": "openai"})
    assert parse_job(job.to_json()) == job
    with pytest.raises(ValueError, match="not a job"):
        parse_job('{"job_id": "x"}')


def test_state_transitions_count_attempts_and_keep_errors_of_failures_only() -> None:
    """processing counts an attempt; failed keeps its error; completed has none."""
    state = build_queued(JobKind.ANALYSIS, "j", "t0")
    running = advance(state, JobStatus.PROCESSING, "t1")
    failed = advance(running, JobStatus.FAILED, "t2", JobError("x", "broken"))
    assert (running.attempts, failed.attempts) == (1, 1)
    assert failed.to_dict()["error"] == {"code": "x", "message": "broken"}
    assert "error" not in advance(failed, JobStatus.COMPLETED, "t3").to_dict()


async def test_jobs_survive_a_restart_and_run_in_order(tmp_path: Path) -> None:
    """Jobs queued by one queue object are run by the next one, oldest first, then removed."""
    first = LocalJobQueue(tmp_path)
    await first.start()
    for call_id in ("a", "b", "c"):
        await first.enqueue(_job(call_id))
    await first.close()  # the process stops before running anything

    second = LocalJobQueue(tmp_path, concurrency=1)
    await second.start()
    assert second.depth() == 3
    handled: list[Job] = []

    async def handle(job: Job) -> None:
        handled.append(job)

    runner = asyncio.create_task(second.run(handle))
    try:
        for _ in range(500):  # the files go once their handlers returned: poll the directory
            if not await asyncio.to_thread(_job_files, tmp_path):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("job files left behind")
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert [j.call_id for j in handled] == ["a", "b", "c"]


async def test_a_job_cut_short_runs_again(tmp_path: Path) -> None:
    """A handler cancelled mid-job (shutdown) leaves the job queued for the next start."""
    queue = LocalJobQueue(tmp_path)
    await queue.start()
    await queue.enqueue(_job("a"))
    started = asyncio.Event()

    async def slow(job: Job) -> None:
        started.set()
        await asyncio.sleep(60)

    runner = asyncio.create_task(queue.run(slow))
    await asyncio.wait_for(started.wait(), 5)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    await queue.close()

    again = LocalJobQueue(tmp_path)
    await again.start()
    handled: list[Job] = []
    await _run_until(again, handled, 1)
    assert [j.call_id for j in handled] == ["a"]


async def test_enqueueing_again_replaces_a_waiting_job(tmp_path: Path) -> None:
    """The same call and kind queued twice runs once, with the newer parameters."""
    queue = LocalJobQueue(tmp_path)
    await queue.start()
    await queue.enqueue(_job("a", JobKind.TRANSCRIPT, "old"))
    await queue.enqueue(_job("a", JobKind.TRANSCRIPT, "new"))
    assert [j.job_id for j in queue.waiting()] == ["new"]
    assert len(await asyncio.to_thread(_job_files, tmp_path)) == 1


async def test_one_recording_runs_one_job_at_a_time(tmp_path: Path) -> None:
    """With two workers, a's two jobs run one after the other while b's runs beside them."""
    queue = LocalJobQueue(tmp_path, concurrency=2)
    await queue.start()
    await queue.enqueue(_job("a", JobKind.ANALYSIS))
    await queue.enqueue(_job("a", JobKind.TRANSCRIPT))
    await queue.enqueue(_job("b", JobKind.ANALYSIS))
    running: set[str] = set()
    overlaps: list[str] = []
    handled: list[Job] = []
    done = asyncio.Event()

    async def handle(job: Job) -> None:
        if job.call_id in running:
            overlaps.append(job.call_id)
        running.add(job.call_id)
        await asyncio.sleep(0.05)
        running.discard(job.call_id)
        handled.append(job)
        if len(handled) == 3:
            done.set()

    runner = asyncio.create_task(queue.run(handle))
    await asyncio.wait_for(done.wait(), 5)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    assert overlaps == []
    order = [(j.call_id, j.kind) for j in handled]
    assert order.index(("a", JobKind.ANALYSIS)) < order.index(("a", JobKind.TRANSCRIPT))


async def test_an_unreadable_job_file_is_skipped(tmp_path: Path) -> None:
    """A torn or foreign file in the queue directory does not stop the queue."""
    (tmp_path / "00000000000000000001-x-analysis.json").write_text("{not json")
    queue = LocalJobQueue(tmp_path)
    await queue.start()
    assert queue.depth() == 0
