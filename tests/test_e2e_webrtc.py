"""End to end over WebRTC: an aiortc caller via WHIP, a Twilio-style agent, the stored recording."""

import asyncio
import fractions
import time
from pathlib import Path

import aiohttp
import numpy as np
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError
from av import AudioFrame

from audio_oracle import assert_valid_opus, decode_ogg, find_onset, tone_amplitude
from server_harness import auth, make_settings, running_server, wait_for_recording
from twilio_agent import dial_in
from webrtc_peer import ClientPeer

CALLER_HZ = 500.0
AGENT_HZ = 1300.0
RATE = 48000


class BurstTrack(AudioStreamTrack):
    """Silence with one tone burst at a given time, paced in real time; notes when it began."""

    def __init__(self, burst_at_s: float, burst_s: float = 0.3) -> None:
        super().__init__()
        self.burst_at_s = burst_at_s
        self.burst_s = burst_s
        self.burst_sent_ns: int | None = None
        self.burst_started = asyncio.Event()
        self._pts = 0
        self._start_s: float | None = None

    async def recv(self) -> AudioFrame:
        """The next 20 ms."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._start_s is None:
            self._start_s = time.monotonic()
        else:
            await asyncio.sleep(self._start_s + self._pts / RATE - time.monotonic())
        t = (self._pts + np.arange(960)) / RATE
        inside = (t >= self.burst_at_s) & (t < self.burst_at_s + self.burst_s)
        if inside.any() and self.burst_sent_ns is None:
            offset_s = (np.argmax(inside) + self._pts) / RATE - self._pts / RATE
            self.burst_sent_ns = time.monotonic_ns() + int(offset_s * 1e9)
            self.burst_started.set()
        samples = np.where(inside, 0.5 * 32767 * np.sin(2 * np.pi * CALLER_HZ * t), 0)
        frame = AudioFrame.from_ndarray(
            samples.astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE
        frame.time_base = fractions.Fraction(1, RATE)
        frame.pts = self._pts
        self._pts += 960
        return frame


async def test_whip_caller_and_agent_are_recorded(tmp_path: Path) -> None:
    """An aiortc caller over WHIP and an agent: tones on their sides at the times they happened."""
    track = BurstTrack(burst_at_s=1.0)
    peer = ClientPeer(track)
    async with (
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
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
                assert response.status == 201, await response.text()
                assert response.headers["Location"] == f"/whip/{call_id}"
                assert response.content_type == "application/sdp"
                answer = await response.text()
            assert "a=setup:passive" in answer
            await peer.accept_answer(answer)
            await asyncio.wait_for(track.burst_started.wait(), 10)
            await asyncio.sleep(1.0)  # the agent answers a second after the caller spoke
            agent_sent_ns = time.monotonic_ns()
            await agent.send_tone(AGENT_HZ, 300)
            await asyncio.wait_for(peer.wait_for_samples(RATE * 3), 10)
            heard_by_caller = peer.audio()
            heard_by_agent = agent.caller_audio()
        async with client.delete(f"{base}/whip/{call_id}") as response:
            assert response.status == 200
        await peer.close()
        await wait_for_recording(client, base, call_id)
        async with client.get(f"{base}/v1/recordings/{call_id}/audio") as response:
            stereo_bytes = await response.read()

    stereo = tmp_path / "stereo.opus"
    stereo.write_bytes(stereo_bytes)
    assert_valid_opus(stereo)
    audio = decode_ogg(stereo)
    assert audio.shape[0] == 2
    level = np.abs(audio[0]) > 0.1
    left_onset = find_onset(audio[0], CALLER_HZ, float(np.argmax(level)) / RATE)
    assert left_onset is not None
    assert track.burst_sent_ns is not None
    expected_right = left_onset + (agent_sent_ns - track.burst_sent_ns) / 1e9
    right_onset = find_onset(audio[1], AGENT_HZ, expected_right + 0.02, search_s=0.2)
    assert right_onset is not None
    # played at the next 20 ms tick after it reached the server
    assert -0.010 <= right_onset - expected_right <= 0.060, (right_onset, expected_right)
    assert tone_amplitude(audio[1], CALLER_HZ, left_onset + 0.02, 0.2) < 0.01
    assert tone_amplitude(audio[0], AGENT_HZ, right_onset + 0.02, 0.2) < 0.01
    # Both ends heard each other.
    assert _strength(heard_by_caller, RATE, AGENT_HZ) > 0.01
    assert _strength(heard_by_agent.astype(np.float32) / 32768, 8000, CALLER_HZ) > 0.005


def _strength(signal: np.ndarray, rate: int, freq_hz: float) -> float:
    t = np.arange(signal.size) / rate
    return float(np.abs(np.sum(signal * np.exp(-2j * np.pi * freq_hz * t))) / max(1, signal.size))


async def test_whip_refuses_bad_offers_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """Malformed, audio-less and non-SDP offers get 400/422/415 with a reason; no call remains."""
    peer = ClientPeer()
    good_offer = await peer.create_offer()
    await peer.close()
    no_audio = good_offer.replace("m=audio", "m=video").replace("opus/48000/2", "VP8/90000")
    async with (
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        for body, content_type, status in (
            ("hello", "application/sdp", 400),
            (no_audio, "application/sdp", 422),
            (good_offer, "text/plain", 415),
            ("", "application/sdp", 400),
        ):
            async with client.post(
                f"{base}/whip", data=body, headers={"Content-Type": content_type}
            ) as response:
                assert response.status == status, (status, await response.text())
                error = (await response.json())["error"]
                assert error["message"]
        async with client.get(f"{base}/v1/calls") as response:
            assert (await response.json())["calls"] == []
        async with client.options(f"{base}/whip") as response:
            assert response.status == 204
            assert "POST" in response.headers["Access-Control-Allow-Methods"]
        async with client.patch(
            f"{base}/whip/nope",
            data="a=x",
            headers={"Content-Type": "application/trickle-ice-sdpfrag"},
        ) as response:
            assert response.status == 404
    assert not any((tmp_path / "spool").iterdir())
