"""The record of a call ended each way: end reason, the end's time, both legs as they were."""

import asyncio
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rtp_caller import RtpCaller, open_caller
from rtp_sender import silence_payload
from server_harness import auth, make_settings, running_server, wait_for_recording
from twilio_agent import TwilioTestAgent, dial_in
from webrtc_peer import ClientPeer, ToneTrack


def utc_s(text: str) -> float:
    """A manifest time as epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def media_end_s(manifest: dict[str, Any]) -> float:
    """When the recording's last audio ends, as epoch seconds."""
    return utc_s(manifest["media_started_at"]) + manifest["duration_ms"] / 1000


def rtcp_bye(ssrc: int) -> bytes:
    """RFC 3550 §6.6: V=2, SC=1, PT=203 (BYE), length 1 word, the source leaving."""
    return struct.pack("!BBHI", 0x81, 203, 1, ssrc)


@dataclass
class LiveCall:
    """A call with an RTP caller that has talked for a second and an agent dialled in."""

    client: aiohttp.ClientSession
    base: str
    call_id: str
    caller: RtpCaller
    agent: TwilioTestAgent


async def talk(caller: RtpCaller, seconds: float = 1.0) -> None:
    """Send Opus packets for a while at real-time pace."""
    await caller.send_stream([silence_payload()] * round(seconds / 0.02))


@asynccontextmanager
async def rtp_call(
    client: aiohttp.ClientSession, base: str, **body: Any
) -> AsyncIterator[LiveCall]:
    """Create a call, dial its agent in, give it an RTP caller that talks for a second."""
    async with client.post(f"{base}/v1/calls", json=body) as response:
        assert response.status == 201
        call_id = (await response.json())["call_id"]
    ws_url = base.replace("http", "ws") + f"/v1/calls/{call_id}/agent"
    async with dial_in(client, ws_url) as agent:
        await agent.wait_for("start")
        async with client.post(f"{base}/v1/calls/{call_id}/rtp", json={}) as response:
            leg = await response.json()
        caller = await open_caller(leg["host"], leg["port"], leg["payload_type"])
        await talk(caller)
        try:
            yield LiveCall(client, base, call_id, caller, agent)
        finally:
            assert caller.transport is not None
            caller.transport.close()


async def end_by_api(call: LiveCall) -> float:
    """DELETE /v1/calls/{id}."""
    ended = time.time()
    async with call.client.delete(f"{call.base}/v1/calls/{call.call_id}") as response:
        assert response.status == 202
    return ended


async def end_by_rtcp_bye(call: LiveCall) -> float:
    """The RTP caller says BYE."""
    assert call.caller.transport is not None
    ended = time.time()
    call.caller.transport.sendto(rtcp_bye(call.caller.ssrc))
    return ended


async def end_by_media_timeout(call: LiveCall) -> float:
    """The RTP caller falls silent; the server's media timeout (1.5 s here) ends the call."""
    return time.time() + 1.5


async def end_by_agent_exit(call: LiveCall) -> float:
    """The agent hangs up (the server is set to end the call with it)."""
    ended = time.time()
    await call.agent.ws.close(code=4000, message=b"goodbye from the agent")
    return ended


async def end_by_expiry(call: LiveCall) -> float:
    """Nothing happens any more: the sweeper ends the call after its retention (1 s here)."""
    return time.time() + 1.0


RTP_WAYS: dict[str, tuple[Callable[[LiveCall], Awaitable[float]], dict[str, Any]]] = {
    "api": (end_by_api, {}),
    "rtcp_bye": (end_by_rtcp_bye, {}),
    "media_timeout": (end_by_media_timeout, {"rtp_media_timeout_s": 1.5}),
    "agent_exit": (end_by_agent_exit, {"end_call_on_agent_exit": True}),
    "expired": (end_by_expiry, {"retention_s": 1.0, "sweep_interval_s": 0.2}),
}


@pytest.mark.parametrize("reason", list(RTP_WAYS))
async def test_rtp_call_record(tmp_path: Path, reason: str) -> None:
    """The manifest says why and when the call ended, and how each leg was and ended."""
    end, overrides = RTP_WAYS[reason]
    async with (
        running_server(make_settings(tmp_path, **overrides)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
        rtp_call(client, base) as call,
    ):
        connected = time.time()
        ended = await end(call)
        manifest = await wait_for_recording(client, base, call.call_id, timeout_s=30)
        close_code = await call.agent.wait_closed()

    legs = manifest["legs"]
    caller, agent = legs["caller"], legs["agent"]
    ended_at = utc_s(manifest["ended_at"])
    print(
        f"{reason}: end_reason {manifest['end_reason']}, ended {ended_at - ended:+.3f} s from"
        f" the expected moment, {ended_at - media_end_s(manifest):.3f} s after the last audio;"
        f" agent close {agent['close_code']} {agent['close_reason']!s} by {agent['closed_by']}"
    )
    assert manifest["end_reason"] == reason
    assert -0.05 <= ended_at - ended <= 0.6, (ended_at, ended)
    assert caller["transport"] == "rtp"
    assert caller["codec"] == "opus"
    assert caller["payload_type"] == 111
    assert caller["peer"] is not None
    assert caller["local"].startswith("127.0.0.1:")
    assert caller["end_reason"] == reason
    assert utc_s(caller["connected_at"]) <= connected <= utc_s(caller["disconnected_at"])
    assert abs(utc_s(caller["disconnected_at"]) - ended_at) <= 0.1
    assert caller["packets_in"] == 50
    assert agent["transport"] == "websocket"
    assert agent["end_reason"] == reason
    assert agent["media_sent"] >= 40  # the second of caller audio went to the agent
    if reason == "agent_exit":
        assert (agent["close_code"], agent["closed_by"]) == (4000, "agent")
        assert agent["close_reason"] == "goodbye from the agent"
    else:
        assert (agent["close_code"], agent["closed_by"]) == (1000, "server")
        assert agent["close_reason"] == reason
        assert close_code == 1000
    if reason in ("media_timeout", "expired"):
        # The call ended well after its last audio: ended_at is the end, not the last packet.
        assert ended_at - media_end_s(manifest) >= 0.8


async def test_shutdown_record(tmp_path: Path) -> None:
    """A call still live when the server stops is ended as shutdown; the agent gets 1001."""
    settings = make_settings(tmp_path, drain_timeout_s=0.5)
    async with aiohttp.ClientSession(headers=auth()) as client:
        async with running_server(settings) as (server, base), rtp_call(client, base) as call:
            ended = time.time() + 0.5
            await server.stop()
            close_code = await call.agent.wait_closed()
        (path,) = await asyncio.to_thread(
            lambda: list(
                Path(settings.storage_path).rglob(f"conversation_{call.call_id}_manifest.json")
            )
        )
        manifest = json.loads(await asyncio.to_thread(path.read_text))
    ended_at = utc_s(manifest["ended_at"])
    print(f"shutdown: ended {ended_at - ended:+.3f} s from the drain timeout, close {close_code}")
    assert manifest["end_reason"] == "shutdown"
    assert -0.05 <= ended_at - ended <= 0.6
    assert close_code == 1001
    assert manifest["legs"]["agent"]["close_code"] == 1001
    assert manifest["legs"]["caller"]["end_reason"] == "shutdown"


def closed_port() -> int:
    """A loopback TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_failed_dial_out_is_shown_and_recorded(tmp_path: Path) -> None:
    """A failed dial-out shows in GET /v1/calls/{id} while the call goes on, then in its record."""
    url = f"ws://127.0.0.1:{closed_port()}/agent"
    async with (
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        async with client.post(f"{base}/v1/calls", json={"agent_url": url}) as response:
            call_id = (await response.json())["call_id"]
        for _ in range(100):
            async with client.get(f"{base}/v1/calls/{call_id}") as response:
                agent = (await response.json())["legs"]["agent"]
            if agent["error"] is not None:
                break
            await asyncio.sleep(0.05)
        async with client.delete(f"{base}/v1/calls/{call_id}") as response:
            assert response.status == 202
        manifest = await wait_for_recording(client, base, call_id)
    print("agent.error:", agent["error"])
    assert agent["url"] == url
    assert agent["error"] == f"agent at {url} could not be reached: Connection refused", agent
    assert agent["open"] is False
    assert manifest["status"] == "empty"  # no caller ever came: the record is all there is
    assert manifest["end_reason"] == "api"
    assert manifest["legs"]["agent"]["end_reason"] == "dial_failed"
    assert manifest["legs"]["agent"]["error"] == agent["error"]
    assert any("could not be dialled" in note for note in manifest["notes"])


async def test_failed_dial_out_ends_the_call_when_set_to(tmp_path: Path) -> None:
    """With end_call_on_agent_exit, a failed dial-out ends the call: dial_failed, stored empty."""
    url = f"ws://127.0.0.1:{closed_port()}/agent"
    async with (
        running_server(make_settings(tmp_path, end_call_on_agent_exit=True)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        created = time.time()
        async with client.post(f"{base}/v1/calls", json={"agent_url": url}) as response:
            call_id = (await response.json())["call_id"]
        manifest = await wait_for_recording(client, base, call_id)
        async with client.get(f"{base}/v1/recordings/{call_id}/analysis") as response:
            analysis_status = response.status
    assert (manifest["status"], manifest["end_reason"]) == ("empty", "dial_failed")
    assert manifest["files"] == []
    assert manifest["jobs"] == {}  # no analysis or transcript for a call without media
    assert analysis_status == 404
    assert utc_s(manifest["ended_at"]) - created <= 2.0


@asynccontextmanager
async def whip_call(
    client: aiohttp.ClientSession, base: str, peer: ClientPeer
) -> AsyncIterator[str]:
    """A WebRTC caller connected over WHIP to a new call with an agent dialled in, a second in."""
    async with client.post(f"{base}/v1/calls", json={}) as response:
        call_id = (await response.json())["call_id"]
    ws_url = base.replace("http", "ws") + f"/v1/calls/{call_id}/agent"
    async with dial_in(client, ws_url) as agent:
        await agent.wait_for("start")
        offer = await peer.create_offer()
        async with client.post(
            f"{base}/whip?call_id={call_id}",
            data=offer,
            headers={"Content-Type": "application/sdp"},
        ) as response:
            assert response.status == 201
            await peer.accept_answer(await response.text())
        await peer.wait_for_samples(48000)
        yield call_id


@pytest.mark.parametrize("reason", ["whip_delete", "caller_hangup"])
async def test_webrtc_call_record(tmp_path: Path, reason: str) -> None:
    """A WebRTC caller that hangs up (WHIP DELETE, or just closing its peer connection)."""
    peer = ClientPeer(ToneTrack(500.0))
    async with (
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
        whip_call(client, base, peer) as call_id,
    ):
        ended = time.time()
        if reason == "whip_delete":
            async with client.delete(f"{base}/whip/{call_id}") as response:
                assert response.status == 200
        await peer.close()
        manifest = await wait_for_recording(client, base, call_id)
    caller = manifest["legs"]["caller"]
    ended_at = utc_s(manifest["ended_at"])
    print(f"{reason}: ended {ended_at - ended:+.3f} s after the hang-up; caller leg {caller}")
    assert manifest["end_reason"] == reason
    assert -0.05 <= ended_at - ended <= 1.0
    assert caller["transport"] == "webrtc"
    assert caller["end_reason"] == reason
    assert caller["packets_in"] >= 40
