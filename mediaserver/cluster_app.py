"""The application's cluster parts: Redis, this node's record, the registry and the node client."""

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from mediaserver.api.keys import (
    HUB,
    LOAD,
    LOCAL_NODE,
    NODE_CLIENT,
    REDIS,
    REGISTRY,
    RESERVATIONS,
    SETTINGS,
)
from mediaserver.cluster.local_node import LocalNode
from mediaserver.cluster.node_client import NodeClient
from mediaserver.cluster.redis_connection import open_redis
from mediaserver.cluster.registry import NodeRegistry
from mediaserver.cluster.reservations import Reservations
from mediaserver.settings import resolve_node_id

log = structlog.get_logger(__name__)


async def redis_context(app: web.Application) -> AsyncIterator[None]:
    """The Redis client, with redis_url; a Redis not up yet is waited for, not fatal."""
    settings = app[SETTINGS]
    if not settings.redis_url:
        yield
        return
    redis = open_redis(settings.redis_url)
    app[REDIS] = redis
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        log.warning("cluster.redis_unreachable", error=str(exc))
    yield
    await redis.aclose()


async def cluster_context(app: web.Application) -> AsyncIterator[None]:
    """This node's record; with Redis, its heartbeat, and leaving the registry at the end."""
    settings = app[SETTINGS]
    local = LocalNode(
        node_id=resolve_node_id(settings),
        public_url=settings.public_url.rstrip("/"),
        hub=app[HUB],
        load=app[LOAD],
    )
    app[LOCAL_NODE] = local
    if REDIS not in app:
        yield
        return
    registry = NodeRegistry(app[REDIS], describe=local.record, live_call_ids=local.live_call_ids)
    app[REGISTRY] = registry
    app[RESERVATIONS] = Reservations()
    async with aiohttp.ClientSession() as session:
        app[NODE_CLIENT] = NodeClient(session, node_id=local.node_id)
        # In the registry before the listener opens: a peer that lists the nodes, or is asked to
        # place a call, as soon as this one answers must find it there.
        await registry.publish()
        heartbeat = asyncio.create_task(registry.run(), name="cluster.heartbeat")
        log.info("cluster.joined", node_id=local.node_id, public_url=local.public_url)
        yield
        registry.stop()
        heartbeat.cancel()
        await asyncio.gather(heartbeat, return_exceptions=True)
        await registry.leave()
