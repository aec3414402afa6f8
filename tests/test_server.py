"""The server as operators run it: the CLI, graceful shutdown, health, metrics, dialling out."""

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np

from rtp_caller import open_caller
from rtp_sender import marker_template, silence_payload
from server_harness import TOKEN, auth, make_settings, running_server
from twilio_agent import TwilioAgentServer, dial_in

CLI = [sys.executable, "-m", "mediaserver"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "MEDIASERVER_SPOOL_PATH": str(tmp_path / "spool"),
        "MEDIASERVER_JOBS_PATH": str(tmp_path / "jobs"),
        "MEDIASERVER_STORAGE_PATH": str(tmp_path / "recordings"),
        "MEDIASERVER_LOG_FORMAT": "json",
        **extra,
    }


async def test_sigterm_drains_live_calls_into_storage(tmp_path: Path) -> None:
    """SIGTERM: a call still live at the drain timeout is ended (shutdown) and stored; exit 0."""
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--port",
        "0",
        env=_env(tmp_path, MEDIASERVER_API_TOKEN=TOKEN, MEDIASERVER_DRAIN_TIMEOUT_S="1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
    assert line.startswith("mediaserver listening on http://127.0.0.1:"), line
    base = line.split()[-1]
    async with aiohttp.ClientSession(headers=auth()) as client:
        async with client.get(f"{base}/readyz") as response:
            assert response.status == 200
        async with client.post(f"{base}/v1/calls", json={}) as response:
            call_id = (await response.json())["call_id"]
        async with client.post(f"{base}/v1/calls/{call_id}/rtp", json={}) as response:
            leg = await response.json()
        caller = await open_caller(leg["host"], leg["port"])
        await caller.send_stream([silence_payload()] * 50)
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()[-3000:]
    assert caller.transport is not None
    caller.transport.close()
    manifests = list((tmp_path / "recordings").rglob(f"conversation_{call_id}_manifest.json"))
    assert len(manifests) == 1
    manifest = json.loads(manifests[0].read_text())
    assert manifest["status"] == "stored"
    assert manifest["end_reason"] == "shutdown"
    assert not any((tmp_path / "spool").iterdir())
    events = [json.loads(x)["event"] for x in stderr.decode().splitlines() if x.startswith("{")]
    assert "server.draining" in events
    assert "server.stopped" in events


def test_serve_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    """Listening beyond loopback without api_token is refused with one clear line, exit 2."""
    result = subprocess.run(
        [*CLI, "serve", "--host", "0.0.0.0", "--port", "0"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "without an API token" in result.stderr
    assert "Traceback" not in result.stderr


async def test_health_readiness_and_metrics(tmp_path: Path) -> None:
    """Health is open; metrics need the token and expose calls, packets, finalize time, loop lag."""
    async with (
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession() as anonymous,
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        for path in ("/healthz", "/readyz"):
            async with anonymous.get(f"{base}{path}") as response:
                assert response.status == 200
        async with client.post(f"{base}/v1/calls", json={}) as response:
            call_id = (await response.json())["call_id"]
        gc.collect()  # the server runs in this process: its collector's pauses are timed
        async with client.get(f"{base}/metrics") as response:
            assert response.status == 200
            text = await response.text()
        async with client.delete(f"{base}/v1/calls/{call_id}") as response:
            assert response.status == 202
    for name in (
        "mediaserver_live_calls 1.0",
        "mediaserver_packets_recorded_total",
        "mediaserver_packets_dropped_total",
        "mediaserver_calls_finalized_total",
        'mediaserver_uploads_total{result="failed"}',
        'mediaserver_caller_packets_total{direction="in"}',
        "mediaserver_event_loop_lag_seconds_bucket",
        'mediaserver_gc_pause_seconds_count{generation="2"}',
        "mediaserver_finalize_seconds_bucket",
    ):
        assert name in text, name


async def test_server_dials_out_to_the_agent_url_like_twilio(tmp_path: Path) -> None:
    """A call created with agent_url: the server connects, sends start, streams caller audio."""
    async with (
        TwilioAgentServer() as agent_server,
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        body = {"agent_url": agent_server.url, "metadata": {"campaign": "x"}}
        async with client.post(f"{base}/v1/calls", json=body) as response:
            assert response.status == 201
            call_id = (await response.json())["call_id"]
        agent = await agent_server.next_agent()
        start = await agent.wait_for("start")
        assert start["start"]["callSid"] == call_id
        assert start["start"]["mediaFormat"] == {
            "encoding": "audio/x-mulaw",
            "sampleRate": 8000,
            "channels": 1,
        }
        async with client.post(f"{base}/v1/calls/{call_id}/rtp", json={}) as response:
            leg = await response.json()
        caller = await open_caller(leg["host"], leg["port"])
        await caller.send_stream(list(marker_template(500.0)) * 4)
        await agent.wait_for("media")
        async with client.delete(f"{base}/v1/calls/{call_id}") as response:
            assert response.status == 202
        await agent.wait_for("stop")
        assert caller.transport is not None
        caller.transport.close()
    heard = agent.caller_audio().astype(np.float32)
    assert heard.size > 0.5 * 8000
    assert np.abs(heard).max() > 3000


async def test_wideband_agent_gets_16_khz_pcm(tmp_path: Path) -> None:
    """An agent asking for L16 at 16 kHz gets it in start and media."""
    async with (
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        async with client.post(f"{base}/v1/calls", json={}) as response:
            call_id = (await response.json())["call_id"]
        url = base.replace("http", "ws") + f"/v1/calls/{call_id}/agent?format=l16&rate=16000"
        async with dial_in(client, url) as agent:
            start = await agent.wait_for("start")
            assert start["start"]["mediaFormat"]["encoding"] == "audio/x-l16"
            assert start["start"]["mediaFormat"]["sampleRate"] == 16000
            async with client.post(f"{base}/v1/calls/{call_id}/rtp", json={}) as response:
                leg = await response.json()
            caller = await open_caller(leg["host"], leg["port"])
            await caller.send_stream(list(marker_template(500.0)) * 2)
            await agent.wait_for("media")
            await asyncio.sleep(0.2)  # the last packets' media
            heard = agent.caller_audio()
        assert caller.transport is not None
        caller.transport.close()
    assert heard.size >= 0.8 * 16000
    assert np.abs(heard).max() > 3000


async def test_recording_disabled_runs_calls_and_keeps_nothing(tmp_path: Path) -> None:
    """AUDIO_CACHE_ENABLED=false: calls work, nothing is journalled or stored."""
    settings = make_settings(tmp_path, recording_enabled=False)
    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        async with client.post(f"{base}/v1/calls", json={}) as response:
            call_id = (await response.json())["call_id"]
        async with client.post(f"{base}/v1/calls/{call_id}/rtp", json={}) as response:
            leg = await response.json()
        caller = await open_caller(leg["host"], leg["port"])
        await caller.send_stream([silence_payload()] * 25)
        async with client.get(f"{base}/v1/calls/{call_id}") as response:
            assert (await response.json())["legs"]["caller"]["packets"] == 25
        journal = tmp_path / "spool" / call_id / "caller.journal"
        assert journal.stat().st_size <= 64  # the header only
        async with client.delete(f"{base}/v1/calls/{call_id}") as response:
            assert response.status == 202
        async with client.get(f"{base}/v1/recordings/{call_id}") as response:
            assert response.status == 404
        assert caller.transport is not None
        caller.transport.close()
    assert not any((tmp_path / "spool").iterdir())
    assert not (tmp_path / "recordings").exists() or not any(
        (tmp_path / "recordings").rglob("*.opus")
    )
