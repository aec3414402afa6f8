"""The built-in echo agent (agent_url "builtin:echo"): the caller's audio comes back, delayed."""

import asyncio
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from mediaserver.audio.g711 import encode_pcmu
from mediaserver.errors import AgentUrlError
from mediaserver.transports.echo_agent import parse_echo_delay_s

from audio_oracle import RATE_HZ, assert_valid_opus, decode_ogg, find_onset, tone_envelope
from rtp_caller import open_caller
from rtp_sender import marker_template, silence_payload
from server_harness import auth, make_settings, running_server, wait_for_recording

CALLER_HZ = 500.0


def _caller_payloads(codec: str, total_s: float, marker_s: float) -> list[bytes]:
    """Packets of silence with one tone starting at `marker_s`, in Opus or PCMU."""
    count = int(total_s / 0.02)
    first = round(marker_s / 0.02)
    if codec == "pcmu":
        t = np.arange(8000 * 0.3) / 8000
        tone = (np.sin(2 * np.pi * CALLER_HZ * t) * 8000).astype(np.int16)
        payloads = [encode_pcmu(np.zeros(160, np.int16))] * count
        for index in range(15):  # 300 ms of tone
            payloads[first + index] = encode_pcmu(tone[index * 160 : (index + 1) * 160])
        return payloads
    payloads = [silence_payload()] * count
    template = marker_template(CALLER_HZ)
    first -= 10  # the template's tone starts at its 10th packet
    payloads[first : first + len(template)] = template
    return payloads


@pytest.mark.parametrize(("codec", "delay_ms"), [("opus", 300), ("pcmu", 700)])
async def test_echo_agent_plays_the_caller_back_after_its_delay(
    tmp_path: Path, codec: str, delay_ms: int
) -> None:
    """Over plain RTP: the caller's tone is on the left, and on the right `delay_ms` later."""
    async with (
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        body = {"caller_codec": codec, "agent_url": f"builtin:echo?delay_ms={delay_ms}"}
        async with client.post(f"{base}/v1/calls", json=body) as response:
            assert response.status == 201
            call = await response.json()
        assert call["legs"]["agent"]["kind"] == "echo"
        assert call["legs"]["agent"]["connected"] is True
        async with client.post(f"{base}/v1/calls/{call['call_id']}/rtp", json={}) as response:
            leg = await response.json()
        caller = await open_caller(leg["host"], leg["port"], leg["payload_type"])
        payloads = _caller_payloads(codec, 3.0, 1.0)
        sending = asyncio.create_task(
            caller.send_stream(payloads, samples_per_packet=960 if codec == "opus" else 160)
        )
        await sending
        await asyncio.wait_for(caller.got_packet.wait(), 5)
        await asyncio.sleep(delay_ms / 1000 + 0.5)  # the echo finishes playing
        async with client.get(f"{base}/v1/calls/{call['call_id']}") as response:
            played = (await response.json())["legs"]["agent"]["frames_played"]
        async with client.delete(f"{base}/v1/calls/{call['call_id']}") as response:
            assert response.status == 202
        await wait_for_recording(client, base, call["call_id"])
        async with client.get(f"{base}/v1/recordings/{call['call_id']}/audio") as response:
            stereo = tmp_path / "stereo.opus"
            stereo.write_bytes(await response.read())
        assert caller.transport is not None
        caller.transport.close()

    assert played > 100  # the echo of 3 s of caller audio, 20 ms frames
    assert_valid_opus(stereo)
    audio = decode_ogg(stereo)
    envelope = tone_envelope(audio[0], CALLER_HZ)
    left = find_onset(audio[0], CALLER_HZ, float(np.argmax(envelope > 0.1)) / RATE_HZ)
    assert left is not None
    right = find_onset(audio[1], CALLER_HZ, left + delay_ms / 1000, search_s=0.15)
    assert right is not None, "the caller's tone is not on the right channel"
    # The delay, plus the relay's own: decode, a playout frame or two, encode.
    print(f"echo of {delay_ms} ms measured at {(right - left) * 1000:.0f} ms")
    assert delay_ms / 1000 <= right - left <= delay_ms / 1000 + 0.15, (left, right)


@pytest.mark.parametrize(
    ("url", "delay_s"),
    [("builtin:echo", 1.0), ("builtin:echo?delay_ms=0", 0.0), ("builtin:echo?delay_ms=250", 0.25)],
)
def test_echo_urls_name_their_delay(url: str, delay_s: float) -> None:
    """Without delay_ms the setting's default applies."""
    assert parse_echo_delay_s(url, 1.0) == delay_s


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("builtin:parrot", "no built-in agent"),
        ("builtin:echo?delay_ms=-1", "delay_ms"),
        ("builtin:echo?delay_ms=99999", "delay_ms"),
        ("builtin:echo?delay_ms=1.5", "delay_ms"),
        ("builtin:echo?delay_ms=²", "delay_ms"),
        ("builtin:echo?volume=3", "one parameter"),
        ("builtin:echo#x", "no built-in agent"),
    ],
)
def test_bad_echo_urls_say_what_is_wrong(url: str, says: str) -> None:
    """A clear error for each mistake."""
    with pytest.raises(AgentUrlError, match=says):
        parse_echo_delay_s(url, 1.0)


async def test_a_bad_builtin_agent_url_is_400_and_makes_no_call(tmp_path: Path) -> None:
    """The API refuses it before any call exists."""
    async with (
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        body = {"agent_url": "builtin:echo?delay_ms=abc"}
        async with client.post(f"{base}/v1/calls", json=body) as response:
            error = await response.json()
            assert response.status == 400
        async with client.get(f"{base}/v1/calls") as response:
            calls = (await response.json())["calls"]
    assert error["error"]["code"] == "bad_request"
    assert "delay_ms" in error["error"]["message"]
    assert calls == []
