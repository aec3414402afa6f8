"""NodeRegistry: this node's record and its calls in Redis, renewed every ~2 s with a TTL."""

# Keys (prefix "mediaserver:"):
#   node:<id>   hash: the node's NodeRecord, expiring 3 heartbeats after its last publish;
#   nodes       sorted set of node ids (score: last publish, ms): the index readers list;
#   call:<id>   string: the id of the node that owns the live call, renewed with each heartbeat.
# Everything here is rebuilt by the next heartbeat, so a Redis restarted empty heals within one
# interval, and a node that dies leaves the registry when its keys expire.

import asyncio
import time
from collections.abc import Callable, Collection
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from mediaserver.cluster.node_record import NodeRecord, parse_node_fields
from mediaserver.cluster.redis_connection import KEY_PREFIX
from mediaserver.errors import ClusterUnavailableError

log = structlog.get_logger(__name__)

HEARTBEAT_INTERVAL_S = 2.0
NODE_TTL_MS = 6_000  # three heartbeats
CALL_TTL_MS = 10_000
NODES_KEY = KEY_PREFIX + "nodes"


def node_key(node_id: str) -> str:
    """The key of a node's record."""
    return f"{KEY_PREFIX}node:{node_id}"


def call_key(call_id: str) -> str:
    """The key naming a live call's node."""
    return f"{KEY_PREFIX}call:{call_id}"


class NodeRegistry:
    """Publishes this node and its live calls; reads the other nodes and who owns a call."""

    def __init__(
        self,
        redis: Redis,
        *,
        describe: Callable[[], NodeRecord],
        live_call_ids: Callable[[], Collection[str]],
        interval_s: float = HEARTBEAT_INTERVAL_S,
    ) -> None:
        """Publish `describe()` and `live_call_ids()` every `interval_s`."""
        self.redis = redis
        self._describe = describe
        self._live_call_ids = live_call_ids
        self._interval_s = interval_s
        self._wake = asyncio.Event()
        self._published_calls: set[str] = set()
        self._healthy = True
        self._left = False
        self._stopped = False

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._describe().node_id

    async def run(self) -> None:
        """Publish now, then every interval or as soon as asked, until stopped."""
        # Ends on stop() as well as on cancellation: a cancel that lands inside a redis-py
        # command can be lost, and a heartbeat that missed it would hold up the shutdown.
        while not self._stopped:
            self._wake.clear()
            await self.publish()
            try:
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def stop(self) -> None:
        """End `run` at its next step."""
        self._stopped = True
        self._wake.set()

    def publish_soon(self) -> None:
        """Publish at once rather than at the next interval (a call came or went)."""
        self._wake.set()

    async def publish(self) -> bool:
        """Write this node's record and its calls; False (logged once) while Redis is away."""
        if self._left:
            return False
        record = self._describe()
        live = set(self._live_call_ids())
        ended = self._published_calls - live
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                self._add_record(pipe, record)
                for call_id in live:
                    pipe.set(call_key(call_id), record.node_id, px=CALL_TTL_MS)
                if ended:
                    pipe.delete(*(call_key(call_id) for call_id in ended))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            if self._healthy:
                log.warning("cluster.registry_unavailable", error=str(exc))
            self._healthy = False
            return False
        if not self._healthy:
            log.info("cluster.registry_restored", node_id=record.node_id, live_calls=len(live))
        self._healthy = True
        self._published_calls = live
        return True

    async def claim_call(self, call_id: str) -> int | None:
        """Map a new call to this node and publish the record that counts it, before the call's
        creation is answered; the heartbeat renews both. That record's `updated_at_ms`, or None
        (logged) while Redis is away."""
        record = self._describe()
        self.publish_soon()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(call_key(call_id), record.node_id, px=CALL_TTL_MS)
                self._add_record(pipe, record)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("cluster.call_claim_failed", call_id=call_id, error=str(exc))
            return None
        return record.updated_at_ms

    async def owner_of(self, call_id: str) -> NodeRecord | None:
        """The node that owns a live call, if any node does."""
        try:
            node_id = await self.redis.get(call_key(call_id))
            if node_id is None:
                return None
            if node_id == self.node_id:
                return self._describe()
            return await self._read_node(str(node_id))
        except (RedisError, OSError) as exc:
            raise ClusterUnavailableError(f"the node registry is unavailable: {exc}") from None

    async def nodes(self) -> list[NodeRecord]:
        """Every node in the registry (this one as it is now), by id."""
        try:
            node_ids = [str(n) for n in await self.redis.zrange(NODES_KEY, 0, -1)]
            async with self.redis.pipeline(transaction=False) as pipe:
                for node_id in node_ids:
                    pipe.hgetall(node_key(node_id))
                replies = await pipe.execute()
            gone = [n for n, fields in zip(node_ids, replies, strict=True) if not fields]
            if gone:
                await self.redis.zrem(NODES_KEY, *gone)
        except (RedisError, OSError) as exc:
            raise ClusterUnavailableError(f"the node registry is unavailable: {exc}") from None
        me = self._describe()
        records = {me.node_id: me}
        for fields in replies:
            if fields and fields.get("node_id") != me.node_id:
                try:
                    record = parse_node_fields(fields)
                except (KeyError, ValueError):
                    log.warning("cluster.bad_node_record", fields=fields)
                    continue
                records[record.node_id] = record
        if self._left:
            records.pop(me.node_id)
        return sorted(records.values(), key=lambda r: r.node_id)

    async def leave(self) -> None:
        """Remove this node and its calls from the registry (at the end of a shutdown)."""
        self._left = True
        node_id = self.node_id
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(node_key(node_id))
                pipe.zrem(NODES_KEY, node_id)
                if self._published_calls:
                    pipe.delete(*(call_key(call_id) for call_id in self._published_calls))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("cluster.leave_failed", error=str(exc))
            return
        log.info("cluster.left", node_id=node_id)

    @staticmethod
    def _add_record(pipe: Pipeline, record: NodeRecord) -> None:
        """Queue the commands that write a node's record with its TTL, and index it."""
        key = node_key(record.node_id)
        fields: dict[Any, Any] = dict(record.to_fields())
        pipe.hset(key, mapping=fields)
        pipe.pexpire(key, NODE_TTL_MS)
        pipe.zadd(NODES_KEY, {record.node_id: record.updated_at_ms})

    async def _read_node(self, node_id: str) -> NodeRecord | None:
        """One node's record, None if it expired."""
        fields = await self.redis.hgetall(node_key(node_id))
        if not fields:
            return None
        try:
            return parse_node_fields({str(k): str(v) for k, v in fields.items()})
        except (KeyError, ValueError):
            return None


def now_ms() -> int:
    """The wall clock in ms, as records are stamped."""
    return time.time_ns() // 1_000_000
