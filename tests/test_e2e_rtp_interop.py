"""Plain-RTP legs as telephony describes them: SDP offers from ffmpeg, dynamic payload types."""

import asyncio
import itertools
import random
import re
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import structlog

from audio_oracle import RATE_HZ, assert_valid_opus, decode_ogg, tone_envelope
from rtp_caller import open_caller
from rtp_sender import marker_template, silence_payload
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
        async with client.get(f"{base}/v1/recordings") as response:
            (listed,) = [i for i in (await response.json())["items"] if i["call_id"] == call_id]

    caller_report = next(c for c in manifest["channels"] if c["channel"] == "caller")
    assert caller_report["codec"] == "pcmu"
    assert manifest["legs"]["caller"]["payload_type"] == 100
    # The listing says what carried the caller and in which codec (the console's Caller column).
    assert listed["legs"]["caller"] == {"transport": "rtp", "codec": "pcmu", "payload_type": 100}
    assert listed["legs"]["agent"]["transport"] is None  # no agent ever connected
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
        deadline = time.monotonic() + 10
        while True:  # the live call shows what each leg dropped (the console's live page)
            async with client.get(f"{base}/v1/calls/{call_id}") as response:
                live_legs = (await response.json())["legs"]
            if live_legs["caller"]["dropped"] >= 7 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        async with client.delete(f"{base}/v1/calls/{call_id}") as response:
            assert response.status == 202
        manifest = await wait_for_recording(client, base, call_id)
        assert caller.transport is not None
        caller.transport.close()

    assert live_legs["caller"]["dropped"] == 7
    assert live_legs["agent"]["dropped"] == 0

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


async def run_gst_caller(port: int, audio_pt: int, dtmf_pt: int, *args: str) -> None:
    """Run the GStreamer caller (system python with gi) to completion."""
    process = await asyncio.create_subprocess_exec(
        "/usr/bin/python3",
        str(Path(__file__).with_name("gst_dtmf_caller.py")),
        str(port),
        str(audio_pt),
        str(dtmf_pt),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, (out + err).decode(errors="replace")


def holes(signal: np.ndarray, freq_hz: float = TONE_HZ) -> list[tuple[float, float]]:
    """Where a steady tone stops and starts again: (start_s, end_s) of each gap of 50 ms or more."""
    sounding = np.flatnonzero(tone_envelope(signal.astype(np.float32), freq_hz) > 0.05)
    jumps = np.flatnonzero(np.diff(sounding) > 0.05 * RATE_HZ)
    return [((sounding[j] + 1) / RATE_HZ, sounding[j + 1] / RATE_HZ) for j in jumps]


async def test_dtmf_one_two_pound_reaches_the_agent_in_order_and_the_manifest(
    tmp_path: Path,
) -> None:
    """Keys "1 2 #" in an SDP-negotiated stream: agent messages in order, manifest events placed."""
    async with (
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        call_id = await create_call(client, base)
        offer = (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            "m=audio 9 RTP/AVP 96 101 100\r\na=rtpmap:96 opus/48000/2\r\n"
            "a=rtpmap:101 telephone-event/48000\r\na=fmtp:101 0-16\r\n"
            "a=rtpmap:100 telephone-event/8000\r\na=ptime:20\r\n"
        )
        ws_url = base.replace("http", "ws") + f"/v1/calls/{call_id}/agent"
        async with dial_in(client, ws_url) as agent:
            await agent.wait_for("start")
            answer = await post_offer(client, base, call_id, offer)
            # RFC 4733: the event format at the audio's clock rate, 48000 for Opus.
            assert "a=rtpmap:101 telephone-event/48000" in answer
            assert "m=audio" in answer
            assert " RTP/AVP 96 101" in answer
            presses = ("1:250:300", "2:250:300", "#:400:300")
            await run_gst_caller(answer_port(answer), 96, 101, "1000", *presses, "800")
            digits = []
            while len(digits) < 3:
                message = await agent.wait_for("dtmf")
                digits.append(message)
        async with client.delete(f"{base}/v1/calls/{call_id}") as response:
            assert response.status == 202
        manifest = await wait_for_recording(client, base, call_id)
        left = await fetch_channel(client, base, call_id, "left", tmp_path)

    print("agent got:", [m["dtmf"] for m in digits])
    assert [m["dtmf"] for m in digits] == [
        {"track": "inbound_track", "digit": digit} for digit in ("1", "2", "#")
    ]
    assert all(m["streamSid"] == agent.stream_sid for m in digits)
    events = manifest["events"]
    gaps = holes(left[0])
    print("manifest events:", events)
    print("holes in the recorded tone:", [(round(a, 3), round(b, 3)) for a, b in gaps])
    assert [(e["type"], e["digit"]) for e in events] == [
        ("dtmf", "1"),
        ("dtmf", "2"),
        ("dtmf", "#"),
    ]
    for event, held_ms in zip(events, (250, 250, 400), strict=True):
        assert held_ms <= event["duration_ms"] <= held_ms + 150, event  # the sender's own timing
    # rtpdtmfmux sends no audio while a key is down (and a little after): each key lies in a hole
    # of the recorded tone, the first key of each hole at its very start.
    assert gaps, "the tone has no holes"
    for event in events:
        assert any(
            start - 0.045 <= event["at_s"]
            and event["at_s"] + event["duration_ms"] / 1000 <= end + 0.045
            for start, end in gaps
        ), (event, gaps)
    for start, _ in gaps:
        assert min(abs(event["at_s"] - start) for event in events) <= 0.045, (start, events)
    # And they are as far apart as they were pressed (250 ms + 300 ms), give or take the sender:
    # a process that sleeps between keys, late by up to ~0.1 s on a busy machine. Where each key
    # lies against the audio is checked to 45 ms above.
    spacing = [b["at_s"] - a["at_s"] for a, b in itertools.pairwise(events)]
    assert all(0.5 <= step <= 0.7 for step in spacing), spacing
    # The key packets are not audio: the caller channel holds only the Opus packets.
    caller_report = next(c for c in manifest["channels"] if c["channel"] == "caller")
    assert caller_report["stats"]["malformed"] == 0
    assert manifest["legs"]["caller"]["dtmf_payload_type"] == 101
    assert manifest["legs"]["agent"]["dtmf_sent"] == 3


async def test_nat_rebinding_mid_call_switches_once_and_audio_continues(tmp_path: Path) -> None:
    """The caller's source port changes mid-call: one switch after the old one falls silent."""
    settings = make_settings(tmp_path, rtp_relatch_after_s=1.0)
    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        call_id = await create_call(client, base)
        ws_url = base.replace("http", "ws") + f"/v1/calls/{call_id}/agent"
        async with dial_in(client, ws_url) as agent:
            await agent.wait_for("start")
            async with client.post(f"{base}/v1/calls/{call_id}/rtp", json={}) as response:
                leg = await response.json()
            # One caller, three sockets: the first one, a stranger with the same stream while the
            # first is alive, and the port the NAT rebinds the caller to at 2 s.
            first, stranger, rebound = [
                await open_caller(leg["host"], leg["port"], leg["payload_type"]) for _ in range(3)
            ]
            payloads = [silence_payload()] * 300  # 6 s
            template = marker_template(TONE_HZ)
            for marker_s in (1.0, 5.0):
                onset = round(marker_s / 0.02)
                payloads[onset - 10 : onset - 10 + len(template)] = template
            loop = asyncio.get_running_loop()
            started = loop.time()
            for index, payload in enumerate(payloads):
                await asyncio.sleep(max(0.0, started + index * 0.02 - loop.time()))
                sender = first if index < 100 else rebound
                sender.send_packet(5000 + index, 90_000 + index * 960, payload)
                if 20 <= index < 60:
                    stranger.send_packet(5000 + index, 90_000 + index * 960, payload)
                if index == 200:  # after the switch: the agent speaks, and it reaches the new port
                    await agent.send_tone(1300.0, 300)
            await asyncio.wait_for(rebound.got_audio.wait(), 5)
            async with client.get(f"{base}/v1/calls/{call_id}") as response:
                live = (await response.json())["legs"]["caller"]["transport"]
        async with client.delete(f"{base}/v1/calls/{call_id}") as response:
            assert response.status == 202
        manifest = await wait_for_recording(client, base, call_id)
        left = await fetch_channel(client, base, call_id, "left", tmp_path)
        for caller in (first, stranger, rebound):
            assert caller.transport is not None
            caller.transport.close()

    print(
        "relatches:",
        live["relatches"],
        "| wrong_source:",
        live["dropped_in"]["wrong_source"],
        "| peer:",
        live["peer"],
    )
    assert live["relatches"] == 1
    assert manifest["legs"]["caller"]["relatches"] == 1
    # The stranger's 40 packets, and the rebound port's first second (before the switch).
    assert 40 + 45 <= live["dropped_in"]["wrong_source"] <= 40 + 55
    assert first.audio == []  # after the switch the agent's audio goes to the new port only
    envelope = tone_envelope(left[0].astype(np.float32), TONE_HZ)
    onsets = []
    for guess_s in (1.0, 5.0):
        window = envelope[int((guess_s - 0.3) * RATE_HZ) :]
        onsets.append(guess_s - 0.3 + float(np.argmax(window > 0.1)) / RATE_HZ)
    print("marker onsets:", onsets)
    assert abs((onsets[1] - onsets[0]) - 4.0) <= 0.02, onsets


def onset_near(signal: np.ndarray, freq_hz: float, guess_s: float, search_s: float = 0.4) -> float:
    """Where a tone first rises above 0.1 within `search_s` either side of a guess; -1 if absent."""
    envelope = tone_envelope(signal.astype(np.float32), freq_hz)
    start = max(0, int((guess_s - search_s) * RATE_HZ))
    window = envelope[start : int((guess_s + search_s) * RATE_HZ)]
    if window.size == 0 or window.max(initial=0.0) < 0.1:
        return -1.0
    return (start + float(np.argmax(window > 0.1))) / RATE_HZ


@pytest.mark.parametrize("behavior", ["silence", "skip"])
async def test_paused_recording_keeps_paused_audio_out_of_both_channels(
    tmp_path: Path, behavior: str
) -> None:
    """Paused from 2 s to 4 s: neither channel records it; silence keeps the span, skip cuts it."""
    async with (
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        call_id = await create_call(client, base)
        recording_url = f"{base}/v1/calls/{call_id}/recording"
        ws_url = base.replace("http", "ws") + f"/v1/calls/{call_id}/agent"
        async with dial_in(client, ws_url) as agent:
            await agent.wait_for("start")
            async with client.post(f"{base}/v1/calls/{call_id}/rtp", json={}) as response:
                leg = await response.json()
            caller = await open_caller(leg["host"], leg["port"], leg["payload_type"])
            payloads = [silence_payload()] * 300  # 6 s, caller markers at 1, 3 and 5 s
            template = marker_template(TONE_HZ)
            for marker_s in (1.0, 3.0, 5.0):
                onset = round(marker_s / 0.02)
                payloads[onset - 10 : onset - 10 + len(template)] = template
            loop = asyncio.get_running_loop()
            started = loop.time()
            sent_ns: list[int] = []
            states = []
            for index, payload in enumerate(payloads):
                await asyncio.sleep(max(0.0, started + index * 0.02 - loop.time()))
                sent_ns.append(time.monotonic_ns())
                caller.send_packet(index, index * 960, payload)
                if index in (100, 200):
                    status = "paused" if index == 100 else "recording"
                    async with client.post(
                        recording_url, json={"status": status, "pause_behavior": behavior}
                    ) as response:
                        assert response.status == 200
                        states.append(await response.json())
                if index == 125:  # the agent answers while paused: the caller hears it
                    await agent.send_tone(1300.0, 300)
                if index == 225:  # and after: the recording keeps this one
                    heard_before = len(caller.audio)
                    await agent.send_tone(1300.0, 300)
            await asyncio.sleep(0.5)
            heard_in_pause = heard_before
            first_after = caller.audio[heard_before]
        async with client.delete(f"{base}/v1/calls/{call_id}") as response:
            assert response.status == 202
        manifest = await wait_for_recording(client, base, call_id)
        channels = {
            name: (await fetch_channel(client, base, call_id, name, tmp_path))[0]
            for name in ("left", "right")
        }
        stereo = await fetch_channel(client, base, call_id, "stereo", tmp_path)
        assert caller.transport is not None
        caller.transport.close()

    print(f"{behavior}: paused {manifest['paused']}, duration {manifest['duration_ms']} ms")
    assert [s["status"] for s in states] == ["paused", "recording"]
    assert states[0]["pause_behavior"] == behavior
    assert heard_in_pause >= 10  # the caller heard the agent while recording was paused
    (span,) = manifest["paused"]
    assert span["behavior"] == behavior
    left, right = channels["left"], channels["right"]
    assert left.size == right.size == stereo.shape[1]
    first = onset_near(left, TONE_HZ, 1.0)
    assert abs(first - 1.0) <= 0.05, first
    if behavior == "silence":
        assert abs(span["start_s"] - 2.0) <= 0.1, span
        assert abs(span["end_s"] - 4.0) <= 0.1, span
        assert onset_near(left, TONE_HZ, 3.0) == -1.0  # the caller's paused marker is not there
        assert onset_near(right, 1300.0, 2.5) == -1.0  # nor is the agent's paused answer
        last = onset_near(left, TONE_HZ, 5.0)
        assert abs((last - first) - 4.0) <= 0.02, (first, last)
    else:
        assert span["start_s"] == span["end_s"]
        assert abs(span["removed_s"] - 2.0) <= 0.1, span
        assert abs(manifest["duration_ms"] / 1000 - (6.0 - span["removed_s"])) <= 0.3
        last = onset_near(left, TONE_HZ, 5.0 - span["removed_s"])
        assert abs((last - first) - (4.0 - span["removed_s"])) <= 0.025, (first, last, span)
        assert tone_seconds(left) <= 0.25  # two 100 ms markers, the paused one cut
    # After the pause both channels still agree: the agent's tone sits as far after the caller's
    # 5 s marker as the caller heard it (had one channel lost the cut, it would be 2 s off). The
    # bound is 40 ms: the decoded onset of an agent utterance that follows an earlier one lands
    # ~28 ms after its first packet reached the caller, with or without a pause.
    expected = last + (first_after.arrival_ns - sent_ns[250]) / 1e9
    agent_onset = onset_near(right, 1300.0, expected, 0.5)
    print(
        f"{behavior}: caller markers at {first:.3f} and {last:.3f} s;"
        f" agent tone at {agent_onset:.3f} s, expected {expected:.3f} s"
    )
    assert abs(agent_onset - expected) <= 0.04, (agent_onset, expected)
