"""The agent's voice on the recording is where the agent sent it, one 20 ms frame later at most."""

import asyncio
import random
import re
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from audio_oracle import assert_valid_opus, decode_ogg, find_onset
from rtp_caller import open_caller
from rtp_sender import silence_payload
from server_harness import auth, make_settings, running_server, wait_for_recording
from twilio_agent import TwilioTestAgent, dial_in, encode_audio, make_tone
from webrtc_peer import ClientPeer, ToneTrack

AGENT_HZ = 1300.0
MARKERS = 6
MARKER_MS = 100
# What the README documents the server adds to the agent's audio: it leaves at the next 20 ms
# tick, 0-20 ms after it arrives (10 ms on average), and the recording places it when it left;
# decoded, Opus audio comes out 6.5 ms (the encoder's lookahead) after the frame's start.
OPUS_LOOKAHEAD_MS = 6.5
PACKETIZATION_MS = 10.0 + OPUS_LOOKAHEAD_MS
TOLERANCE_MS = 20.0
# How closely the manifest's agent_to_caller p50 matches the wait measured on the recording (its
# histogram has 1 ms buckets there; an onset is found to a millisecond or two).
REPORTED_MS = 5.0


async def _send_markers(agent: TwilioTestAgent) -> list[int]:
    """Tone markers at random points of the server's 20 ms grid; the wall time each was sent."""
    rng = random.Random(5)
    payload = encode_audio(make_tone(AGENT_HZ, MARKER_MS, agent.sample_rate_hz), agent.encoding)
    sent_ns = []
    for _ in range(MARKERS):
        await asyncio.sleep(0.4 + rng.uniform(0, 0.02))
        sent_ns.append(time.time_ns())
        await agent.send_payload(payload)
    await asyncio.sleep(0.5)  # the last marker plays out
    return sent_ns


def _marker_offsets_ms(stereo: Path, manifest: dict[str, Any], sent_ns: list[int]) -> list[float]:
    """How much later than its send time each marker starts on the recording's right channel."""
    # The file's first sample is at media_started_at: wall times map onto it directly.
    origin = datetime.fromisoformat(manifest["media_started_at"])
    origin_ns = int(origin.timestamp()) * 1_000_000_000 + origin.microsecond * 1_000
    right = decode_ogg(stereo)[1]
    offsets = []
    for sent in sent_ns:
        expected_s = (sent - origin_ns) / 1e9
        onset = find_onset(right, AGENT_HZ, expected_s + 0.030, search_s=0.1)
        assert onset is not None, f"no marker near {expected_s:.3f} s"
        offsets.append((onset - expected_s) * 1000)
    return offsets


def _check_latency_report(manifest: dict[str, Any], metrics: str, offsets_ms: list[float]) -> None:
    """The manifest and /metrics report what the server added, each way, for every frame."""
    latency = manifest["latency_ms"]
    # Every frame of a marker waits as long as its first did for the tick: what the recording
    # shows, less the encoder's lookahead.
    waited_ms = statistics.median(offsets_ms) - OPUS_LOOKAHEAD_MS
    reported_ms = latency["agent_to_caller"]["p50"]
    assert abs(reported_ms - waited_ms) <= REPORTED_MS, (latency, offsets_ms)
    played = MARKERS * MARKER_MS // 20
    assert latency["agent_to_caller"]["count"] == played, latency
    assert latency["caller_to_agent"]["count"] > 50, latency
    for direction in ("caller_to_agent", "agent_to_caller"):
        assert 0 <= latency[direction]["p50"] <= latency[direction]["p99"], latency
    counts = {
        name: float(value)
        for name, value in re.findall(
            r"^(mediaserver_\w+_latency_seconds_count) (\S+)$", metrics, re.M
        )
    }
    assert counts["mediaserver_agent_to_caller_latency_seconds_count"] >= played, counts
    assert counts["mediaserver_caller_to_agent_latency_seconds_count"] > 50, counts


async def _finish(
    client: aiohttp.ClientSession, base: str, call_id: str, tmp_path: Path
) -> tuple[Path, dict[str, Any], str]:
    """End the call; its stereo file, its manifest and the server's metrics."""
    async with client.delete(f"{base}/v1/calls/{call_id}") as response:
        assert response.status == 202
    manifest = await wait_for_recording(client, base, call_id)
    stereo = tmp_path / "stereo.opus"
    async with client.get(f"{base}/v1/recordings/{call_id}/audio") as response:
        stereo.write_bytes(await response.read())
    assert_valid_opus(stereo)
    async with client.get(f"{base}/metrics") as response:
        metrics = await response.text()
    return stereo, manifest, metrics


@pytest.mark.parametrize("transport", ["rtp", "webrtc"])
async def test_agent_markers_land_where_they_were_sent(tmp_path: Path, transport: str) -> None:
    """Each agent marker starts on the recording 0-20 ms (+-20) after the agent sent it."""
    async with (
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        async with client.post(f"{base}/v1/calls", json={"caller_codec": "opus"}) as response:
            call_id = (await response.json())["call_id"]
        ws_url = base.replace("http", "ws") + f"/v1/calls/{call_id}/agent"
        async with dial_in(client, ws_url) as agent:
            await agent.wait_for("start")
            if transport == "rtp":
                async with client.post(f"{base}/v1/calls/{call_id}/rtp", json={}) as response:
                    leg = await response.json()
                caller = await open_caller(leg["host"], leg["port"], leg["payload_type"])
                stream = asyncio.create_task(caller.send_stream([silence_payload()] * 250))
                await asyncio.wait_for(caller.got_packet.wait(), 5)
                sent_ns = await _send_markers(agent)
                stream.cancel()
                assert caller.transport is not None
                caller.transport.close()
            else:
                peer = ClientPeer(ToneTrack(300.0, amplitude=0.1))
                async with client.post(
                    f"{base}/whip?call_id={call_id}",
                    data=await peer.create_offer(),
                    headers={"Content-Type": "application/sdp"},
                ) as response:
                    await peer.accept_answer(await response.text())
                await asyncio.wait_for(peer.wait_for_samples(960), 10)
                sent_ns = await _send_markers(agent)
        stereo, manifest, metrics = await _finish(client, base, call_id, tmp_path)
        if transport == "webrtc":
            await peer.close()
    offsets = _marker_offsets_ms(stereo, manifest, sent_ns)
    print(
        f"{transport}: agent markers on the recording after their send time (ms):",
        [round(o, 1) for o in offsets],
    )
    for offset in offsets:
        assert abs(offset - PACKETIZATION_MS) <= TOLERANCE_MS, offsets
    _check_latency_report(manifest, metrics, offsets)
