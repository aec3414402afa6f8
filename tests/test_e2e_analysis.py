"""End to end: a call of real speech through a live server is analysed and transcribed."""

import asyncio
import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import dpkt
import numpy as np

from rtp_caller import RtpCaller, open_caller
from server_harness import auth, make_settings, running_server, wait_for_recording
from speech_call import wait_for_document
from spoken_dialogue import (
    Heard,
    Utterance,
    agent_timeline,
    build_script,
    caller_timeline,
    check_analysis,
    encode_opus,
    place,
    to_rate,
    transcript_recall,
)
from twilio_agent import TwilioTestAgent, dial_in

AGENT_RATE_HZ = 16000
CHUNK_MS = 20
FRAME_NS = 20_000_000
RUN_GAP_NS = 200_000_000  # agent packets more than this apart belong to different lines
# pocketsphinx finds 50-65 % of these words (see the printed figures); far less means it was
# given the wrong audio or the wrong times.
MIN_RECALL = 0.35


def _agent_audio(script: list[Utterance]) -> list[tuple[Utterance, np.ndarray]]:
    """Each agent line with its audio at the agent's stream rate."""
    return [(u, to_rate(u.audio, AGENT_RATE_HZ)) for u in script if u.speaker == "agent"]


async def _play_agent(
    agent: TwilioTestAgent, lines: list[tuple[Utterance, np.ndarray]], started: float
) -> None:
    """Send each agent line at its planned time (as TTS does: all at once), clear a cut one."""
    for u, pcm in lines:
        await asyncio.sleep(max(0.0, started + u.start_s - time.monotonic()))
        step = AGENT_RATE_HZ * CHUNK_MS // 1000
        for first in range(0, pcm.size, step):
            await agent.send_payload(pcm[first : first + step].astype("<i2").tobytes())
        if u.cut_after_s is not None:
            await asyncio.sleep(max(0.0, started + u.start_s + u.cut_after_s - time.monotonic()))
            await agent.send_clear()


def heard_dialogue(script: list[Utterance], caller: RtpCaller, sent_ns: list[int]) -> list[Heard]:
    """Where each line is on the recording: caller lines by the stream's own timing, agent lines
    by when the caller received them (the server records what the caller heard)."""
    origin_ns = sent_ns[0]
    runs: list[list[int]] = []
    for packet in caller.audio:  # the server fills the agent's silences with silence frames
        if runs and packet.arrival_ns - runs[-1][-1] < RUN_GAP_NS:
            runs[-1].append(packet.arrival_ns)
        else:
            runs.append([packet.arrival_ns])
    agent_lines = [u for u in script if u.speaker == "agent"]
    assert len(runs) == len(agent_lines), [len(r) for r in runs]
    played = dict(zip((id(u) for u in agent_lines), runs, strict=True))
    heard = []
    for u in script:
        if u.speaker == "caller":
            heard.append(place(u, u.start_s))
            continue
        run = played[id(u)]
        # The pacer sends a frame every 20 ms; a packet that arrives late (this test's loop was
        # busy) only looks later, so the earliest arrival minus its place in the run is the start.
        first_ns = min(arrival - index * FRAME_NS for index, arrival in enumerate(run))
        start_s = (first_ns - origin_ns) / 1e9
        end_s = start_s + len(run) * CHUNK_MS / 1000
        heard.append(place(u, start_s, end_s if u.cut_after_s is not None else None))
    return heard


async def test_live_call_of_real_speech_is_analysed_and_transcribed(tmp_path: Path) -> None:
    """Caller over RTP, agent over the WebSocket: spans, turns, latencies, barge-in, silence and
    words come out of the analysis and the default (pocketsphinx) transcript."""
    script = build_script()
    caller_packets = encode_opus(caller_timeline(script))
    agent_lines = _agent_audio(script)
    async with (
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        async with client.post(f"{base}/v1/calls", json={"caller_codec": "opus"}) as response:
            assert response.status == 201
            call_id = (await response.json())["call_id"]
        ws_url = base.replace("http", "ws") + f"/v1/calls/{call_id}/agent?format=l16&rate=16000"
        async with dial_in(client, ws_url) as agent:
            await agent.wait_for("start")
            async with client.post(f"{base}/v1/calls/{call_id}/rtp", json={}) as response:
                leg = await response.json()
            caller = await open_caller(leg["host"], leg["port"], leg["payload_type"])
            started = time.monotonic()
            sending = asyncio.create_task(caller.send_stream(caller_packets))
            await _play_agent(agent, agent_lines, started)
            sent_ns = await sending
        async with client.delete(f"{base}/v1/calls/{call_id}") as response:
            assert response.status == 202
        await wait_for_recording(client, base, call_id)
        heard = heard_dialogue(script, caller, sent_ns)
        assert caller.transport is not None
        caller.transport.close()

        status, analysis = await wait_for_document(
            client, f"{base}/v1/recordings/{call_id}/analysis"
        )
        assert status == 200, analysis
        status, transcript = await wait_for_document(
            client, f"{base}/v1/recordings/{call_id}/transcript"
        )
        assert status == 200, transcript
        status, webvtt = await wait_for_document(
            client, f"{base}/v1/recordings/{call_id}/transcript?format=vtt"
        )
        assert status == 200
        # words per minute come once the transcript exists
        async with client.get(f"{base}/v1/recordings/{call_id}/analysis") as response:
            analysis = await response.json()
        async with client.get(f"{base}/v1/recordings/{call_id}") as response:
            manifest = await response.json()
        async with client.get(f"{base}/v1/recordings") as response:
            listing = await response.json()

    errors = check_analysis(analysis, heard)
    recall = transcript_recall(transcript, heard)
    print(
        "\nlive call: span error max {:.3f} s (mean |e| {:.3f}), turn edges max {:.3f} s, "
        "latency error max {:.3f} s; word recall caller {:.0%} agent {:.0%} all {:.0%}".format(
            max(abs(e) for e in errors["span"]),
            float(np.mean(np.abs(errors["span"]))),
            max(abs(e) for e in errors["turn"]),
            max(abs(e) for e in errors["latency"]),
            recall["caller"],
            recall["agent"],
            recall["all"],
        )
    )
    print("latencies measured", analysis["response_latency_s"]["values"])
    assert analysis["call_id"] == call_id
    assert analysis["vad"]["engine"] == "webrtcvad"
    for side in ("caller", "agent"):
        channel = analysis["channels"][side]
        talk_s = sum(b - a for a, b in channel["speech"])
        assert abs(channel["talk_time_s"] - talk_s) < 0.01
        assert abs(channel["talk_ratio"] - talk_s / analysis["duration_s"]) < 0.01
        assert channel["words_per_minute"] is not None
        assert channel["words_per_minute"] > 0
    assert recall["all"] >= MIN_RECALL, recall
    assert transcript["backend"] == "pocketsphinx"
    assert transcript["status"] == "completed"
    speakers = [s["speaker"] for s in transcript["segments"]]
    assert "caller" in speakers
    assert "agent" in speakers
    starts = [s["start_s"] for s in transcript["segments"]]
    assert starts == sorted(starts)
    assert webvtt.startswith("WEBVTT\n")
    assert "<v caller>" in webvtt
    assert "<v agent>" in webvtt
    assert manifest["jobs"]["analysis"]["status"] == "completed"
    assert manifest["jobs"]["transcript"]["status"] == "completed"
    [item] = [i for i in listing["items"] if i["call_id"] == call_id]
    assert item["jobs"] == {"analysis": "completed", "transcript": "completed"}
    assert item["links"]["analysis"] == f"/v1/recordings/{call_id}/analysis"


def _write_dialogue_capture(path: Path, script: list[Utterance]) -> float:
    """A pcap of the dialogue as two RTP streams; returns the capture time of the first packet.

    The caller sends for the whole call; the agent only while it talks (as the server sends),
    its RTP clock running on through the gaps."""
    caller = encode_opus(caller_timeline(script))
    agent = encode_opus(agent_timeline(script, len(caller) * 0.02))
    talking = np.zeros(len(agent), bool)
    for u in script:
        if u.speaker == "agent":
            talking[int(u.start_s / 0.02) : int(np.ceil(u.end_s / 0.02)) + 1] = True
    origin_s = 1_790_000_000.0
    packets = [(origin_s + i * 0.02, 5000, i, p) for i, p in enumerate(caller)]
    packets += [
        (origin_s + i * 0.02 + 0.0005, 5002, i, p) for i, p in enumerate(agent) if talking[i]
    ]
    with path.open("wb") as handle:
        writer = dpkt.pcap.Writer(handle, linktype=dpkt.pcap.DLT_EN10MB)
        for arrival_s, port, index, payload in sorted(packets):
            ssrc = 0x1111 if port == 5000 else 0x2222
            rtp = struct.pack("!BBHII", 0x80, 111, index & 0xFFFF, index * 960, ssrc) + payload
            udp = dpkt.udp.UDP(sport=port, dport=port + 1000, data=rtp)
            udp.ulen = len(udp)
            ip = dpkt.ip.IP(
                src=socket.inet_aton("127.0.0.1"), dst=socket.inet_aton("127.0.0.1"), p=17, data=udp
            )
            ip.len = len(ip)
            frame = dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
            writer.writepkt(bytes(frame), ts=arrival_s)
    return origin_s


def test_import_pcap_writes_the_same_analysis_and_transcript(tmp_path: Path) -> None:
    """`mediaserver import-pcap` on a capture of the dialogue writes analysis, transcript and
    WebVTT beside the audio, and they find the dialogue as the live server does."""
    script = build_script()
    capture = tmp_path / "dialogue.pcap"
    _write_dialogue_capture(capture, script)
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mediaserver",
            "import-pcap",
            str(capture),
            "-o",
            str(out),
            "--call-id",
            "dialogue",
            "--caller",
            "127.0.0.1:5000",
            "--agent",
            "127.0.0.1:5002",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "analysis" in result.stdout, result.stdout
    assert "webvtt" in result.stdout, result.stdout
    analysis = json.loads((out / "conversation_dialogue_analysis.json").read_text())
    transcript = json.loads((out / "conversation_dialogue_transcript.json").read_text())
    webvtt = (out / "conversation_dialogue_transcript.vtt").read_text()
    heard = [place(u, u.start_s) for u in script]
    errors = check_analysis(analysis, heard)
    recall = transcript_recall(transcript, heard)
    print(
        "\nimport-pcap: span error max {:.3f} s, latency error max {:.3f} s; "
        "word recall caller {:.0%} agent {:.0%} all {:.0%}".format(
            max(abs(e) for e in errors["span"]),
            max(abs(e) for e in errors["latency"]),
            recall["caller"],
            recall["agent"],
            recall["all"],
        )
    )
    assert recall["all"] >= MIN_RECALL, recall
    assert webvtt.startswith("WEBVTT\n")
    assert "<v agent>" in webvtt
    for side in ("caller", "agent"):
        assert analysis["channels"][side]["words_per_minute"] > 0
