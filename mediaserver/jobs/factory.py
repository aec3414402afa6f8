"""The job queue and recording locks the settings ask for: in-process, or Redis (several nodes)."""

from redis.asyncio import Redis

from mediaserver.jobs.local import LocalJobQueue
from mediaserver.jobs.queue import JobQueue
from mediaserver.jobs.redis_lock import RedisRecordingLocks
from mediaserver.jobs.redis_queue import RedisJobQueue
from mediaserver.jobs.state_store import RecordingLocks
from mediaserver.settings import Settings, resolve_node_id


def build_job_queue(settings: Settings, redis: Redis | None) -> JobQueue:
    """Redis Streams when there is a Redis, else the durable in-process queue under jobs_path."""
    if redis is None:
        return LocalJobQueue(
            settings.jobs_path / "queue",
            concurrency=settings.job_workers,
            retry_delay_s=settings.job_visibility_timeout_s,
        )
    return RedisJobQueue(
        redis,
        consumer=resolve_node_id(settings),
        concurrency=settings.job_workers,
        visibility_timeout_s=settings.job_visibility_timeout_s,
    )


def build_recording_locks(redis: Redis | None) -> RecordingLocks | None:
    """Locks every process shares when there is a Redis; None: this process's own suffice."""
    return None if redis is None else RedisRecordingLocks(redis)
