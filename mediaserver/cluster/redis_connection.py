"""The Redis client every cluster part shares: text replies, bounded waits, retried commands."""

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# A command waits at most this long for its reply (blocking reads ask for less than this).
SOCKET_TIMEOUT_S = 5.0
KEY_PREFIX = "mediaserver:"


def open_redis(url: str) -> Redis:
    """A client for `url`; connections are made on first use and remade after a restart."""
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=2.0,
        health_check_interval=10,
        # A restarted Redis drops every connection: the next command reconnects and is retried.
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
