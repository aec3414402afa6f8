"""Typed keys of everything the aiohttp application shares, defined once."""

from concurrent.futures import ProcessPoolExecutor

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from mediaserver.admission import LoadMonitor
from mediaserver.api.recording_index import RecordingIndex
from mediaserver.api.token_registry import TokenRegistry
from mediaserver.audit.audit_log import AuditLog
from mediaserver.calls import CallHub
from mediaserver.cluster.local_node import LocalNode
from mediaserver.cluster.node_client import NodeClient
from mediaserver.cluster.registry import NodeRegistry
from mediaserver.cluster.reservations import Reservations
from mediaserver.encryption.keyring import Keyring
from mediaserver.finalizer import Finalizer
from mediaserver.jobs.scheduler import JobScheduler
from mediaserver.lifecycle.gcs_mirror import GcsLifecycleMirror
from mediaserver.metrics import LoopLagMonitor, Metrics
from mediaserver.recorder import Recorder
from mediaserver.settings import Settings
from mediaserver.storage_backends.store import ObjectStore
from mediaserver.transports.port_allocator import PortAllocator
from mediaserver.webhooks import CallEvents

SETTINGS = web.AppKey("settings", Settings)
PROCESS_POOL = web.AppKey("process_pool", ProcessPoolExecutor)
JOB_POOL = web.AppKey("job_pool", ProcessPoolExecutor)  # post-call jobs, niced
JOBS = web.AppKey("jobs", JobScheduler)
EVENTS = web.AppKey("events", CallEvents)  # webhook events of recordings and jobs
STORE = web.AppKey("store", ObjectStore)
FINALIZER = web.AppKey("finalizer", Finalizer)
RECORDER = web.AppKey("recorder", Recorder)
HUB = web.AppKey("hub", CallHub)
HTTP_CLIENT = web.AppKey("http_client", aiohttp.ClientSession)
PORTS = web.AppKey("ports", PortAllocator)
METRICS = web.AppKey("metrics", Metrics)
LOOP_LAG = web.AppKey("loop_lag", LoopLagMonitor)
LOAD = web.AppKey("load", LoadMonitor)
RECORDING_INDEX = web.AppKey("recording_index", RecordingIndex)
AUDIT = web.AppKey("audit", AuditLog)
GCS_MIRROR = web.AppKey("gcs_mirror", GcsLifecycleMirror)  # with gcs_apply_lifecycle only
TOKENS = web.AppKey("tokens", TokenRegistry)
LOCAL_NODE = web.AppKey("local_node", LocalNode)
# Only with redis_url (several nodes):
REDIS = web.AppKey("redis", Redis)
REGISTRY = web.AppKey("registry", NodeRegistry)
NODE_CLIENT = web.AppKey("node_client", NodeClient)
RESERVATIONS = web.AppKey("reservations", Reservations)  # new calls being placed from here
KEYRING = web.AppKey("keyring", Keyring)  # with encryption = envelope only
