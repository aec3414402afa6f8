"""End to end over plain RTP: a caller, a Twilio-style agent, the server between, the recording."""

import asyncio
from pathlib import Path

import aiohttp
import numpy as np

from audio_oracle import (
    RATE_HZ,
    assert_valid_opus,
    decode_ogg,
    find_onset,
    tone_amplitude,
    tone_envelope,
)
from rtp_caller import open_caller
from rtp_sender import marker_template, silence_payload
from server_harness import auth, make_settings, running_server, wait_for_recording
from twilio_agent import dial_in

CALLER_HZ = 500.0
AGENT_HZ = 1300.0


def _caller_payloads(total_s: float, marker_s: float) -> list[bytes]:
    """Opus packets: silence with one caller tone whose first sample starts at `marker_s`."""
    payloads = [silence_payload()] * int(total_s / 0.02)
    template = marker_template(CALLER_HZ)
    first = round(marker_s / 0.02) - 10  # the template's tone starts at its 10th packet
    payloads[first : first + len(template)] = template
    return payloads


async def _fetch_stereo(client: aiohttp.ClientSession, base: str, call_id: str) -> bytes:
    """Download the stereo file in two ranged requests and once whole; they must agree."""
    url = f"{base}/v1/recordings/{call_id}/audio?channel=stereo"
    async with client.get(url, headers=auth()) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("audio/ogg")
        whole = await response.read()
    parts = []
    for byte_range in (f"bytes=0-{len(whole) // 2 - 1}", f"bytes={len(whole) // 2}-"):
        async with client.get(url, headers={**auth(), "Range": byte_range}) as response:
            assert response.status == 206
            parts.append(await response.read())
    assert b"".join(parts) == whole
    return whole


async def test_rtp_caller_and_agent_are_recorded_in_sync(tmp_path: Path) -> None:
    """Caller tone left, agent tone right, offset as heard on the wire; the agent hears it."""
    async with (
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        async with client.post(f"{base}/v1/calls", json={"caller_codec": "opus"}) as response:
            assert response.status == 201
            call_id = (await response.json())["call_id"]
        ws_url = base.replace("http", "ws") + f"/v1/calls/{call_id}/agent"
        async with dial_in(client, ws_url) as agent:
            await agent.expect("connected")
            await agent.expect("start")
            async with client.post(
                f"{base}/v1/calls/{call_id}/rtp", json={"codec": "opus"}
            ) as response:
                assert response.status == 201
                leg = await response.json()
            caller = await open_caller(leg["host"], leg["port"], leg["payload_type"])
            sending = asyncio.create_task(caller.send_stream(_caller_payloads(4.0, 1.0)))
            await asyncio.sleep(2.0)  # the agent answers two seconds into the call
            await agent.send_tone(AGENT_HZ, 300)
            sent = await sending
            await asyncio.wait_for(caller.got_audio.wait(), 5)
            heard = agent.caller_audio()
        async with client.delete(f"{base}/v1/calls/{call_id}") as response:
            assert response.status == 202
        await wait_for_recording(client, base, call_id)
        stereo_bytes = await _fetch_stereo(client, base, call_id)
        assert caller.transport is not None
        caller.transport.close()

    stereo = tmp_path / "stereo.opus"
    stereo.write_bytes(stereo_bytes)
    assert_valid_opus(stereo)
    audio = decode_ogg(stereo)
    assert audio.shape[0] == 2
    envelope = tone_envelope(audio[0].astype(np.float32), CALLER_HZ)
    left_onset = find_onset(audio[0], CALLER_HZ, float(np.argmax(envelope > 0.1)) / RATE_HZ)
    assert left_onset is not None
    # Where the agent's tone must be: as far after the caller's tone as the caller heard it.
    caller_tone_sent_ns = sent[round(1.0 / 0.02)]
    agent_tone_heard_ns = caller.audio[0].arrival_ns
    expected_right = left_onset + (agent_tone_heard_ns - caller_tone_sent_ns) / 1e9
    right_onset = find_onset(audio[1], AGENT_HZ, expected_right)
    assert right_onset is not None
    assert abs(right_onset - expected_right) <= 0.020, (right_onset, expected_right)
    assert tone_amplitude(audio[1], CALLER_HZ, left_onset + 0.01, 0.08) < 0.01
    assert tone_amplitude(audio[0], AGENT_HZ, right_onset + 0.01, 0.25) < 0.01
    # The agent heard the caller's tone (μ-law 8 kHz).
    heard_f = heard.astype(np.float32) / 32768
    t = np.arange(heard_f.size) / 8000
    strength = np.abs(np.sum(heard_f * np.exp(-2j * np.pi * CALLER_HZ * t))) / max(1, heard_f.size)
    assert strength > 0.005


async def test_barge_in_clear_cuts_the_agent_and_returns_its_mark(tmp_path: Path) -> None:
    """Agent sends 5 s, clears after ~1 s: ~1 s is played and recorded, and its mark comes back."""
    async with (
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        async with client.post(f"{base}/v1/calls", json={}) as response:
            call_id = (await response.json())["call_id"]
        ws_url = base.replace("http", "ws") + f"/v1/calls/{call_id}/agent"
        async with dial_in(client, ws_url) as agent:
            await agent.wait_for("start")
            async with client.post(f"{base}/v1/calls/{call_id}/rtp", json={}) as response:
                leg = await response.json()
            caller = await open_caller(leg["host"], leg["port"], leg["payload_type"])
            sending = asyncio.create_task(caller.send_stream(_caller_payloads(4.0, 1.6)))
            await asyncio.sleep(0.2)
            await agent.send_tone(AGENT_HZ, 5000)
            await agent.send_mark("after-the-long-answer")
            await asyncio.wait_for(caller.got_audio.wait(), 5)
            while len(caller.audio) < 50:  # one second of agent audio has reached the caller
                caller.got_audio.clear()
                await asyncio.wait_for(caller.got_audio.wait(), 5)
            await agent.send_clear()
            mark = await agent.wait_for("mark")
            assert mark["mark"]["name"] == "after-the-long-answer"
            await sending
            played = len(caller.audio)
        async with client.delete(f"{base}/v1/calls/{call_id}") as response:
            assert response.status == 202
        await wait_for_recording(client, base, call_id)
        stereo_bytes = await _fetch_stereo(client, base, call_id)
        assert caller.transport is not None
        caller.transport.close()

    assert 50 <= played <= 60, played  # ~1 s, not 5 s
    stereo = tmp_path / "stereo.opus"
    stereo.write_bytes(stereo_bytes)
    audio = decode_ogg(stereo)
    envelope = tone_envelope(audio[1].astype(np.float32), AGENT_HZ)
    agent_seconds = float(np.count_nonzero(envelope > 0.05)) / RATE_HZ
    assert 0.9 <= agent_seconds <= 1.3, agent_seconds
    assert played * 0.02 - 0.1 <= agent_seconds <= played * 0.02 + 0.1
