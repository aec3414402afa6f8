"""A real server on 127.0.0.1 port 0 for end-to-end tests, and a few helpers that talk to it."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from mediaserver.server import RunningServer, start_server
from mediaserver.settings import Settings

TOKEN = "test-token-0123456789"


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test server: loopback only, its own spool and storage."""
    base = Settings(
        spool_path=tmp_path / "spool",
        jobs_path=tmp_path / "jobs",
        storage_path=str(tmp_path / "recordings"),
        audit_path=tmp_path / "audit",
        port=0,
        api_token=TOKEN,
        ice_host_addresses="127.0.0.1",
        finalize_workers=1,
        drain_timeout_s=20.0,
        log_format="json",
        log_level="warning",
        # These servers share their process and cores with the test's own clients, whose CPU
        # and loop time the load guard would count as the server's; admission tests set them.
        max_cpu_share=0.0,
        max_loop_lag_ms=0.0,
    )
    return replace(base, **overrides)


@asynccontextmanager
async def running_server(settings: Settings) -> AsyncIterator[tuple[RunningServer, str]]:
    """Start the server; yield it and its base URL; stop it gracefully."""
    server = await start_server(settings)
    try:
        yield server, f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()


def auth(token: str = TOKEN) -> dict[str, str]:
    """The bearer header."""
    return {"Authorization": f"Bearer {token}"}


async def wait_for_recording(
    client: aiohttp.ClientSession, base: str, call_id: str, timeout_s: float = 60.0
) -> dict[str, Any]:
    """Poll the recordings API until the call's recording is stored (or fail on timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with client.get(f"{base}/v1/recordings/{call_id}", headers=auth()) as response:
            body: dict[str, Any] = await response.json()
        if body.get("status") in ("stored", "recovered", "empty"):
            return body
        assert body.get("status") != "upload_failed", body
        assert time.monotonic() < deadline, f"recording not stored in time: {body}"
        await asyncio.sleep(0.1)
