"""Real `mediaserver serve` nodes and `mediaserver worker`s on loopback, sharing Redis and GCS."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gcs_emulator import GcsEmulator, find_free_port
from redis_server import RedisServer
from server_harness import TOKEN

CLI = [sys.executable, "-m", "mediaserver"]
BUCKET = "cluster-recordings"
T = TypeVar("T")


@dataclass
class ServiceProcess:
    """A node or worker process: its base URL and the JSON log lines it has written."""

    name: str
    process: subprocess.Popen[bytes]
    base: str
    logs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ws_base(self) -> str:
        """The ws:// form of the base URL."""
        return "ws" + self.base.removeprefix("http")

    def events(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """The log lines with this event name and these field values."""
        return [
            line
            for line in list(self.logs)
            if line.get("event") == event and all(line.get(k) == v for k, v in fields.items())
        ]

    async def wait_for_log(
        self, event: str, timeout_s: float = 30.0, **fields: Any
    ) -> dict[str, Any]:
        """The first log line with this event and fields, waiting for it up to the timeout."""
        found = await eventually(lambda: self.events(event, **fields), timeout_s)
        return found[0]

    def signal(self, signum: signal.Signals) -> None:
        """Send the process a signal."""
        self.process.send_signal(signum)

    async def wait_exit(self, timeout_s: float = 60.0) -> int:
        """Wait for the process to exit; its return code."""
        return await asyncio.wait_for(asyncio.to_thread(self.process.wait), timeout_s)


async def eventually(probe: Callable[[], T], timeout_s: float = 30.0) -> T:
    """Poll `probe` until it returns something truthy (its value), or fail at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def until(probe: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> None:
    """Poll an asynchronous check (an HTTP request, say) until it holds, or fail at the timeout."""
    async with asyncio.timeout(timeout_s):
        while not await probe():  # noqa: ASYNC110  # the state is another process's
            await asyncio.sleep(0.1)


def _read_logs(stream: Any, logs: list[dict[str, Any]], echo: Path) -> None:
    """Collect a process's JSON log lines (and keep them in a file for a failing test's report)."""
    with echo.open("a") as out:
        for raw in stream:
            text = raw.decode(errors="replace")
            out.write(text)
            out.flush()
            try:
                logs.append(json.loads(text))
            except ValueError:
                logs.append({"event": "text", "text": text})


def _start(name: str, command: list[str], env: dict[str, str], log_dir: Path) -> ServiceProcess:
    """Start a process and read its first stdout line: 'mediaserver ... listening on URL'."""
    process = subprocess.Popen(
        [*CLI, *command],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    logs: list[dict[str, Any]] = []
    threading.Thread(
        target=_read_logs, args=(process.stderr, logs, log_dir / f"{name}.log"), daemon=True
    ).start()
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if "listening on http://" not in line:
        process.kill()
        output = (log_dir / f"{name}.log").read_text()
        raise RuntimeError(f"{name} did not start: {line!r}\n{output}")
    # Drain the rest of stdout (the welcome text) so the process never blocks on it.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    return ServiceProcess(name, process, line.split()[-1], logs)


@dataclass
class Cluster:
    """Redis, the GCS emulator, nodes and workers, with one environment they share."""

    root: Path
    redis: RedisServer
    gcs: GcsEmulator
    settings: dict[str, str]
    nodes: dict[str, ServiceProcess] = field(default_factory=dict)
    workers: dict[str, ServiceProcess] = field(default_factory=dict)

    def env(self, name: str, **extra: str) -> dict[str, str]:
        """The environment of one process."""
        return {
            **os.environ,
            "MEDIASERVER_API_TOKEN": TOKEN,
            "MEDIASERVER_REDIS_URL": self.redis.url,
            "AUDIO_STORAGE_TYPE": "gcs",
            "AUDIO_STORAGE_PATH": BUCKET,
            "STORAGE_EMULATOR_HOST": self.gcs.url,
            "MEDIASERVER_NODE_ID": name,
            "MEDIASERVER_SPOOL_PATH": str(self.root / name / "spool"),
            "MEDIASERVER_JOBS_PATH": str(self.root / name / "jobs"),
            "MEDIASERVER_LOG_FORMAT": "json",
            "MEDIASERVER_LOG_LEVEL": "info",
            "MEDIASERVER_MAX_CPU_SHARE": "0",
            "MEDIASERVER_MAX_LOOP_LAG_MS": "0",
            "MEDIASERVER_ICE_HOST_ADDRESSES": "127.0.0.1",
            "MEDIASERVER_FINALIZE_WORKERS": "1",
            "MEDIASERVER_JOB_WORKERS": "1",
            "MEDIASERVER_TRANSCRIPTION_BACKEND": "none",
            "MEDIASERVER_JOB_VISIBILITY_TIMEOUT_S": "5",
            **self.settings,
            **extra,
        }

    def start_node(self, name: str, rtp_port_min: int, *args: str, **extra: str) -> ServiceProcess:
        """`mediaserver serve ARGS` on a free port, announcing http://127.0.0.1:<port>."""
        port = find_free_port()
        env = self.env(
            name,
            MEDIASERVER_PUBLIC_URL=f"http://127.0.0.1:{port}",
            MEDIASERVER_RTP_PORT_MIN=str(rtp_port_min),
            MEDIASERVER_RTP_PORT_MAX=str(rtp_port_min + 99),
            **extra,
        )
        node = _start(name, ["serve", "--port", str(port), *args], env, self.root)
        self.nodes[name] = node
        return node

    def start_worker(self, name: str) -> ServiceProcess:
        """`mediaserver worker` with its health port anywhere free."""
        worker = _start(name, ["worker", "--port", "0"], self.env(name), self.root)
        self.workers[name] = worker
        return worker

    def stop_all(self) -> None:
        """Kill whatever still runs."""
        for service in [*self.nodes.values(), *self.workers.values()]:
            if service.process.poll() is None:
                service.process.kill()
                service.process.wait()


@contextmanager
def running_cluster(
    root: Path, *, nodes: int = 2, workers: int = 2, **settings: str
) -> Iterator[Cluster]:
    """Redis and the GCS emulator, then nodes node-a, node-b... and workers worker-1, worker-2..."""
    with (
        RedisServer(root / "redis") as redis,
        GcsEmulator(find_free_port(), default_bucket=BUCKET) as gcs,
    ):
        cluster = Cluster(root, redis, gcs, settings)
        try:
            # Started side by side: each spends seconds importing before it listens.
            with ThreadPoolExecutor(nodes + workers) as starter:
                started = [
                    starter.submit(cluster.start_node, f"node-{'abcdef'[i]}", 42000 + 100 * i)
                    for i in range(nodes)
                ]
                started += [
                    starter.submit(cluster.start_worker, f"worker-{i + 1}") for i in range(workers)
                ]
                for future in started:
                    future.result()
            yield cluster
        finally:
            cluster.stop_all()
