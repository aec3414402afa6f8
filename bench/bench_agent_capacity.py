"""Calls with agents per core: a real `mediaserver serve` on one core, its load on the other.

Each call is a plain-RTP Opus caller (50 packets/s of real Opus speech-band audio) or an aiortc
WebRTC caller over WHIP, plus a Twilio-style agent on the WebSocket that talks half the time
(μ-law, 50 messages/s while talking). Per step it prints what was sent against what the stored
recordings hold (caller packets, agent frames), the agent's view of the caller (media messages),
loop lag from the server's own histogram, the server's CPU per call, kernel receive-buffer drops,
and how long each stored recording is against the call's real length. A step passes when nothing
was lost and loop lag p99 stays under 10 ms. `--repeats` runs every step several times and reports
medians, so noise and regression can be told apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import print_table, renice, set_autogroup_nice
from webrtc_load import LoadCaller, build_opus_tone_packets

from mediaserver.audio.g711 import encode_pcmu
from mediaserver.audio.libopus import OpusDecoder

HOST = "127.0.0.1"
TOKEN = "bench-token-0123456789"
FRAME_S = 0.020
MULAW_FRAME_SAMPLES = 160  # 20 ms at 8 kHz
OPUS_FRAME_SAMPLES = 960  # 20 ms at 48 kHz
OPUS_PAYLOAD_TYPE = 111
TALK_S = 2.0  # the agent talks 2 s, then listens 2 s
SETUP_CONCURRENCY = 8
TARGET_LAG_P99_MS = 10.0
FINAL_STATUSES = ("stored", "recovered", "upload_failed", "failed", "empty")
TARGETS = {"rtp": 100, "webrtc": 40}
_RTP_HEADER = struct.Struct("!BBHII")
_MEDIA_EVENT = '"event":"media"'


@dataclass(slots=True)
class Agent:
    """One Twilio-style agent: counts caller media, talks half the time."""

    ws: aiohttp.ClientWebSocketResponse
    phase_s: float
    stream_sid: str = ""
    started: asyncio.Event = field(default_factory=asyncio.Event)
    media_received: int = 0
    frames_sent: int = 0
    reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        """Count media; remember the stream sid from `start`."""
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            text: str = message.data
            if _MEDIA_EVENT in text:
                self.media_received += 1
            elif '"start"' in text:
                self.stream_sid = str(json.loads(text)["streamSid"])
                self.started.set()


@dataclass(slots=True)
class RtpCaller:
    """One plain-RTP caller: a socket, a sequence, a timestamp."""

    sock: socket.socket
    destination: tuple[str, int]
    ssrc: int
    sequence: int
    timestamp: int
    packets_sent: int = 0
    packets_received: int = 0
    started_s: float = 0.0
    ended_s: float = 0.0


@dataclass(slots=True)
class Call:
    """One call of the load."""

    call_id: str
    agent: Agent
    rtp: RtpCaller | None = None
    webrtc: LoadCaller | None = None
    started_s: float = 0.0
    ended_s: float = 0.0

    @property
    def caller_packets_sent(self) -> int:
        """Caller packets sent so far."""
        if self.rtp is not None:
            return self.rtp.packets_sent
        assert self.webrtc is not None
        return self.webrtc.track.packets_sent


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Server-side counters at one moment."""

    cpu_s: float
    wall_s: float
    runqueue_wait_s: float
    lag_buckets: dict[float, float]
    rcvbuf_errors: int
    dropped: dict[str, float]
    gc_pauses: dict[str, float]  # "count" and "sum" (s) of the collector's pauses, all generations


@dataclass(slots=True)
class StepResult:
    """What one step measured."""

    transport: str
    calls: int
    accepted: int
    cpu_percent: float
    cpu_per_call_percent: float
    lag_p50_ms: float
    lag_p99_ms: float
    runqueue_wait_percent: float  # the server waiting for a CPU others held: noise, not cost
    caller_sent: int
    caller_recorded: int
    agent_sent: int
    agent_recorded: int
    agent_heard: int  # media messages the agents received
    rcvbuf_errors: int
    duration_error_ms: float  # worst |stored duration - call length|
    drift_corrections: int
    refused: int
    server_drops: dict[str, float] = field(default_factory=dict)
    # The same counters between the two scrapes around the measured seconds, to tell losses
    # of the steady state from those of setting calls up or ending them.
    window_drops: dict[str, float] = field(default_factory=dict)
    gc_pauses_ms: tuple[int, float] = (0, 0.0)  # collections in the measured seconds, their total
    profile: dict[str, float] = field(default_factory=dict)
    native_profile: list[tuple[str, float]] = field(default_factory=list)
    # The machine's speed just before the step: µs to decode one of the callers' Opus packets
    # (this VM's speed drifts by a fifth within an hour; a slow run shows it here).
    reference_us: float = 0.0

    @property
    def lost(self) -> int:
        """Caller packets and agent frames that did not reach the recording."""
        return (self.caller_sent - self.caller_recorded) + (self.agent_sent - self.agent_recorded)

    @property
    def passed(self) -> bool:
        """No loss anywhere, loop lag p99 under target, recordings the call's length."""
        return not self.failures

    @property
    def failures(self) -> list[str]:
        """What failed the step's criteria, in words (empty when it passed)."""
        checks = (
            (self.lost == 0, f"{self.lost} lost"),
            (self.rcvbuf_errors == 0, f"{self.rcvbuf_errors} receive-buffer drops"),
            (self.lag_p99_ms < TARGET_LAG_P99_MS, f"lag p99 {self.lag_p99_ms:.1f} ms"),
            (self.duration_error_ms < 100, f"length off by {self.duration_error_ms:.0f} ms"),
            (self.drift_corrections == 0, f"{self.drift_corrections} drift corrections"),
        )
        return [failure for ok, failure in checks if not ok]


# -- audio ---------------------------------------------------------------------------------------


def build_speechlike_opus(count: int) -> list[bytes]:
    """Opus packets of a steady tone: real libopus output the server must decode (hybrid
    fullband, ~29 kb/s: the mode browsers send speech in)."""
    return build_opus_tone_packets(310.0, count)


def build_agent_chunk() -> bytes:
    """20 ms of a 400 Hz μ-law tone."""
    t = np.arange(MULAW_FRAME_SAMPLES) / 8000
    return encode_pcmu((8000 * np.sin(2 * np.pi * 400 * t)).astype(np.int16))


# -- server process ------------------------------------------------------------------------------


def start_server(
    work: Path,
    port: int,
    cpu: int | None,
    extra_env: dict[str, str],
    nice: int = 0,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """`mediaserver serve` in a session of its own, pinned to `cpu`."""
    env = {
        **os.environ,
        "MEDIASERVER_PORT": str(port),
        "MEDIASERVER_API_TOKEN": TOKEN,
        "MEDIASERVER_SPOOL_PATH": str(work / "spool"),
        "AUDIO_STORAGE_PATH": str(work / "recordings"),
        "MEDIASERVER_LOG_LEVEL": "warning",
        "MEDIASERVER_LOG_FORMAT": "json",
        "MEDIASERVER_ICE_HOST_ADDRESSES": HOST,
        "MEDIASERVER_FINALIZE_WORKERS": "1",
        "MEDIASERVER_DRAIN_TIMEOUT_S": "120",
        # The load is the experiment: off unless --admission asks to see the refusals.
        "MEDIASERVER_MAX_CPU_SHARE": "0",
        "MEDIASERVER_MAX_LOOP_LAG_MS": "0",
        **extra_env,
    }
    command = [sys.executable, "-m", "mediaserver", "serve"]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    if nice:
        command = ["nice", "-n", str(nice), *command]
    log = (work / "server.log").open("wb")
    server = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    if nice:
        set_autogroup_nice(server.pid, nice)  # its own session: nice alone would not rank it
    return server


def start_profiler(pid: int, duration_s: float, output: Path) -> Any:
    """py-spy sampling the server for `duration_s`, writing collapsed stacks to `output`."""
    command = [
        str(Path(sys.executable).parent / "py-spy"),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(duration_s)),
        "--rate",
        "200",
        "--format",
        "raw",
        "--output",
        str(output),
        "--nonblocking",
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_native_profiler(pid: int, duration_s: float, output: Path) -> Any:
    """Linux perf sampling the server for `duration_s` (C and kernel time, which py-spy omits)."""
    if shutil.which("perf") is None:
        raise SystemExit("--native needs Linux perf (Debian: linux-perf)")
    command = ["perf", "record", "-F", "499", "-g", "-p", str(pid), "-o", str(output)]
    command += ["--", "sleep", str(int(duration_s))]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Kernel entry points of the live path, as `perf report --children` names them: where the
# kernel's share of the server goes (on loopback a sender also pays for the receiver's TCP work).
KERNEL_PATHS = (
    ("kernel: TCP send (agent messages)", "tcp_sendmsg"),
    ("kernel: UDP send (caller packets)", "udp_sendmsg"),
    ("kernel: UDP receive (recvmsg)", "__sys_recvmsg"),
    ("kernel: TCP receive", "tcp_recvmsg"),
    ("kernel: epoll_wait", "do_epoll_wait"),
)


def summarize_native_profile(data: Path, top: int = 10) -> list[tuple[str, float]]:
    """Share of perf samples per shared object, the kernel's paths, the busiest symbols."""

    def report(sort: str, *flags: str) -> list[tuple[str, float]]:
        command = ["perf", "report", "-i", str(data), "--sort", sort, "--stdio", "-q"]
        text = subprocess.run(
            [*command, "-g", "none", *flags], capture_output=True, text=True, check=False
        ).stdout
        rows = []
        for line in text.splitlines():
            fields = line.split()
            if not fields or not fields[0].endswith("%"):
                continue
            try:
                share = float(fields[0].rstrip("%"))
            except ValueError:
                continue
            # With --children the second column is the self share: the name follows it.
            self_column = "--children" in flags and fields[1:2] and fields[1].endswith("%")
            name = fields[2:] if self_column else fields[1:]
            rows.append((" ".join(name), share))
        return rows

    by_object = report("dso", "--no-children")[:top]
    inclusive = dict(report("sym", "--children"))
    kernel = [(label, inclusive.get(f"[k] {symbol}", 0.0)) for label, symbol in KERNEL_PATHS]
    return by_object + kernel + report("dso,sym", "--no-children")[:top]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def read_process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def read_runqueue_wait_s(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (others' load)."""
    total_ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total_ns += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total_ns / 1e9


def read_rcvbuf_errors() -> int:
    """The kernel's UDP receive-buffer drop counter (loopback carries only this benchmark)."""
    lines = Path("/proc/net/snmp").read_text().splitlines()
    udp = [line.split() for line in lines if line.startswith("Udp:")]
    return int(udp[1][udp[0].index("RcvbufErrors")])


_BUCKET = re.compile(r'^mediaserver_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$')


def parse_lag_buckets(text: str) -> dict[float, float]:
    """Cumulative loop-lag histogram buckets from the Prometheus text."""
    buckets = {}
    for line in text.splitlines():
        if match := _BUCKET.match(line):
            bound = float("inf") if match[1] == "+Inf" else float(match[1])
            buckets[bound] = float(match[2])
    return buckets


_GC_PAUSE = re.compile(r'^mediaserver_gc_pause_seconds_(count|sum)\{generation="\d"\} (\S+)$')
_DROPPED = re.compile(r'^mediaserver_packets_dropped_total\{reason="([^"]+)"\} (\S+)$')


def parse_gc_pauses(text: str) -> dict[str, float]:
    """The garbage collector's pauses so far: their count and total seconds."""
    totals = {"count": 0.0, "sum": 0.0}
    for line in text.splitlines():
        if match := _GC_PAUSE.match(line):
            totals[match[1]] += float(match[2])
    return totals


def parse_drops(text: str) -> dict[str, float]:
    """The server's own drop counters, by reason."""
    return {m[1]: float(m[2]) for line in text.splitlines() if (m := _DROPPED.match(line))}


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """A quantile (ms) of the lag samples taken between two scrapes, interpolated in buckets."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return 0.0
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return lower_bound * 1000
            share = (rank - lower_count) / max(count - lower_count, 1e-9)
            return (lower_bound + share * (bound - lower_bound)) * 1000
        lower_bound, lower_count = bound, count
    return bounds[-1] * 1000


# -- load ----------------------------------------------------------------------------------------


class Load:
    """N calls against one server: set up, run, end, and the stored recordings checked."""

    def __init__(
        self, base: str, transport: str, opus: list[bytes], agent_chunk: bytes, phases: int = 10
    ) -> None:
        self.base = base
        # Independent calls send at independent moments: call i sends in phase i % phases of
        # each 20 ms (phases 1: every call at the same instant, the worst case for the server).
        self.phases = phases
        self.transport = transport
        self.opus = opus
        self.agent_chunk = agent_chunk
        self.calls: list[Call] = []
        self.refused = 0
        self.halted = False
        self.agents_talk = True
        self._tickers: list[asyncio.Task[None]] = []

    async def set_up(self, client: aiohttp.ClientSession, count: int) -> None:
        """Create `count` calls, a few at a time, as a bridge would."""
        limit = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def one(index: int) -> None:
            async with limit:
                call = await self._set_up_call(client, index)
            if call is not None:
                self.calls.append(call)

        await asyncio.gather(*(one(i) for i in range(count)))

    async def _set_up_call(self, client: aiohttp.ClientSession, index: int) -> Call | None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with client.post(f"{self.base}/v1/calls", json={}, headers=headers) as response:
            if response.status == 503:
                self.refused += 1
                return None
            response.raise_for_status()
            call_id = str((await response.json())["call_id"])
        ws_url = self.base.replace("http://", "ws://") + f"/v1/calls/{call_id}/agent"
        ws = await client.ws_connect(ws_url, headers=headers, max_msg_size=0)
        agent = Agent(ws, phase_s=random.Random(index).uniform(0, 2 * TALK_S))
        agent.reader = asyncio.create_task(agent.read())
        await asyncio.wait_for(agent.started.wait(), 30)
        call = Call(call_id, agent)
        if self.transport == "rtp":
            async with client.post(
                f"{self.base}/v1/calls/{call_id}/rtp", json={"codec": "opus"}, headers=headers
            ) as response:
                response.raise_for_status()
                leg = await response.json()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((HOST, 0))
            sock.setblocking(False)
            rng = random.Random(index)
            call.rtp = RtpCaller(
                sock, (HOST, int(leg["port"])), rng.getrandbits(32), rng.getrandbits(16), 0
            )
            asyncio.get_running_loop().add_reader(sock, self._on_datagram, call.rtp)
        else:
            caller = LoadCaller(self.opus)
            offer = await caller.create_offer()
            async with client.post(
                f"{self.base}/whip?call_id={call_id}",
                data=offer,
                headers={**headers, "Content-Type": "application/sdp"},
            ) as response:
                if response.status == 503:
                    self.refused += 1
                    await caller.pc.close()
                    await ws.close()
                    return None
                response.raise_for_status()
                await caller.accept_answer(await response.text())
            call.webrtc = caller
        call.started_s = time.monotonic()
        return call

    def _on_datagram(self, caller: RtpCaller) -> None:
        while True:
            try:
                caller.sock.recv(2048)
            except BlockingIOError:
                return
            caller.packets_received += 1

    def start(self) -> None:
        """One 20 ms ticker for every RTP caller and one for every agent."""
        self._tickers = [
            asyncio.create_task(self._tick_callers()),
            asyncio.create_task(self._tick_agents()),
        ]

    async def _tick_callers(self) -> None:
        loop = asyncio.get_running_loop()
        next_s = loop.time()
        step = 0
        while not self.halted:
            tick, phase = divmod(step, self.phases)
            for call in self.calls[phase :: self.phases]:
                rtp = call.rtp
                if rtp is None:
                    continue
                if not rtp.started_s:
                    rtp.started_s = time.monotonic()
                payload = self.opus[tick % len(self.opus)]
                header = _RTP_HEADER.pack(
                    0x80, OPUS_PAYLOAD_TYPE, rtp.sequence, rtp.timestamp, rtp.ssrc
                )
                try:
                    rtp.sock.sendto(header + payload, rtp.destination)
                except BlockingIOError:
                    continue
                rtp.ended_s = time.monotonic() + FRAME_S  # the packet's audio ends 20 ms later
                rtp.sequence = (rtp.sequence + 1) & 0xFFFF
                rtp.timestamp = (rtp.timestamp + OPUS_FRAME_SAMPLES) & 0xFFFFFFFF
                rtp.packets_sent += 1
            step += 1
            next_s += FRAME_S / self.phases
            await asyncio.sleep(max(0.0, next_s - loop.time()))

    async def _tick_agents(self) -> None:
        loop = asyncio.get_running_loop()
        started = next_s = loop.time()
        payload = __import__("base64").b64encode(self.agent_chunk).decode()
        step = 0
        while not self.halted:
            elapsed = next_s - started
            sends = []
            for call in self.calls[step % self.phases :: self.phases]:
                agent = call.agent
                talking = ((elapsed + agent.phase_s) % (2 * TALK_S)) < TALK_S
                if self.agents_talk and talking and not agent.ws.closed:
                    text = json.dumps(
                        {
                            "event": "media",
                            "streamSid": agent.stream_sid,
                            "media": {"payload": payload},
                        }
                    )
                    sends.append(agent.ws.send_str(text))
                    agent.frames_sent += 1
            if sends:
                await asyncio.gather(*sends, return_exceptions=True)
            step += 1
            next_s += FRAME_S / self.phases
            await asyncio.sleep(max(0.0, next_s - loop.time()))

    async def end(self, client: aiohttp.ClientSession) -> None:
        """Agents stop talking; once their audio has played, callers stop and calls end."""
        self.agents_talk = False
        headers = {"Authorization": f"Bearer {TOKEN}"}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            async with client.get(f"{self.base}/v1/calls", headers=headers) as response:
                live = (await response.json())["calls"]
            if all(c["legs"]["agent"].get("buffered_ms", 0) == 0 for c in live):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.3)  # the last frames' RTP reaches the callers
        self.halted = True
        for task in self._tickers:
            task.cancel()
        await asyncio.gather(*self._tickers, return_exceptions=True)
        await asyncio.sleep(0.2)  # the last caller packets are received
        now = time.monotonic()
        for call in self.calls:
            call.ended_s = now
            if call.webrtc is not None:
                call.webrtc.track.halted = True
        results = await asyncio.gather(
            *(
                client.delete(f"{self.base}/v1/calls/{c.call_id}", headers=headers)
                for c in self.calls
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, aiohttp.ClientResponse):
                result.release()
        for call in self.calls:
            await call.agent.ws.close()
            if call.agent.reader is not None:
                call.agent.reader.cancel()
            if call.rtp is not None:
                asyncio.get_running_loop().remove_reader(call.rtp.sock)
                call.rtp.sock.close()
            if call.webrtc is not None:
                await call.webrtc.pc.close()

    async def manifests(self, client: aiohttp.ClientSession) -> list[dict[str, Any]]:
        """Every call's stored manifest (waits for finalization)."""
        headers = {"Authorization": f"Bearer {TOKEN}"}
        out = []
        deadline = time.monotonic() + 300
        for call in self.calls:
            while True:
                async with client.get(
                    f"{self.base}/v1/recordings/{call.call_id}", headers=headers
                ) as response:
                    body = await response.json()
                if body.get("status") in FINAL_STATUSES:
                    out.append(body)
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"recording {call.call_id} not stored: {body}")
                await asyncio.sleep(0.2)
        return out


async def snapshot(client: aiohttp.ClientSession, base: str, pid: int) -> Snapshot:
    """CPU, loop-lag histogram and kernel drops now."""
    async with client.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        text = await r.text()
    return Snapshot(
        read_process_cpu_s(pid),
        time.monotonic(),
        read_runqueue_wait_s(pid),
        parse_lag_buckets(text),
        read_rcvbuf_errors(),
        parse_drops(text),
        parse_gc_pauses(text),
    )


def channel_stats(manifest: dict[str, Any], channel: str) -> dict[str, Any]:
    """One channel's placement statistics from a manifest."""
    for report in manifest.get("channels", []):
        if report["channel"] == channel:
            return dict(report["stats"])
    return {}


# -- profile -------------------------------------------------------------------------------------

CATEGORIES = (
    ("opus decode (libopus)", ("decode (mediaserver/audio/libopus.py",)),
    ("opus encode (libopus)", ("encode (mediaserver/audio/libopus.py", "opus_encoder")),
    ("g711", ("g711.py",)),
    ("base64", ("base64",)),
    ("json", ("json/",)),
    (
        "agent websocket (aiohttp)",
        (
            "aiohttp/_websocket",
            "aiohttp/client_ws",
            "aiohttp/web_ws",
            "agent.py",
            "twilio_protocol.py",
        ),
    ),
    ("journal", ("journal.py", "call_recording.py")),
    ("aiortc/srtp/ice", ("aiortc", "aioice", "pylibsrtp")),
    ("rtp leg (recvmsg, parse, send)", ("transports/rtp.py", "rtp/packet.py")),
    (
        "pacer/playout/session",
        ("playout.py", "calls.py", "session.py", "agent_bridge.py", "sequencer.py"),
    ),
    ("metrics/admission", ("metrics.py", "admission.py", "prometheus")),
    # Samples whose innermost Python frame is the loop's runner are in uvloop's C code: polling,
    # dispatching callbacks, socket writes of the transports.
    (
        "event loop",
        ("base_events", "selectors.py", "events.py", "selector_events", "asyncio/runners.py"),
    ),
)


def summarize_profile(raw: Path) -> dict[str, float]:
    """Share of samples per category, from py-spy's collapsed stacks (innermost match wins)."""
    totals: dict[str, float] = {}
    overall = 0.0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = float(count_text)
        overall += count
        frames = stack.split(";")
        label = "other"
        for frame in reversed(frames):
            found = next((name for name, keys in CATEGORIES if any(k in frame for k in keys)), None)
            if found is not None:
                label = found
                break
        totals[label] = totals.get(label, 0.0) + count
    return {k: 100 * v / overall for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


# -- steps ---------------------------------------------------------------------------------------


def measure_reference_us(opus: list[bytes]) -> float:
    """The machine's speed now: µs per caller packet decoded to 8 kHz (best of 5 rounds)."""
    decoder = OpusDecoder(8000)
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for payload in opus:
            decoder.decode(payload)
        rounds.append((time.perf_counter() - started) / len(opus) * 1e6)
    return min(rounds)


async def run_step(
    transport: str, count: int, args: argparse.Namespace, opus: list[bytes], chunk: bytes
) -> StepResult:
    """Start a server, run `count` calls, stop everything, return the figures."""
    reference_us = measure_reference_us(opus)
    work = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    port = free_port()
    base = f"http://{HOST}:{port}"
    extra = dict(item.split("=", 1) for item in args.server_env)
    if args.admission:
        # The server's own defaults (config/mediaserver.toml): refuse before the loop lags.
        extra.setdefault("MEDIASERVER_MAX_CPU_SHARE", "0.85")
        extra.setdefault("MEDIASERVER_MAX_LOOP_LAG_MS", "20")
    server = start_server(work, port, args.server_cpu, extra, args.nice)
    profile: dict[str, float] = {}
    native: list[tuple[str, float]] = []
    try:
        # Every agent's WebSocket holds a connection: aiohttp's default pool of 100 would
        # leave the 101st call's requests waiting for one of them to end.
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=120), connector=aiohttp.TCPConnector(limit=0)
        ) as client:
            for _ in range(200):
                try:
                    async with client.get(f"{base}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            load = Load(base, transport, opus, chunk, args.phases)
            await load.set_up(client, count)
            load.start()
            await asyncio.sleep(args.warmup)
            before = await snapshot(client, base, server.pid)
            spy = None
            raw = work / "profile.txt"
            if args.profile:
                spy = start_profiler(server.pid, args.duration, raw)
            elif args.native:
                spy = start_native_profiler(server.pid, args.duration, work / "perf.data")
            await asyncio.sleep(args.duration)
            after = await snapshot(client, base, server.pid)
            if spy is not None:
                await asyncio.to_thread(spy.wait)
                if raw.exists():
                    profile = summarize_profile(raw)
                elif (work / "perf.data").exists():
                    native = summarize_native_profile(work / "perf.data")
            await load.end(client)
            manifests = await load.manifests(client)
            final = await snapshot(client, base, server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        if args.keep:
            print(f"kept {work} (server.log)")
        else:
            shutil.rmtree(work, ignore_errors=True)
    cpu_share = (after.cpu_s - before.cpu_s) / (after.wall_s - before.wall_s)
    accepted = len(load.calls)
    caller_recorded = sum(int(channel_stats(m, "caller").get("packets", 0)) for m in manifests)
    agent_recorded = sum(int(channel_stats(m, "agent").get("packets", 0)) for m in manifests)
    drift = sum(
        int(channel_stats(m, ch).get("drift_corrections", 0))
        for m in manifests
        for ch in ("caller", "agent")
    )
    errors = []
    for call, manifest in zip(load.calls, manifests, strict=True):
        if call.rtp is not None:  # the caller's stream spans the call; the agent's lies within
            length_ms = (call.rtp.ended_s - call.rtp.started_s) * 1000
        else:
            length_ms = (call.ended_s - call.started_s) * 1000
        errors.append(abs(float(manifest.get("duration_ms", 0.0)) - length_ms))
    return StepResult(
        transport=transport,
        calls=count,
        accepted=accepted,
        cpu_percent=100 * cpu_share,
        cpu_per_call_percent=100 * cpu_share / max(accepted, 1),
        lag_p50_ms=bucket_quantile(before.lag_buckets, after.lag_buckets, 0.50),
        lag_p99_ms=bucket_quantile(before.lag_buckets, after.lag_buckets, 0.99),
        caller_sent=sum(c.caller_packets_sent for c in load.calls),
        caller_recorded=caller_recorded,
        agent_sent=sum(c.agent.frames_sent for c in load.calls),
        agent_recorded=agent_recorded,
        agent_heard=sum(c.agent.media_received for c in load.calls),
        runqueue_wait_percent=100
        * (after.runqueue_wait_s - before.runqueue_wait_s)
        / (after.wall_s - before.wall_s),
        rcvbuf_errors=after.rcvbuf_errors - before.rcvbuf_errors,
        duration_error_ms=max(errors, default=0.0),
        drift_corrections=drift,
        refused=load.refused,
        server_drops={k: v for k, v in final.dropped.items() if v},
        gc_pauses_ms=(
            int(after.gc_pauses["count"] - before.gc_pauses["count"]),
            1000 * (after.gc_pauses["sum"] - before.gc_pauses["sum"]),
        ),
        window_drops={
            k: v - before.dropped.get(k, 0.0)
            for k, v in after.dropped.items()
            if v - before.dropped.get(k, 0.0)
        },
        reference_us=reference_us,
        profile=profile,
        native_profile=native,
    )


def overload_verdict(result: StepResult) -> str:
    """With the load guard on: was the excess refused, and is every accepted call whole?"""
    whole = (
        result.lost == 0
        and result.rcvbuf_errors == 0
        and result.duration_error_ms < 100
        and result.drift_corrections == 0
    )
    dropped = {k: v for k, v in result.server_drops.items() if k != "agent_silence_skipped_frames"}
    return (
        f"overload {result.transport}: offered {result.calls}, refused {result.refused} with 503,"
        f" accepted {result.accepted}; caller packets recorded/sent"
        f" {result.caller_recorded}/{result.caller_sent}, agent frames"
        f" {result.agent_recorded}/{result.agent_sent}, length error"
        f" {result.duration_error_ms:.0f} ms, drift corrections {result.drift_corrections},"
        f" server drop counters {dropped or 0} vs lost by the load's count {result.lost}:"
        f" {'every accepted call whole' if whole else 'ACCEPTED CALLS DAMAGED'}"
    )


def median_result(results: Sequence[StepResult]) -> StepResult:
    """The run with the median CPU per call (its other figures with it)."""
    ordered = sorted(results, key=lambda r: r.cpu_per_call_percent)
    return ordered[len(ordered) // 2]


def row(result: StepResult, spread: str) -> list[object]:
    """One printed line."""
    return [
        f"{result.transport} x{result.calls}",
        f"{result.accepted} ({result.refused} refused)",
        f"{result.cpu_percent:.0f}%",
        f"{result.cpu_per_call_percent:.2f}%{spread}",
        f"{result.lag_p50_ms:.1f}/{result.lag_p99_ms:.1f}",
        f"{result.runqueue_wait_percent:.1f}%",
        f"{result.caller_recorded}/{result.caller_sent}",
        f"{result.agent_recorded}/{result.agent_sent}",
        f"{result.agent_heard}",
        result.rcvbuf_errors,
        f"{result.duration_error_ms:.0f}",
        result.drift_corrections,
        "pass" if result.passed else "FAIL",
    ]


async def main_async(args: argparse.Namespace) -> None:
    """Run every step of every transport and print the table."""
    opus = build_speechlike_opus(250)
    chunk = build_agent_chunk()
    if args.load_cpu is not None:
        os.sched_setaffinity(0, {args.load_cpu})
    if args.nice:
        renice(args.nice)  # the load too: other work on the machine must not starve it
    rows = []
    best: dict[str, int] = {}
    for transport in args.transports:
        for count in args.steps:
            runs = [
                await run_step(transport, count, args, opus, chunk) for _ in range(args.repeats)
            ]
            result = median_result(runs)
            per_call = [r.cpu_per_call_percent for r in runs]
            spread = f" ({min(per_call):.2f}-{max(per_call):.2f})" if len(runs) > 1 else ""
            rows.append(row(result, spread))
            print("  ".join(str(cell) for cell in rows[-1]), flush=True)  # as each step ends
            passes = sum(r.passed for r in runs)
            # Each run's verdict beside the machine's speed: noise shows as one failing run of
            # several, or as a slower reference; a regression as a higher cost at the same speed.
            verdicts = [
                ("pass" if r.passed else f"FAIL ({', '.join(r.failures)})")
                + f" [{r.cpu_per_call_percent:.2f} %/call, reference {r.reference_us:.1f} µs]"
                for r in runs
            ]
            print(f"runs {transport} x{count}: {'; '.join(verdicts)}", flush=True)
            if passes * 2 > len(runs):
                best[transport] = max(best.get(transport, 0), count)
            collections, paused_ms = result.gc_pauses_ms
            print(f"garbage collections {transport} x{count}: {collections}, {paused_ms:.1f} ms")
            if result.server_drops:
                print(
                    f"server drop counters {transport} x{count}: {result.server_drops}"
                    f" (in the measured seconds: {result.window_drops or 0})"
                )
            if args.admission:
                print(overload_verdict(result), flush=True)
            if result.profile:
                print(f"profile {transport} x{count} (share of server samples):")
                for name, share in result.profile.items():
                    print(f"  {name:28s} {share:5.1f}%")
            if result.native_profile:
                print(f"native profile {transport} x{count} (share of perf samples):")
                for name, share in result.native_profile:
                    print(f"  {share:5.1f}%  {name}")
    print_table(
        [
            "step",
            "accepted",
            "cpu",
            "cpu/call",
            "lag p50/p99 ms",
            "runq wait",
            "caller rec/sent",
            "agent rec/sent",
            "agent heard",
            "rcvbuf drops",
            "len err ms",
            "drift corr",
            "result",
        ],
        rows,
    )
    for transport in args.transports:
        target = TARGETS[transport]
        got = best.get(transport, 0)
        verdict = "met" if got >= target else "not met"
        print(f"{transport}+agent calls per core: {got} passing (target >= {target}: {verdict})")


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=lambda s: [int(x) for x in s.split(",")], default=[25, 50, 100]
    )
    parser.add_argument("--transports", type=lambda s: s.split(","), default=["rtp", "webrtc"])
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per step")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="py-spy the server each step")
    parser.add_argument(
        "--native", action="store_true", help="Linux perf the server each step (C and kernel)"
    )
    parser.add_argument(
        "--phases",
        type=int,
        default=10,
        help="moments in each 20 ms at which the calls send, spread as independent calls are;"
        " 1 sends every call's packet and agent frame at once (the worst case)",
    )
    parser.add_argument("--keep", action="store_true", help="keep each step's server.log")
    parser.add_argument(
        "--admission",
        action="store_true",
        help="keep the server's load guard on: calls beyond what it can carry get 503",
    )
    parser.add_argument(
        "--nice", type=int, default=0, help="niceness of server and load (root: -10 on a busy box)"
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        help="KEY=VALUE for the server's environment (repeatable)",
    )
    args = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
