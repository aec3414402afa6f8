"""Relay latency through a real `mediaserver serve`, before and after a change, in one run.

For plain RTP (Opus, PCMU) and WebRTC (an aiortc caller over WHIP), at one call and at half the
node's capacity, it measures what the server adds:

- caller → agent: a caller packet reaching the server's port → the agent's `media` message for it
  leaving the server (the frame is complete when its packet arrives);
- agent → caller: an agent `media` message reaching the server (or, if later, 20 ms after the frame
  before it was due) → the packet that carries it leaving toward the caller. The probe agent
  talks in two ways, in turns: real time (one 20 ms message every 20 ms, as a speech-to-speech
  model streams) and a burst (one second of audio at once, as TTS sends): for a burst, the first
  frame's latency and whether the second of audio left in one second with nothing queued after it;
- the echo round trip a caller sees with the built-in echo agent (`builtin:echo?delay_ms=0`): the
  first packet of a caller's tone burst reaching the server → the first packet carrying its echo
  leaving.

Every time is a kernel timestamp from one tcpdump capture on the loopback interface, so the
figures are the server's own, not the load's scheduling. The server runs pinned to one core
(`--server-cpu`), the load (the other calls, each a caller plus an agent that talks half the time)
in its own process on the other (`--load-cpu`), with the probes. `--before REF[,REF...]` runs the
same steps against the server as it was at each git revision (exported to a temporary directory),
so the table compares before and after from one run on one machine. On a machine others load too,
`--repeats N` runs each step N times (the trees in turns) and the table shows each tree's median
run by p99; every run is printed as it ends. It asserts nothing: it prints.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_agent_capacity import Load, build_agent_chunk, build_speechlike_opus
from bench_agent_capacity import start_server as start_capacity_server
from common import print_table
from loopback_capture import WS_TEXT, Capture, LoopbackCapture, read_websocket_frames
from webrtc_load import LoadCaller, LoadPlan, build_opus_tone_packets, run_load_process

from mediaserver.audio.g711 import decode_pcmu, encode_pcmu
from mediaserver.audio.opus_silence import silence_packet

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TOKEN = "bench-token-0123456789"
FRAME_NS = 20_000_000
FRAME_S = 0.020
OPUS_PAYLOAD_TYPE = 111
PCMU_PAYLOAD_TYPE = 0
SRTP_TAG_BYTES = 16  # RFC 7714 AEAD_AES_GCM: two aiortc peers negotiate it first
# Opus packets this small carry no audible content (the server's silence frame is 3 bytes).
QUIET_OPUS_BYTES = 8
# The agent's pattern, repeated: a second in real time, a second quiet, a second in one burst,
# two seconds quiet (the burst plays during the first of them).
AGENT_CYCLE_S = 5.0
AGENT_TALK_FRAMES = 50
BURST_AT_S = 2.0
# The echo probe's caller: a 100 ms tone every half second, silence between.
ECHO_PERIOD_FRAMES = 25
ECHO_TONE_FRAMES = 5
ECHO_TONE_HZ = 1000.0
_RTP_HEADER = struct.Struct("!BBHII")
_MEDIA = re.compile(rb'"event":\s*"media"')
_CANDIDATE = re.compile(r"a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 (\d+) typ host", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Scenario:
    """One measured step: a transport, a number of calls, a server tree."""

    transport: str  # "rtp-opus", "rtp-pcmu" or "webrtc"
    calls: int
    tree: str  # "before" or "after"


@dataclass(slots=True)
class Figures:
    """Latencies of one step, in milliseconds."""

    caller_to_agent: list[float] = field(default_factory=list)
    agent_to_caller: list[float] = field(default_factory=list)  # real-time frames
    burst_first: list[float] = field(default_factory=list)
    burst_overrun: list[float] = field(default_factory=list)  # last frame out - (first out + 980)
    echo: list[float] = field(default_factory=list)
    unmatched: int = 0
    kernel_drops: int = 0
    accepted: int = 0


# -- audio ---------------------------------------------------------------------------------------


def pcmu_tone(freq_hz: float, frames: int) -> list[bytes]:
    """20 ms μ-law frames of a tone."""
    t = np.arange(frames * 160) / 8000
    samples = (8000 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)
    encoded = encode_pcmu(samples)
    return [encoded[i * 160 : (i + 1) * 160] for i in range(frames)]


def caller_payloads(codec: str) -> list[bytes]:
    """A caller's steady stream: real encoded audio the server decodes for the agent."""
    if codec == "pcmu":
        return pcmu_tone(310.0, 50)
    return build_speechlike_opus(250)


def echo_payloads(codec: str) -> list[bytes]:
    """Half a second of the echo probe's caller: a 100 ms tone, then silence."""
    quiet = b"\xff" * 160 if codec == "pcmu" else silence_packet(960)
    if codec == "pcmu":
        tone = pcmu_tone(ECHO_TONE_HZ, ECHO_TONE_FRAMES)
    else:
        tone = build_opus_tone_packets(ECHO_TONE_HZ, ECHO_TONE_FRAMES)
    return tone + [quiet] * (ECHO_PERIOD_FRAMES - ECHO_TONE_FRAMES)


# -- server process ------------------------------------------------------------------------------


def export_tree(ref: str, into: Path) -> str:
    """Write the repository as it was at `ref` into a directory; return the commit."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", ref],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True
    ).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def describe_worktree() -> str:
    """HEAD's short hash, with "+" when the server's code has uncommitted changes."""
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "mediaserver"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return head + ("+" if dirty else "")


def start_server(
    tree: Path, work: Path, port: int, cpu: int | None, nice: int
) -> subprocess.Popen[bytes]:
    """`mediaserver serve` from a source tree, pinned to `cpu`, in a session of its own."""
    env = {
        # Run from the tree: its directory comes first on sys.path, before the installed package.
        "PYTHONPATH": str(tree),
        "MEDIASERVER_DRAIN_TIMEOUT_S": "2",
        "MEDIASERVER_FINALIZE_TIMEOUT_S": "2",
        # Every caller packet goes to the agent, so the k-th packet is the k-th media message
        # even when a starved probe sends a burst (trees without the setting ignore it).
        "MEDIASERVER_CALLER_BACKLOG_MS": "0",
    }
    return start_capacity_server(work, port, cpu, env, nice, cwd=tree)


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL to the group if it lingers."""
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


async def wait_healthy(client: aiohttp.ClientSession, base: str) -> None:
    """Poll /healthz until the server answers."""
    for _ in range(400):
        try:
            async with client.get(f"{base}/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("the server did not start")


# -- the load (other calls), in its own process --------------------------------------------------


def run_rtp_load(conn: Connection, base: str, calls: int, cpu: int | None) -> None:
    """Plain-RTP Opus callers with talking agents (bench_agent_capacity's load) until told."""
    os.setpgrp()
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})

    async def run() -> None:
        load = Load(base, "rtp", build_speechlike_opus(250), build_agent_chunk())
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=120), connector=aiohttp.TCPConnector(limit=0)
        ) as client:
            await load.set_up(client, calls)
            load.start()
            conn.send("ready")
            await asyncio.to_thread(conn.recv)
            await load.end(client)
            conn.send(len(load.calls))

    asyncio.run(run())


class BackgroundLoad:
    """The other calls of a step, run by a process on the load core."""

    def __init__(self, transport: str, base: str, calls: int, cpu: int | None) -> None:
        self.calls = calls
        context = multiprocessing.get_context("spawn")  # no fork of a running event loop
        self._conn, child = context.Pipe()
        self._process: BaseProcess
        if transport == "webrtc":
            plan = LoadPlan("mediaserver", base, calls, TOKEN, cpu, 0)
            self._process = context.Process(target=run_load_process, args=(child, plan))
        else:
            self._process = context.Process(target=run_rtp_load, args=(child, base, calls, cpu))
        self._webrtc = transport == "webrtc"

    async def start(self) -> None:
        """Set the calls up; return once they stream."""
        if not self.calls:
            return
        self._process.start()
        message = await asyncio.to_thread(self._conn.recv)
        if message != "ready":
            raise RuntimeError(f"the load failed: {message}")
        if self._webrtc:
            self._conn.send("mark")

    async def stop(self) -> None:
        """End the calls and the process."""
        if not self.calls:
            return
        self._conn.send("stop")
        await asyncio.to_thread(self._conn.recv)
        self._process.join(60)
        if self._process.is_alive() and self._process.pid is not None:
            os.killpg(self._process.pid, signal.SIGKILL)


# -- the probes ----------------------------------------------------------------------------------


class RtpProbeCaller:
    """A plain-RTP caller sending a list of payloads in a loop, one every 20 ms."""

    def __init__(self, port: int, payload_type: int, payloads: list[bytes]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.destination = (HOST, port)
        self.payload_type = payload_type
        self.payloads = payloads
        self.halted = False
        asyncio.get_running_loop().add_reader(self.sock, self._drain)

    def _drain(self) -> None:
        while True:
            try:
                self.sock.recv(2048)
            except BlockingIOError:
                return

    async def run(self) -> None:
        """Send until halted, on an absolute 20 ms schedule."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        index = 0
        while not self.halted:
            payload = self.payloads[index % len(self.payloads)]
            header = _RTP_HEADER.pack(
                0x80, self.payload_type, index & 0xFFFF, (index * 960) & 0xFFFFFFFF, 0x5EED
            )
            self.sock.sendto(header + payload, self.destination)
            index += 1
            await asyncio.sleep(max(0.0, started + index * FRAME_S - loop.time()))

    def close(self) -> None:
        """Stop reading and close the socket."""
        asyncio.get_running_loop().remove_reader(self.sock)
        self.sock.close()


class ProbeAgent:
    """A Twilio-style agent that reads everything and talks in real time and in bursts."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.stream_sid = ""
        self.started = asyncio.Event()
        self.media_received = 0
        self.halted = False
        self.kinds: list[str] = []  # "paced" or "burst", one per media message sent
        self._reader = asyncio.create_task(self._read())

    @property
    def local_port(self) -> int:
        """The agent's TCP port (the capture follows it)."""
        return int(self.ws.get_extra_info("sockname")[1])

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            if '"event":"media"' in message.data:
                self.media_received += 1
            elif '"start"' in message.data:
                self.stream_sid = str(json.loads(message.data)["streamSid"])
                self.started.set()

    async def talk(self) -> None:
        """Repeat the pattern until halted."""
        chunk = base64.b64encode(build_agent_chunk()).decode()
        text = json.dumps(
            {"event": "media", "streamSid": self.stream_sid, "media": {"payload": chunk}}
        )
        loop = asyncio.get_running_loop()
        rng = random.Random(7)
        cycle_start = loop.time()
        while not self.halted:
            # Each talkspurt starts at a random point of the server's 20 ms grid, as a real
            # agent's would: otherwise one run measures one phase.
            cycle_start += rng.uniform(0, FRAME_S)
            for index in range(AGENT_TALK_FRAMES):
                await asyncio.sleep(max(0.0, cycle_start + index * FRAME_S - loop.time()))
                await self.ws.send_str(text)
                self.kinds.append("paced")
            await asyncio.sleep(max(0.0, cycle_start + BURST_AT_S - loop.time()))
            for _ in range(AGENT_TALK_FRAMES):
                await self.ws.send_str(text)
                self.kinds.append("burst")
            cycle_start += AGENT_CYCLE_S
            await asyncio.sleep(max(0.0, cycle_start - loop.time()))

    async def close(self) -> None:
        """Hang up."""
        self.halted = True
        await self.ws.close()
        self._reader.cancel()


@dataclass(slots=True)
class ProbeCall:
    """One probe call: its id, the server's media port, and its caller."""

    call_id: str
    server_port: int
    rtp: RtpProbeCaller | None = None
    webrtc: LoadCaller | None = None
    caller_port: int = 0


async def create_call(client: aiohttp.ClientSession, base: str, body: dict[str, Any]) -> str:
    """POST /v1/calls."""
    async with client.post(f"{base}/v1/calls", json=body) as response:
        response.raise_for_status()
        return str((await response.json())["call_id"])


async def open_rtp_leg(
    client: aiohttp.ClientSession, base: str, call_id: str, codec: str, payloads: list[bytes]
) -> ProbeCall:
    """POST /v1/calls/{id}/rtp and a caller socket for it."""
    async with client.post(f"{base}/v1/calls/{call_id}/rtp", json={"codec": codec}) as response:
        response.raise_for_status()
        leg = await response.json()
    caller = RtpProbeCaller(int(leg["port"]), int(leg["payload_type"]), payloads)
    caller_port = int(caller.sock.getsockname()[1])
    return ProbeCall(call_id, int(leg["port"]), rtp=caller, caller_port=caller_port)


async def offer_whip(
    client: aiohttp.ClientSession, base: str, call_id: str, payloads: list[bytes]
) -> tuple[ProbeCall, str]:
    """POST the aiortc caller's offer to /whip; the answer is applied later (after capture)."""
    caller = LoadCaller(payloads)
    offer = await caller.create_offer()
    async with client.post(
        f"{base}/whip?call_id={call_id}", data=offer, headers={"Content-Type": "application/sdp"}
    ) as response:
        response.raise_for_status()
        answer = await response.text()
    match = _CANDIDATE.search(answer)
    if match is None:
        raise RuntimeError("the WHIP answer has no loopback candidate")
    ours = _CANDIDATE.search(offer)
    assert ours is not None
    return ProbeCall(call_id, int(match[1]), webrtc=caller, caller_port=int(ours[1])), answer


# -- measuring -----------------------------------------------------------------------------------


def parse_rtp(datagram: bytes) -> tuple[int, int, int] | None:
    """(payload type, sequence, payload offset) of an RTP packet, None for anything else."""
    # RFC 7983 §7: RTP and RTCP start with 128..191; RFC 5761 §4: RTCP types 200..204 (72..76).
    if len(datagram) < 12 or not 128 <= datagram[0] <= 191:
        return None
    payload_type = datagram[1] & 0x7F
    if 72 <= payload_type <= 76:
        return None
    offset = 12 + 4 * (datagram[0] & 0x0F)
    if datagram[0] & 0x10:  # RFC 3550 §5.3.1 header extension
        words = struct.unpack_from("!H", datagram, offset + 2)[0]
        offset += 4 + 4 * words
    return payload_type, struct.unpack_from("!H", datagram, 2)[0], offset


def payload_bytes(datagram: bytes, offset: int, srtp: bool) -> bytes:
    """The (possibly encrypted) payload of an RTP datagram."""
    return datagram[offset : len(datagram) - (SRTP_TAG_BYTES if srtp else 0)]


def is_loud(payload: bytes, codec: str, srtp: bool) -> bool:
    """Whether a payload carries sound (a tone) rather than silence."""
    if codec == "pcmu" and not srtp:
        return float(np.abs(decode_pcmu(payload).astype(np.float32)).mean()) > 500
    return len(payload) > QUIET_OPUS_BYTES


def media_times(frames: Sequence[Any]) -> list[int]:
    """Times of the `media` text frames among WebSocket frames."""
    return [f.time_ns for f in frames if f.opcode == WS_TEXT and _MEDIA.search(f.payload)]


def measure(
    capture: Capture,
    *,
    codec: str,
    srtp: bool,
    server_http_port: int,
    agent_probe: ProbeCall,
    agent_port: int,
    agent_kinds: list[str],
    echo_probe: ProbeCall,
    figures: Figures,
) -> None:
    """Pair packets and messages in the capture and add the latencies to `figures`."""
    figures.kernel_drops += capture.kernel_drops
    into_server: list[tuple[int, bytes]] = []
    out_of_server: list[tuple[int, bytes]] = []
    for datagram in capture.datagrams:
        if agent_probe.server_port not in (datagram.src_port, datagram.dst_port):
            continue
        parsed = parse_rtp(datagram.payload)
        if parsed is None:
            continue
        payload = payload_bytes(datagram.payload, parsed[2], srtp)
        if datagram.dst_port == agent_probe.server_port:
            into_server.append((datagram.time_ns, payload))
        else:
            out_of_server.append((datagram.time_ns, payload))
    # Caller → agent: the k-th caller packet is the k-th media message.
    to_agent = media_times(read_websocket_frames(capture.segments, server_http_port, agent_port))
    pairs = min(len(into_server), len(to_agent))
    figures.unmatched += abs(len(into_server) - len(to_agent))
    for (arrived, _), left in zip(into_server[:pairs], to_agent[:pairs], strict=True):
        figures.caller_to_agent.append((left - arrived) / 1e6)
    # Agent → caller: the k-th agent message is the k-th packet that is not the server's silence.
    from_agent = media_times(read_websocket_frames(capture.segments, agent_port, server_http_port))
    sent = [t for t, payload in out_of_server if is_loud(payload, codec, srtp)]
    pairs = min(len(from_agent), len(sent), len(agent_kinds))
    figures.unmatched += abs(len(from_agent) - len(sent))
    burst: list[tuple[int, int]] = []
    previous_due = None
    for arrived, left, kind in zip(
        from_agent[:pairs], sent[:pairs], agent_kinds[:pairs], strict=True
    ):
        if kind == "paced":
            # From when the frame was due on the agent's clock: its message is in, and 20 ms
            # have passed since the frame before it was due (a probe that falls behind sends
            # messages bunched; the server plays them at real time, which it does not add).
            due = arrived if previous_due is None else max(arrived, previous_due + FRAME_NS)
            figures.agent_to_caller.append((left - due) / 1e6)
            previous_due = due
            continue
        previous_due = None
        burst.append((arrived, left))
        if len(burst) == AGENT_TALK_FRAMES:
            first_in, first_out = burst[0]
            figures.burst_first.append((first_out - first_in) / 1e6)
            expected_last = first_out + (AGENT_TALK_FRAMES - 1) * FRAME_NS
            figures.burst_overrun.append((burst[-1][1] - expected_last) / 1e6)
            burst = []
    # Echo: the first packet of each caller tone → the first loud packet back.
    echo_in: list[int] = []
    echo_out: list[int] = []
    previous_loud = True
    for datagram in capture.datagrams:
        if echo_probe.server_port not in (datagram.src_port, datagram.dst_port):
            continue
        parsed = parse_rtp(datagram.payload)
        if parsed is None:
            continue
        loud = is_loud(payload_bytes(datagram.payload, parsed[2], srtp), codec, srtp)
        if datagram.dst_port == echo_probe.server_port:
            if loud and not previous_loud:
                echo_in.append(datagram.time_ns)
            previous_loud = loud
        elif loud:
            echo_out.append(datagram.time_ns)
    cursor = 0
    for started in echo_in:
        while cursor < len(echo_out) and echo_out[cursor] <= started:
            cursor += 1
        if cursor < len(echo_out):
            figures.echo.append((echo_out[cursor] - started) / 1e6)


# -- one step ------------------------------------------------------------------------------------


async def run_step(scenario: Scenario, tree: Path, args: argparse.Namespace) -> Figures:
    """Start the server from `tree`, load it, probe it, stop everything."""
    work = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    port = free_port()
    base = f"http://{HOST}:{port}"
    codec = "pcmu" if scenario.transport == "rtp-pcmu" else "opus"
    server = start_server(tree, work, port, args.server_cpu, args.server_nice)
    figures = Figures()
    load = BackgroundLoad(
        "webrtc" if scenario.transport == "webrtc" else "rtp",
        base,
        max(0, scenario.calls - 2),  # the two probes are calls too
        args.load_cpu,
    )
    try:
        async with aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=aiohttp.ClientTimeout(total=120),
        ) as client:
            await wait_healthy(client, base)
            await load.start()
            figures.accepted = load.calls + 2
            agent_call = await create_call(client, base, {"caller_codec": codec})
            ws_url = base.replace("http://", "ws://") + f"/v1/calls/{agent_call}/agent"
            agent = ProbeAgent(await client.ws_connect(ws_url, max_msg_size=0))
            await asyncio.wait_for(agent.started.wait(), 30)
            echo_call = await create_call(
                client, base, {"caller_codec": codec, "agent_url": "builtin:echo?delay_ms=0"}
            )
            answers: list[tuple[ProbeCall, str]] = []
            if scenario.transport == "webrtc":
                answers = [
                    await offer_whip(client, base, agent_call, caller_payloads(codec)),
                    await offer_whip(client, base, echo_call, echo_payloads(codec)),
                ]
                probes = [probe for probe, _ in answers]
            else:
                probes = [
                    await open_rtp_leg(client, base, agent_call, codec, caller_payloads(codec)),
                    await open_rtp_leg(client, base, echo_call, codec, echo_payloads(codec)),
                ]
            capture = LoopbackCapture(
                work / "probe.pcap",
                udp_ports=[probe.server_port for probe in probes],
                tcp_ports=[agent.local_port],
            )
            await capture.start()
            tasks = []
            for probe, answer in answers:
                assert probe.webrtc is not None
                await probe.webrtc.accept_answer(answer)
            for probe in probes:
                if probe.rtp is not None:
                    tasks.append(asyncio.create_task(probe.rtp.run()))
            await asyncio.sleep(0.5)  # the callers' first packets are in
            tasks.append(asyncio.create_task(agent.talk()))
            await asyncio.sleep(args.duration)
            agent.halted = True
            await asyncio.sleep(1.5)  # the last burst plays out
            for probe in probes:
                if probe.rtp is not None:
                    probe.rtp.halted = True
                if probe.webrtc is not None:
                    probe.webrtc.track.halted = True
            await asyncio.sleep(0.2)
            result = await capture.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            measure(
                result,
                codec=codec,
                srtp=scenario.transport == "webrtc",
                server_http_port=port,
                agent_probe=probes[0],
                agent_port=agent.local_port,
                agent_kinds=agent.kinds,
                echo_probe=probes[1],
                figures=figures,
            )
            await agent.close()
            for call_id in (agent_call, echo_call):
                async with client.delete(f"{base}/v1/calls/{call_id}"):
                    pass
            for probe in probes:
                if probe.rtp is not None:
                    probe.rtp.close()
                if probe.webrtc is not None:
                    await probe.webrtc.pc.close()
            await load.stop()
    finally:
        stop_server(server)
        shutil.rmtree(work, ignore_errors=True)
    return figures


# -- report --------------------------------------------------------------------------------------


def quantiles(values: Sequence[float]) -> str:
    """p50/p99/max of a list, in ms."""
    if not values:
        return "-"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"{statistics.median(ordered):.1f}/{p99:.1f}/{ordered[-1]:.1f}"


def row(scenario: Scenario, commit: str, figures: Figures) -> list[object]:
    """One printed line."""
    return [
        f"{scenario.transport} x{figures.accepted}",
        f"{scenario.tree} {commit}",
        quantiles(figures.caller_to_agent),
        quantiles(figures.agent_to_caller),
        quantiles(figures.burst_first),
        f"{max(figures.burst_overrun, default=0.0):.1f}",
        quantiles(figures.echo),
        f"{len(figures.caller_to_agent)}/{len(figures.agent_to_caller)}/{len(figures.echo)}",
        figures.unmatched,
        figures.kernel_drops,
    ]


def median_run(runs: list[Figures]) -> Figures:
    """Of repeated runs, the median by p99 each way: a run another process disturbed is left out."""

    def p99_sum(figures: Figures) -> float:
        total = 0.0
        for values in (figures.caller_to_agent, figures.agent_to_caller):
            ordered = sorted(values) or [0.0]
            total += ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        return total

    return sorted(runs, key=p99_sum)[(len(runs) - 1) // 2]


async def main_async(args: argparse.Namespace) -> None:
    """Run every step, print the table."""
    capacity = dict(item.split("=") for item in args.capacity.split(","))
    scratch = Path(tempfile.mkdtemp(prefix="bench-latency-trees-"))
    trees: dict[str, tuple[Path, str]] = {}
    for index, ref in enumerate(filter(None, args.before.split(","))):
        into = scratch / f"before-{index}"
        trees[f"before-{index}"] = (into, export_tree(ref, into))
    trees["after"] = (REPO, describe_worktree())
    rows = []
    try:
        for transport in args.transports:
            family = "webrtc" if transport == "webrtc" else "rtp"
            for load in args.loads:
                calls = 1 if load == "1" else max(2, int(capacity[family]) // 2)
                runs: dict[str, list[Figures]] = {label: [] for label in trees}
                for _ in range(args.repeats):  # the trees in turns, so drifting load hits all
                    for label, (tree, commit) in trees.items():
                        scenario = Scenario(transport, calls, label.split("-")[0])
                        runs[label].append(await run_step(scenario, tree, args))
                        print(f"done: {row(scenario, commit, runs[label][-1])}", flush=True)
                for label, (_, commit) in trees.items():
                    scenario = Scenario(transport, calls, label.split("-")[0])
                    rows.append(row(scenario, commit, median_run(runs[label])))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(
        "latency in ms, p50/p99/max; caller→agent: packet in → media message out; agent→caller:"
        " media message in (or 20 ms after the previous frame was due) → packet out"
        " (real-time frames);"
        " burst: its first frame, and how much later than first + 980 ms its last left;"
        " echo: caller tone in → echo out"
    )
    print_table(
        [
            "step",
            "server",
            "caller→agent",
            "agent→caller",
            "burst first",
            "burst overrun",
            "echo",
            "samples",
            "unmatched",
            "cap drops",
        ],
        rows,
    )


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--before",
        default="",
        help="git revisions to measure as 'before', comma-separated (e.g. main)",
    )
    parser.add_argument(
        "--transports",
        type=lambda s: s.split(","),
        default=["rtp-opus", "rtp-pcmu", "webrtc"],
    )
    parser.add_argument(
        "--loads", type=lambda s: s.split(","), default=["1", "half"], help="1 and/or half"
    )
    parser.add_argument(
        "--capacity",
        default="rtp=90,webrtc=45",
        help="calls per core with agents (bench_agent_capacity.py's figures); half is run",
    )
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per step")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs of each step (trees in turns); the table shows the median run by p99",
    )
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument(
        "--server-nice",
        type=int,
        default=0,
        help="niceness of the server (-10 as root keeps other work on a shared machine off it)",
    )
    args = parser.parse_args()
    if args.load_cpu is not None:
        os.sched_setaffinity(0, {args.load_cpu})
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
