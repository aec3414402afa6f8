"""Recording locks in Redis: one writer of a recording's manifest across every node and worker."""

import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from mediaserver.cluster.redis_connection import KEY_PREFIX

# Longer than any manifest read-modify-write; a holder that dies frees the lock after it.
LOCK_TIMEOUT_S = 60.0


class RedisRecordingLocks:
    """`locked(call_id)` as a redis-py Lock (SET NX PX with a token, released by a script)."""

    def __init__(self, redis: Redis) -> None:
        """Lock through `redis`."""
        self._redis = redis

    @contextlib.asynccontextmanager
    async def locked(self, call_id: str) -> AsyncIterator[None]:
        """Hold the recording's lock for the block."""
        lock = self._redis.lock(
            f"{KEY_PREFIX}lock:recording:{call_id}", timeout=LOCK_TIMEOUT_S, sleep=0.05
        )
        async with lock:
            yield
