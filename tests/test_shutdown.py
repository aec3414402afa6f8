"""Graceful shutdown with agents streaming, and HTTP connection hygiene, on a real process."""

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rtp_caller import RtpCaller, open_caller
from rtp_sender import silence_payload
from server_harness import TOKEN, auth
from twilio_agent import TwilioTestAgent, encode_mulaw, make_tone

CLI = [sys.executable, "-m", "mediaserver"]
FRAME_S = 0.020


def server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A server of its own, logging JSON lines."""
    return {
        **os.environ,
        "MEDIASERVER_API_TOKEN": TOKEN,
        "MEDIASERVER_SPOOL_PATH": str(tmp_path / "spool"),
        "MEDIASERVER_JOBS_PATH": str(tmp_path / "jobs"),
        "MEDIASERVER_STORAGE_PATH": str(tmp_path / "recordings"),
        "MEDIASERVER_LOG_FORMAT": "json",
        "MEDIASERVER_MAX_CPU_SHARE": "0",
        "MEDIASERVER_MAX_LOOP_LAG_MS": "0",
        **extra,
    }


@asynccontextmanager
async def server_process(env: dict[str, str]) -> AsyncIterator[tuple[Any, str]]:
    """`mediaserver serve` on a free port; yields the process and its base URL."""
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--port",
        "0",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
    assert line.startswith("mediaserver listening on http://127.0.0.1:"), line
    try:
        yield process, line.split()[-1]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


class StreamingAgent:
    """A Twilio-style agent that streams 20 ms μ-law frames in real time and counts them."""

    def __init__(self, agent: TwilioTestAgent) -> None:
        self.agent = agent
        self.frames_sent = 0
        self.chunk = encode_mulaw(make_tone(400.0, 20, 8000))
        self._task = asyncio.create_task(self._stream())

    async def _stream(self) -> None:
        next_s = time.monotonic()
        with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
            # Until the server says `stop`: what is sent after that is no longer the call's.
            while not self.agent.ws.closed and not any(
                m["event"] == "stop" for m in self.agent.messages[-3:]
            ):
                await self.agent.send_payload(self.chunk)
                self.frames_sent += 1
                next_s += FRAME_S
                await asyncio.sleep(max(0.0, next_s - time.monotonic()))

    async def stop(self) -> None:
        """Stop streaming."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def keep_calling(caller: RtpCaller, stop: asyncio.Event) -> int:
    """Send silence packets every 20 ms until told to stop; how many were sent."""
    start, index = time.monotonic(), 0
    while not stop.is_set():
        caller.send_packet(index & 0xFFFF, index * 960, silence_payload(), marker=index == 0)
        index += 1
        await asyncio.sleep(max(0.0, start + index * FRAME_S - time.monotonic()))
    return index


def stored_manifest(tmp_path: Path, call_id: str) -> dict[str, Any]:
    """A call's manifest from the local store."""
    found = list((tmp_path / "recordings").rglob(f"conversation_{call_id}_manifest.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


def channel(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    """One channel's statistics."""
    return next(c["stats"] for c in manifest["channels"] if c["channel"] == name)


async def test_sigterm_keeps_agents_streaming_and_recorded_until_their_calls_end(
    tmp_path: Path,
) -> None:
    """SIGTERM with three calls and agents: /readyz 503 at once while the listener serves;
    new calls 503; agents go on streaming and being recorded; a call ended during the drain is
    stored as `api`; the others at the drain timeout as `shutdown`, their agents getting their
    pending mark, then `stop`, then a normal close; every agent frame is recorded."""
    env = server_env(tmp_path, MEDIASERVER_DRAIN_TIMEOUT_S="4")
    async with (
        server_process(env) as (process, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        ws_base = base.replace("http", "ws")
        calls: list[dict[str, Any]] = []
        stop_callers = asyncio.Event()
        for _ in range(3):
            async with client.post(f"{base}/v1/calls", json={}) as response:
                call_id = (await response.json())["call_id"]
            async with client.post(f"{base}/v1/calls/{call_id}/rtp", json={}) as response:
                leg = await response.json()
            caller = await open_caller(leg["host"], leg["port"], leg["payload_type"])
            agent = TwilioTestAgent(await client.ws_connect(f"{ws_base}/v1/calls/{call_id}/agent"))
            await agent.wait_for("start")
            calls.append(
                {
                    "id": call_id,
                    "caller": caller,
                    "sending": asyncio.create_task(keep_calling(caller, stop_callers)),
                    "agent": agent,
                    "streaming": StreamingAgent(agent),
                }
            )
        await asyncio.sleep(1.0)

        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        async with asyncio.timeout(2):
            while True:  # /readyz turns 503 at once; the listener stays open meanwhile
                async with client.get(f"{base}/readyz") as response:
                    if response.status == 503:
                        break
                await asyncio.sleep(0.02)
        readyz_ms = (time.monotonic() - signalled) * 1000
        async with client.get(f"{base}/healthz") as response:
            assert response.status == 200
        async with client.post(f"{base}/v1/calls", json={}) as response:
            body = await response.json()
            assert response.status == 503, body
            assert "Retry-After" in response.headers

        await asyncio.sleep(1.0)  # agents and callers keep going during the drain
        first = calls[0]
        await first["streaming"].stop()
        await asyncio.sleep(0.2)  # its last frames play out
        async with client.delete(f"{base}/v1/calls/{first['id']}") as response:
            assert response.status == 202
        await asyncio.sleep(2.0)  # half a second before the drain timeout
        for call in calls[1:]:
            await call["streaming"].stop()
            await call["agent"].send_tone(400.0, 2000)  # 2 s of speech that will not finish
            await call["agent"].send_mark(f"pending-{call['id']}")
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
        stop_callers.set()
        for call in calls:
            await call["streaming"].stop()
            await call["sending"]
            call["caller"].transport.close()
    assert process.returncode == 0, stderr.decode()[-3000:]
    print(f"/readyz said 503 {readyz_ms:.0f} ms after SIGTERM")

    events = [json.loads(x) for x in stderr.decode().splitlines() if x.startswith("{")]
    names = [e["event"] for e in events]
    assert "server.draining" in names
    assert "server.stopped" in names
    assert "server.drain_timeout" in names

    for index, call in enumerate(calls):
        manifest = stored_manifest(tmp_path, call["id"])
        agent: TwilioTestAgent = call["agent"]
        received = [m["event"] for m in agent.messages]
        recorded = channel(manifest, "agent")["packets"]
        sent = call["streaming"].frames_sent
        print(
            f"call {index}: agent frames sent {sent}, recorded {recorded},"
            f" end {manifest['end_reason']}, close {agent.close_code}"
        )
        assert manifest["status"] == "stored"
        if index == 0:
            assert sent - 3 <= recorded <= sent  # at most the frames queued when it ended
            assert manifest["end_reason"] == "api"
        else:
            # Streamed frames all played; of the unfinished 2 s answer, the part before the end.
            assert sent - 3 <= recorded < sent + 50, (sent, recorded)
            assert manifest["end_reason"] == "shutdown"
            assert received[-1] == "stop", received[-5:]
            marks = [m for m in agent.messages if m["event"] == "mark"]
            assert [m["mark"]["name"] for m in marks] == [f"pending-{call['id']}"]
        assert agent.close_code in (1000, 1001)
    assert not any((tmp_path / "spool").iterdir())


async def test_slow_and_surplus_connections_are_closed(tmp_path: Path) -> None:
    """A connection that sends no complete headers in time is closed; beyond max_connections a
    new one gets 503 and is closed; the API keeps answering throughout."""
    env = server_env(
        tmp_path, MEDIASERVER_HTTP_HEADER_TIMEOUT_S="0.5", MEDIASERVER_MAX_CONNECTIONS="6"
    )
    async with server_process(env) as (process, base):
        host, port = base.removeprefix("http://").split(":")
        loop = asyncio.get_running_loop()
        slow = socket.create_connection((host, int(port)))
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        slow.setblocking(False)
        started = time.monotonic()
        assert await asyncio.wait_for(loop.sock_recv(slow, 100), 5) == b""  # closed by the server
        closed_after_s = time.monotonic() - started
        slow.close()
        # Headers in time: the connection is served past the deadline (keep-alive), and its
        # place is given back when it closes (the six below all fit under the cap).
        served = socket.create_connection((host, int(port)))
        served.setblocking(False)
        for _ in range(2):
            await loop.sock_sendall(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await asyncio.wait_for(loop.sock_recv(served, 4096), 5)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            await asyncio.sleep(0.7)
        served.close()
        idle = [socket.create_connection((host, int(port))) for _ in range(6)]
        await asyncio.sleep(0.1)
        for sock in idle:  # admitted: nothing to read yet (a refusal would be a 503 by now)
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(100)
        surplus = socket.create_connection((host, int(port)))
        surplus.setblocking(False)
        answer = await asyncio.wait_for(loop.sock_recv(surplus, 4096), 5)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        surplus.close()
        for sock in idle:
            sock.close()
        await asyncio.sleep(0.7)  # the idle ones were closed by their header deadline anyway
        async with aiohttp.ClientSession() as client, client.get(f"{base}/healthz") as response:
            assert response.status == 200
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 60)
    print(f"half-sent headers closed after {closed_after_s:.2f} s")
    assert 0.4 <= closed_after_s < 3


async def test_running_out_of_descriptors_logs_one_line_not_a_traceback_flood(
    tmp_path: Path,
) -> None:
    """With few file descriptors, surplus connections fail at accept(): the log says so in a
    rate-limited line naming the cause, with no traceback, and the server keeps serving."""
    env = server_env(tmp_path)
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--port",
        "0",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (160, 160)),
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
    base = line.split()[-1]
    host, port = base.removeprefix("http://").split(":")
    sockets = []
    for _ in range(300):
        with contextlib.suppress(OSError):
            sockets.append(socket.create_connection((host, int(port)), timeout=1))
    await asyncio.sleep(2.5)
    for sock in sockets:
        sock.close()
    await asyncio.sleep(1.5)  # asyncio retries accept() after a second
    async with aiohttp.ClientSession() as client, client.get(f"{base}/healthz") as response:
        assert response.status == 200
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    text = stderr.decode()
    events = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    exhausted = [e for e in events if e["event"] == "server.out_of_file_descriptors"]
    print(f"out-of-descriptor log lines: {len(exhausted)}; first: {exhausted[:1]}")
    assert 1 <= len(exhausted) <= 2
    assert "Traceback" not in text
