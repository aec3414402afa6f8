"""The WebRTC capacity benchmark's load: aiortc callers sending pre-encoded Opus, tone agents."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from fractions import Fraction
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket
from common import renice

from mediaserver.audio.g711 import encode_pcmu
from mediaserver.audio.opus_encoder import OpusEncoder
from mediaserver.audio.opus_silence import silence_packet
from mediaserver.transports.rtp_tap import AiortcReceivePath, tap_receiver
from mediaserver.transports.webrtc import use_ice_host_addresses

HOST = "127.0.0.1"
# RFC 7587 §4.1: Opus RTP timestamps count 48 kHz samples.
OPUS_CLOCK_RATE_HZ = 48_000
OPUS_TIME_BASE = Fraction(1, OPUS_CLOCK_RATE_HZ)
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
PACKET_INTERVAL_S = 0.020
MULAW_RATE_HZ = 8000  # Twilio Media Streams audio: 8 kHz μ-law
MULAW_FRAME_SAMPLES = 160  # 20 ms at 8 kHz
CALLER_TONE_HZ = 440.0
# 400 Hz is exactly 8 cycles in 20 ms at 8 kHz, so one chunk repeated is a seamless tone.
AGENT_TONE_HZ = 400.0
TONE_PACKETS = 50  # one second of caller tone, repeated
SETUP_CONCURRENCY = 4  # calls set up at once; more only makes every handshake slower
CONNECT_TIMEOUT_S = 60.0
DRAIN_POLL_S = 0.3
DRAIN_TIMEOUT_S = 15.0
# The server speaks JSON with compact separators, so a media message always holds this.
_MEDIA_EVENT = '"event":"media"'


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """What the load process is to do: how many calls, against which server, on which CPU."""

    server_kind: str  # "mediaserver" or "reference"
    base_url: str
    calls: int
    token: str
    cpu: int | None
    nice: int


@dataclass(slots=True)
class CallCounts:
    """What one call's load sent and received, counted at the load's end."""

    caller_packets_sent: int = 0
    packets_from_server: int = 0
    # Of `packets_from_server`, those that were not the server's Opus silence packet.
    audio_packets_from_server: int = 0
    agent_frames_sent: int = 0
    agent_media_received: int = 0
    server_id: str = ""


@dataclass(slots=True)
class LoadReport:
    """The load process's report: per-call counts and its own CPU use while measured."""

    calls: list[CallCounts] = field(default_factory=list)
    setup_s: float = 0.0
    cpu_percent: float = 0.0
    # Per call and second over the measured window: what each side sent.
    caller_pps: float = 0.0
    server_pps: float = 0.0
    server_counts: dict[str, Any] = field(default_factory=dict)


def build_opus_tone_packets(freq_hz: float, count: int) -> list[bytes]:
    """`count` 20 ms Opus packets of a tone, encoded once with libopus."""
    encoder = OpusEncoder(input_rate_hz=OPUS_CLOCK_RATE_HZ)
    seconds = count * FRAME_SAMPLES / OPUS_CLOCK_RATE_HZ + 0.1
    t = np.arange(int(seconds * OPUS_CLOCK_RATE_HZ)) / OPUS_CLOCK_RATE_HZ
    samples = (8000 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)
    packets = [packet.payload for packet in encoder.encode(samples)]
    return packets[:count]


def build_agent_media_text(stream_sid: str) -> str:
    """One 20 ms μ-law tone chunk as a Twilio `media` message, shaped as pipecat sends it."""
    t = np.arange(MULAW_FRAME_SAMPLES) / MULAW_RATE_HZ
    samples = (8000 * np.sin(2 * np.pi * AGENT_TONE_HZ * t)).astype(np.int16)
    payload = base64.b64encode(encode_pcmu(samples)).decode("ascii")
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})


class PreEncodedOpusTrack(MediaStreamTrack):
    """Opus packets encoded once and replayed at 20 ms; aiortc sends them without encoding."""

    kind = "audio"

    def __init__(self, payloads: list[bytes]) -> None:
        super().__init__()
        self._payloads = payloads
        self._next_pts = 0
        self._next_send_s: float | None = None
        self.halted = False
        self.packets_sent = 0

    async def recv(self) -> av.Packet[Any]:
        """The next packet at its time; once halted, nothing more (the sender waits)."""
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._next_send_s is None:
            self._next_send_s = loop.time()
        await asyncio.sleep(self._next_send_s - loop.time())
        if self.halted:
            await loop.create_future()  # never resolves; closing the peer cancels the sender
        packet = av.Packet(self._payloads[self.packets_sent % len(self._payloads)])
        packet.pts = self._next_pts
        packet.time_base = OPUS_TIME_BASE
        self._next_pts += FRAME_SAMPLES
        self._next_send_s += PACKET_INTERVAL_S
        self.packets_sent += 1
        return packet


class LoadCaller:
    """One aiortc caller: offers Opus sendrecv, counts the server's packets without decoding."""

    def __init__(self, payloads: list[bytes]) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = PreEncodedOpusTrack(payloads)
        transceiver = self.pc.addTransceiver(self.track, direction="sendrecv")
        opus = [
            codec
            for codec in RTCRtpSender.getCapabilities("audio").codecs
            if codec.mimeType.lower() == "audio/opus"
        ]
        transceiver.setCodecPreferences(opus)
        self.packets_received = 0
        self.audio_packets_received = 0
        self._silence = silence_packet(FRAME_SAMPLES)
        self.first_packet = asyncio.Event()
        # Decoding what comes back would cost the load more than the server's whole leg.
        tap_receiver(transceiver.receiver, self._on_packet, AiortcReceivePath.NONE)

    def _on_packet(self, packet: RtpPacket) -> None:
        self.packets_received += 1
        if packet.payload != self._silence:
            self.audio_packets_received += 1
        self.first_packet.set()

    async def create_offer(self) -> str:
        """The offer with its loopback candidate."""
        offer = await self.pc.createOffer()
        with use_ice_host_addresses([HOST]):
            await self.pc.setLocalDescription(offer)
        return str(self.pc.localDescription.sdp)

    async def accept_answer(self, sdp: str) -> None:
        """Apply the answer; ICE and DTLS start."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))


class LoadAgent:
    """One agent on the server's WebSocket: counts caller media, sends a tone at 50 messages/s."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.media_received = 0
        self.frames_sent = 0
        self.stream_sid = ""
        self.started = asyncio.Event()
        self.halted = False
        self._reader = asyncio.create_task(self._read())
        self._sender: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            text: str = message.data
            if _MEDIA_EVENT in text:
                self.media_received += 1
            elif not self.started.is_set():
                parsed = json.loads(text)
                if parsed.get("event") == "start":
                    self.stream_sid = str(parsed["streamSid"])
                    self.started.set()

    def start_sending(self) -> None:
        """Begin the 20 ms tone messages."""
        self._sender = asyncio.create_task(self._send())

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        text = build_agent_media_text(self.stream_sid)
        next_s = loop.time()
        while not self.halted:
            await self.ws.send_str(text)
            self.frames_sent += 1
            next_s += PACKET_INTERVAL_S
            await asyncio.sleep(next_s - loop.time())

    async def close(self) -> None:
        """Stop sending and hang up."""
        self.halted = True
        await self.ws.close()
        for task in (self._sender, self._reader):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in (self._sender, self._reader) if t is not None), return_exceptions=True
        )


@dataclass(slots=True)
class LoadCall:
    """One call of the load: its caller, its agent (mediaserver only) and the server's id."""

    caller: LoadCaller
    agent: LoadAgent | None
    server_id: str


async def set_up_mediaserver_call(
    client: aiohttp.ClientSession, base_url: str, payloads: list[bytes]
) -> LoadCall:
    """POST /v1/calls, dial the agent in, then WHIP the caller into the same call."""
    async with client.post(f"{base_url}/v1/calls", json={}) as response:
        response.raise_for_status()
        call_id = str((await response.json())["call_id"])
    ws_url = base_url.replace("http://", "ws://") + f"/v1/calls/{call_id}/agent"
    agent = LoadAgent(await client.ws_connect(ws_url, max_msg_size=0))
    await asyncio.wait_for(agent.started.wait(), CONNECT_TIMEOUT_S)
    caller = LoadCaller(payloads)
    offer = await caller.create_offer()
    async with client.post(
        f"{base_url}/whip?call_id={call_id}",
        data=offer,
        headers={"Content-Type": "application/sdp"},
    ) as response:
        response.raise_for_status()
        answer = await response.text()
    await caller.accept_answer(answer)
    return LoadCall(caller, agent, call_id)


async def set_up_reference_call(
    client: aiohttp.ClientSession, base_url: str, payloads: list[bytes]
) -> LoadCall:
    """POST /offer with the SDP in JSON, as aiortc's server example takes it."""
    caller = LoadCaller(payloads)
    offer = await caller.create_offer()
    async with client.post(f"{base_url}/offer", json={"sdp": offer, "type": "offer"}) as response:
        response.raise_for_status()
        body = await response.json()
    await caller.accept_answer(str(body["sdp"]))
    return LoadCall(caller, None, str(body["id"]))


async def read_server_counts(client: aiohttp.ClientSession, plan: LoadPlan) -> dict[str, Any]:
    """The server's own per-call counters: GET /v1/calls, or the reference's GET /stats."""
    path = "/v1/calls" if plan.server_kind == "mediaserver" else "/stats"
    async with client.get(f"{plan.base_url}{path}") as response:
        response.raise_for_status()
        body: dict[str, Any] = await response.json()
    return body


def count_calls(calls: list[LoadCall]) -> list[CallCounts]:
    """What every call of the load has sent and received so far."""
    return [
        CallCounts(
            caller_packets_sent=call.caller.track.packets_sent,
            packets_from_server=call.caller.packets_received,
            audio_packets_from_server=call.caller.audio_packets_received,
            agent_frames_sent=call.agent.frames_sent if call.agent else 0,
            agent_media_received=call.agent.media_received if call.agent else 0,
            server_id=call.server_id,
        )
        for call in calls
    ]


def settled(body: dict[str, Any]) -> bool:
    """Whether the mediaserver has played out every agent frame it was given."""
    return all(call["legs"]["agent"]["buffered_ms"] == 0 for call in body.get("calls", []))


async def drain(
    client: aiohttp.ClientSession, plan: LoadPlan, calls: list[LoadCall]
) -> dict[str, Any]:
    """Wait until neither the server's counters nor the load's change any more."""
    deadline_s = time.monotonic() + DRAIN_TIMEOUT_S
    previous: tuple[Any, ...] | None = None
    while True:
        await asyncio.sleep(DRAIN_POLL_S)
        body = await read_server_counts(client, plan)
        # The server keeps sending silence to callers, so only audio packets must settle.
        mine = [
            (c.caller_packets_sent, c.audio_packets_from_server, c.agent_media_received)
            for c in count_calls(calls)
        ]
        current = (json.dumps(_without_volatile(body), sort_keys=True), mine)
        if (current == previous and settled(body)) or time.monotonic() > deadline_s:
            return body
        previous = current


def _without_volatile(body: dict[str, Any]) -> dict[str, Any]:
    """Server counters minus those that tick on their own (silence sent to idle callers)."""
    calls = []
    for call in body.get("calls", []):
        legs = call.get("legs", {})
        calls.append(
            {
                "caller_packets": legs.get("caller", {}).get("packets"),
                "frames_played": legs.get("agent", {}).get("frames_played"),
                "dropped": call.get("dropped"),
                "recorded_frames": call.get("recorded_frames"),
            }
        )
    return {"calls": calls}


def cpu_seconds() -> float:
    """User plus system CPU time of this process (all its threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def receive_command(conn: Connection) -> str:
    """The next command from the orchestrating process."""
    command: str = await asyncio.to_thread(conn.recv)
    return command


async def run_load(conn: Connection, plan: LoadPlan) -> None:
    """Set up the calls, report ready, stream until told to stop, drain, report the counts."""
    payloads = build_opus_tone_packets(CALLER_TONE_HZ, TONE_PACKETS)
    set_up: Callable[[aiohttp.ClientSession, str, list[bytes]], Awaitable[LoadCall]] = (
        set_up_mediaserver_call if plan.server_kind == "mediaserver" else set_up_reference_call
    )
    report = LoadReport()
    calls: list[LoadCall] = []
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {plan.token}"},
        connector=aiohttp.TCPConnector(limit=0),  # one connection per agent WebSocket
    ) as client:

        async def set_up_one() -> None:
            async with gate:
                calls.append(await set_up(client, plan.base_url, payloads))

        started_s = time.monotonic()
        try:
            await asyncio.gather(*(set_up_one() for _ in range(plan.calls)))
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                for call in calls:
                    await call.caller.first_packet.wait()
            report.setup_s = time.monotonic() - started_s
            for call in calls:
                if call.agent is not None:
                    call.agent.start_sending()
            conn.send("ready")
            if await receive_command(conn) != "mark":
                raise RuntimeError("the load expected 'mark'")
            cpu_start_s, wall_start_s = cpu_seconds(), time.monotonic()
            start_counts = count_calls(calls)
            if await receive_command(conn) != "stop":
                raise RuntimeError("the load expected 'stop'")
            wall_s = time.monotonic() - wall_start_s
            report.cpu_percent = 100 * (cpu_seconds() - cpu_start_s) / wall_s
            call_seconds = wall_s * max(len(calls), 1)  # N = 0 measures the idle server
            end_counts = count_calls(calls)
            report.caller_pps = (
                sum(
                    end.caller_packets_sent - start.caller_packets_sent
                    for start, end in zip(start_counts, end_counts, strict=True)
                )
                / call_seconds
            )
            report.server_pps = (
                sum(
                    end.packets_from_server - start.packets_from_server
                    for start, end in zip(start_counts, end_counts, strict=True)
                )
                / call_seconds
            )
            for call in calls:
                call.caller.track.halted = True
                if call.agent is not None:
                    call.agent.halted = True
            report.server_counts = await drain(client, plan, calls)
            report.calls = count_calls(calls)
            conn.send(report)
        finally:
            for call in calls:
                if call.agent is not None:
                    await call.agent.close()
            await asyncio.gather(*(call.caller.pc.close() for call in calls))


def run_load_process(conn: Connection, plan: LoadPlan) -> None:
    """The load process's entry point: its own process group, CPU and priority, then the load."""
    os.setsid()  # the orchestrator kills the whole group, whatever it spawned; own autogroup
    if plan.cpu is not None:
        os.sched_setaffinity(0, {plan.cpu})
    if plan.nice:
        renice(plan.nice)
    try:
        asyncio.run(run_load(conn, plan))
    except Exception as error:
        conn.send(f"load failed: {error!r}")
        raise
