"""Plain-RTP legs as telephony describes them: SDP offers from ffmpeg, dynamic payload types."""

import asyncio
import random
import re
import socket
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import structlog

from audio_oracle import RATE_HZ, assert_valid_opus, decode_ogg, tone_envelope
from rtp_caller import open_caller
from server_harness import auth, make_settings, running_server, wait_for_recording
from twilio_agent import dial_in, encode_mulaw, make_tone

TONE_HZ = 440.0
SDP = "application/sdp"


async def run_ffmpeg(*args: str) -> None:
    """Run ffmpeg to completion; it must succeed."""
    process = await asyncio.create_subprocess_exec(
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, (out + err).decode(errors="replace")


async def ffmpeg_offer(tmp_path: Path, *encoder: str) -> str:
    """The SDP ffmpeg writes with -sdp_file for a stream it sends with these encoder options."""
    # ffmpeg describes the stream it sends as it starts; a short run at a placeholder socket.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        sdp_file = tmp_path / f"offer-{port}.sdp"
        await run_ffmpeg(
            "-f", "lavfi", "-i", f"sine=f={TONE_HZ:g}:d=0.1", *encoder,
            "-f", "rtp", f"rtp://127.0.0.1:{port}", "-sdp_file", str(sdp_file),
        )  # fmt: skip
    return sdp_file.read_text()


def answer_port(answer: str) -> int:
    """The port of the answer's audio m-line."""
    match = re.search(r"^m=audio (\d+) RTP/AVP ", answer, re.MULTILINE)  # an offer's, too
    assert match is not None, answer
    return int(match[1])


async def create_call(client: aiohttp.ClientSession, base: str, **body: Any) -> str:
    """POST /v1/calls; the new call's id."""
    async with client.post(f"{base}/v1/calls", json=body) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["call_id"])


async def post_offer(client: aiohttp.ClientSession, base: str, call_id: str, offer: str) -> str:
    """POST the SDP offer to the call's RTP leg; the answer."""
    async with client.post(
        f"{base}/v1/calls/{call_id}/rtp", data=offer, headers={"Content-Type": SDP}
    ) as response:
        text = await response.text()
        assert response.status == 201, text
        assert response.content_type == SDP
        assert response.headers["Location"] == f"/v1/calls/{call_id}"
    return text


async def fetch_channel(
    client: aiohttp.ClientSession, base: str, call_id: str, channel: str, tmp_path: Path
) -> np.ndarray:
    """Download one channel file, check it with opusinfo, decode it with PyAV."""
    async with client.get(f"{base}/v1/recordings/{call_id}/audio?channel={channel}") as response:
        assert response.status == 200
        path = tmp_path / f"{call_id}-{channel}.opus"
        path.write_bytes(await response.read())
    assert_valid_opus(path)
    return decode_ogg(path)


def tone_seconds(signal: np.ndarray, freq_hz: float = TONE_HZ, level: float = 0.05) -> float:
    """How long a tone sounds in a signal (its envelope above `level`)."""
    envelope = tone_envelope(signal.astype(np.float32), freq_hz)
    return float(np.count_nonzero(envelope > level)) / RATE_HZ


def mulaw_strength(samples: np.ndarray, freq_hz: float, rate_hz: int) -> float:
    """How strongly a frequency is present in int16 samples (0..~0.5 of full scale)."""
    signal = samples.astype(np.float64) / 32768
    t = np.arange(signal.size) / rate_hz
    return float(np.abs(np.sum(signal * np.exp(-2j * np.pi * freq_hz * t))) / max(1, signal.size))


async def test_ffmpeg_defaults_with_its_sdp_file_as_the_offer(tmp_path: Path) -> None:
    """ffmpeg's own SDP is the offer; its default RTP (PT 97, random source port) is recorded."""
    async with (
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        call_id = await create_call(client, base)
        ws_url = base.replace("http", "ws") + f"/v1/calls/{call_id}/agent"
        async with dial_in(client, ws_url) as agent:
            await agent.wait_for("start")
            offer = await ffmpeg_offer(tmp_path, "-c:a", "libopus")
            assert "a=rtpmap:97 opus/48000/2" in offer  # ffmpeg's default payload type
            answer = await post_offer(client, base, call_id, offer)
            print("offer:\n" + offer + "answer:\n" + answer)
            assert "c=IN IP4 127.0.0.1" in answer
            port = answer_port(answer)
            assert f"m=audio {port} RTP/AVP 97" in answer
            assert "a=rtpmap:97 opus/48000/2" in answer
            # ffmpeg with its defaults, sending from a port of its own choosing.
            await run_ffmpeg(
                "-re", "-f", "lavfi", "-i", f"sine=f={TONE_HZ:g}:d=3", "-c:a", "libopus",
                "-f", "rtp", f"rtp://127.0.0.1:{port}",
            )  # fmt: skip
            async with client.get(f"{base}/v1/calls/{call_id}") as response:
                live = await response.json()
            heard = agent.caller_audio()
        async with client.delete(f"{base}/v1/calls/{call_id}") as response:
            assert response.status == 202
        manifest = await wait_for_recording(client, base, call_id)
        left = await fetch_channel(client, base, call_id, "left", tmp_path)

    caller = live["legs"]["caller"]["transport"]
    print("caller leg:", {k: caller[k] for k in ("payload_type", "packets_in", "peer", "local")})
    assert caller["payload_type"] == 97
    assert caller["peer"] is not None  # latched: ffmpeg sends from another port than it offered
    assert caller["peer"] != f"127.0.0.1:{answer_port(offer)}"
    assert caller["dropped_in"]["wrong_payload_type"] == 0
    assert 140 <= caller["packets_in"] <= 160, caller["packets_in"]  # 3 s of 20 ms packets
    sounding = tone_seconds(left[0])
    print(f"tone in the recording: {sounding:.3f} s of 3 s; notes: {manifest['notes']}")
    assert 2.85 <= sounding <= 3.1, sounding
    assert manifest["notes"] == []
    assert mulaw_strength(heard, TONE_HZ, 8000) > 0.02  # the agent heard the tone too


async def test_pcmu_with_a_dynamic_payload_type_from_ffmpeg(tmp_path: Path) -> None:
    """PCMU at payload type 100, offered by ffmpeg's SDP, is negotiated and recorded."""
    async with (
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        call_id = await create_call(client, base, caller_codec="pcmu")
        pcmu = ("-ar", "8000", "-c:a", "pcm_mulaw", "-payload_type", "100")
        offer = await ffmpeg_offer(tmp_path, *pcmu)
        assert "a=rtpmap:100 PCMU/8000" in offer
        answer = await post_offer(client, base, call_id, offer)
        assert "a=rtpmap:100 PCMU/8000" in answer
        port = answer_port(answer)
        await run_ffmpeg(
            "-re", "-f", "lavfi", "-i", f"sine=f={TONE_HZ:g}:d=2", *pcmu,
            "-f", "rtp", f"rtp://127.0.0.1:{port}",
        )  # fmt: skip
        async with client.delete(f"{base}/v1/calls/{call_id}") as response:
            assert response.status == 202
        manifest = await wait_for_recording(client, base, call_id)
        left = await fetch_channel(client, base, call_id, "left", tmp_path)

    caller_report = next(c for c in manifest["channels"] if c["channel"] == "caller")
    assert caller_report["codec"] == "pcmu"
    assert manifest["legs"]["caller"]["payload_type"] == 100
    sounding = tone_seconds(left[0])
    print(f"PCMU/100 tone in the recording: {sounding:.3f} s of 2 s")
    assert 1.85 <= sounding <= 2.1, sounding


async def test_offer_without_the_calls_codec_says_what_to_do(tmp_path: Path) -> None:
    """A PCMU offer to an Opus call is refused (422) with the codec to create the call with."""
    async with (
        running_server(make_settings(tmp_path, drain_timeout_s=0.5)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        call_id = await create_call(client, base)
        offer = await ffmpeg_offer(tmp_path, "-ar", "8000", "-c:a", "pcm_mulaw")
        async with client.post(
            f"{base}/v1/calls/{call_id}/rtp", data=offer, headers={"Content-Type": SDP}
        ) as response:
            assert response.status == 422
            error = (await response.json())["error"]
        async with client.get(f"{base}/v1/calls/{call_id}") as response:
            assert response.status == 200  # the call is still there, waiting for a leg
    assert error["code"] == "unsupported_sdp"
    assert "caller_codec pcmu" in error["message"], error


async def test_json_leg_with_payload_types_and_a_foreign_one_noted(tmp_path: Path) -> None:
    """A JSON leg takes PCMU at PT 101; PT 0 packets are dropped, logged once and noted."""
    async with (
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        call_id = await create_call(client, base, caller_codec="pcmu")
        async with client.post(
            f"{base}/v1/calls/{call_id}/rtp",
            json={"codec": "pcmu", "payload_type": 101, "dtmf_payload_type": 102},
        ) as response:
            assert response.status == 201
            leg = await response.json()
        assert (leg["payload_type"], leg["dtmf_payload_type"]) == (101, 102)
        caller = await open_caller(leg["host"], leg["port"], payload_type=101)
        tone = make_tone(TONE_HZ, 1000, 8000)
        payloads = [encode_mulaw(tone[i : i + 160]) for i in range(0, tone.size, 160)]
        with structlog.testing.capture_logs() as logs:
            await caller.send_stream(payloads, samples_per_packet=160)
            for sequence in range(7):  # a sender that also speaks PCMU's static payload type
                caller.payload_type = 0
                caller.send_packet(1000 + sequence, 8000 + 160 * sequence, payloads[0])
            caller.payload_type = 101
            await caller.send_stream(payloads[:10], samples_per_packet=160)
        async with client.delete(f"{base}/v1/calls/{call_id}") as response:
            assert response.status == 202
        manifest = await wait_for_recording(client, base, call_id)
        assert caller.transport is not None
        caller.transport.close()

    warnings = [e for e in logs if e["event"] == "rtp.unexpected_payload_type"]
    assert [(w["payload_type"], w["negotiated"]) for w in warnings] == [(0, 101)]
    print("notes:", manifest["notes"])
    assert any("7 caller packets with payload type 0" in note for note in manifest["notes"])
    assert manifest["dropped"]["wrong_payload_type"] == 7
    assert manifest["legs"]["caller"]["unexpected_payload_types"] == {"0": 7}


async def test_bad_payload_types_are_refused(tmp_path: Path) -> None:
    """Payload types outside 0-127, in RTCP's range, repeated, or not integers get a 400."""
    async with (
        running_server(make_settings(tmp_path, drain_timeout_s=0.5)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        call_id = await create_call(client, base)
        for body in (
            {"payload_type": 128},
            {"payload_type": 72},
            {"payload_type": "97"},
            {"payload_type": True},
            {"payload_type": 97, "dtmf_payload_type": 97},
            {"payload_type": 97, "remote": "1.2.3.4:5"},
        ):
            async with client.post(f"{base}/v1/calls/{call_id}/rtp", json=body) as response:
                assert response.status == 400, body
                message = (await response.json())["error"]["message"]
                assert "'" not in message, message  # no Python reprs
        for offer in ("v=0\r\nthis is not sdp\r\n", "\xff"):
            async with client.post(
                f"{base}/v1/calls/{call_id}/rtp",
                data=offer.encode("latin-1"),
                headers={"Content-Type": SDP},
            ) as response:
                assert response.status == 400
        async with client.get(f"{base}/v1/calls/{call_id}") as response:
            assert (await response.json())["legs"]["caller"]["connected"] is False


async def test_port_exhaustion_is_503_and_releases_the_call(tmp_path: Path) -> None:
    """With every RTP port taken, the leg gets 503 + Retry-After and the call is ended, empty."""
    port = random.randrange(42000, 60000, 2)
    settings = make_settings(
        tmp_path, rtp_port_min=port, rtp_port_max=port + 1, drain_timeout_s=0.5
    )
    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        first = await create_call(client, base)
        async with client.post(f"{base}/v1/calls/{first}/rtp", json={}) as response:
            assert response.status == 201
        second = await create_call(client, base, metadata={"who": "second"})
        async with client.post(f"{base}/v1/calls/{second}/rtp", json={}) as response:
            assert response.status == 503
            assert "Retry-After" in response.headers
            error = (await response.json())["error"]
        async with client.get(f"{base}/v1/calls/{second}") as response:
            assert response.status == 404
        manifest = await wait_for_recording(client, base, second)
        async with client.get(f"{base}/v1/recordings?status=empty") as response:
            listed = [item["call_id"] for item in (await response.json())["items"]]
        async with client.get(f"{base}/v1/recordings/{second}/audio?channel=stereo") as response:
            audio_status = response.status
    print("503:", error["message"], "| stored as:", manifest["status"], manifest["end_reason"])
    assert error["code"] == "overloaded"
    assert (manifest["status"], manifest["end_reason"]) == ("empty", "setup_failed")
    assert manifest["files"] == []
    assert any("no caller leg could be set up" in note for note in manifest["notes"])
    assert listed == [second]
    assert audio_status == 404
