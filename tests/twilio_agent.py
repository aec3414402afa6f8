"""A test agent speaking Twilio Media Streams: records what it hears, sends tones, marks, clear."""

# The messages this agent sends are shaped exactly as existing Twilio agents send them, written
# here independently of the server's code:
#   media and clear: pipecat src/pipecat/serializers/twilio.py, TwilioFrameSerializer.serialize
#     (pipecat-ai/pipecat commit acead0507d7de44e216d24533964106ca1d1d044):
#       {"event": "media", "streamSid": sid, "media": {"payload": base64}}
#       {"event": "clear", "streamSid": sid}
#   mark: Twilio's own sample agent, node/connect-basic/server.js
#     (twilio/media-streams commit 09d208b2ce2f6bc9b0ce4a4b05f929370d448bb6):
#       {"event": "mark", "streamSid": sid, "mark": {"name": name}}
# Audio is encoded and decoded with FFmpeg's G.711 codec through PyAV, an oracle independent of
# the server's G.711 tables; L16 is numpy's little-endian int16.

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import av
import numpy as np
import numpy.typing as npt
from aiohttp import web

Message = dict[str, Any]
_END_TYPES = (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
TIMEOUT_S = 5.0


def make_tone(freq_hz: float, duration_ms: int, rate_hz: int, amplitude: int = 8000) -> np.ndarray:
    """A sine tone as int16 samples."""
    t = np.arange(rate_hz * duration_ms // 1000) / rate_hz
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def encode_mulaw(samples: npt.NDArray[np.int16]) -> bytes:
    """Encode 8 kHz samples to μ-law with FFmpeg."""
    context = av.CodecContext.create("pcm_mulaw", "w")
    context.sample_rate = 8000
    context.layout = "mono"
    context.format = "s16"
    context.open()
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    return b"".join(bytes(packet) for packet in [*context.encode(frame), *context.encode(None)])


def decode_mulaw(data: bytes) -> npt.NDArray[np.int16]:
    """Decode μ-law bytes with FFmpeg."""
    if not data:
        return np.zeros(0, np.int16)
    context = av.CodecContext.create("pcm_mulaw", "r")
    context.sample_rate = 8000
    context.layout = "mono"
    frames = context.decode(av.Packet(data))
    return np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames]).astype(np.int16)


def encode_audio(samples: npt.NDArray[np.int16], encoding: str) -> bytes:
    """Samples to payload bytes in a stream's `mediaFormat.encoding`."""
    if encoding == "audio/x-mulaw":
        return encode_mulaw(samples)
    assert encoding == "audio/x-l16", encoding
    return samples.astype("<i2").tobytes()


def decode_audio(data: bytes, encoding: str) -> npt.NDArray[np.int16]:
    """Payload bytes in a stream's `mediaFormat.encoding` to samples."""
    if encoding == "audio/x-mulaw":
        return decode_mulaw(data)
    assert encoding == "audio/x-l16", encoding
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def detect_pipecat_transport(message: Message) -> str:
    """pipecat's provider detection for Twilio (src/pipecat/runner/utils.py, same commit)."""
    start = message.get("start", {})
    if message.get("event") == "start" and "streamSid" in start and "callSid" in start:
        return "twilio"
    return "unknown"


class TwilioTestAgent:
    """The agent end of one stream: a reader task records every message, helpers send."""

    def __init__(self, ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: list[Message] = []
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self.start_message: Message | None = None
        self._reading = asyncio.Event()
        self._reading.set()
        self._reader = asyncio.create_task(self._read())

    def stop_reading(self) -> None:
        """Read nothing more, as an agent that hangs: the socket's buffers fill up."""
        self._reading.clear()

    def resume_reading(self) -> None:
        """Read again after stop_reading."""
        self._reading.set()

    async def _read(self) -> None:
        """Record text messages until the server closes."""
        try:
            while True:
                await self._reading.wait()
                msg = await self.ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    message = json.loads(msg.data)
                    self.messages.append(message)
                    if message.get("event") == "start":
                        self.start_message = message
                    self._inbox.put_nowait(message)
                elif msg.type is aiohttp.WSMsgType.CLOSE:
                    # The close frame's reason is only seen here; aiohttp keeps just the code.
                    self.close_reason = msg.extra or ""
                elif msg.type in _END_TYPES:
                    break
        finally:
            self.close_code = self.ws.close_code
            self._closed.set()

    @property
    def stream_sid(self) -> str:
        """The stream sid the server gave in `start`."""
        assert self.start_message is not None, "no start message yet"
        return str(self.start_message["start"]["streamSid"])

    @property
    def encoding(self) -> str:
        """The payload encoding the server announced."""
        assert self.start_message is not None, "no start message yet"
        return str(self.start_message["start"]["mediaFormat"]["encoding"])

    @property
    def sample_rate_hz(self) -> int:
        """The payload sample rate the server announced."""
        assert self.start_message is not None, "no start message yet"
        return int(self.start_message["start"]["mediaFormat"]["sampleRate"])

    async def next_message(self, timeout_s: float = TIMEOUT_S) -> Message:
        """The next message the server sent."""
        return await asyncio.wait_for(self._inbox.get(), timeout_s)

    async def expect(self, event: str, timeout_s: float = TIMEOUT_S) -> Message:
        """The next message, which must be of the given event."""
        message = await self.next_message(timeout_s)
        assert message["event"] == event, message
        return message

    async def wait_for(self, event: str, timeout_s: float = TIMEOUT_S) -> Message:
        """Skip messages until one of the given event arrives."""
        async with asyncio.timeout(timeout_s):
            while True:
                message = await self._inbox.get()
                if message["event"] == event:
                    return message

    async def wait_closed(self, timeout_s: float = TIMEOUT_S) -> int | None:
        """Wait for the server to close the socket; the close code it gave."""
        await asyncio.wait_for(self._closed.wait(), timeout_s)
        return self.close_code

    def media_messages(self) -> list[Message]:
        """Every `media` message received so far."""
        return [m for m in self.messages if m["event"] == "media"]

    def caller_audio(self) -> npt.NDArray[np.int16]:
        """All caller audio received so far, decoded with the oracle."""
        data = b"".join(base64.b64decode(m["media"]["payload"]) for m in self.media_messages())
        return decode_audio(data, self.encoding)

    async def send_json(self, message: Message) -> None:
        """Send one message as JSON text."""
        await self.ws.send_str(json.dumps(message))

    async def send_payload(self, payload: bytes) -> None:
        """Send raw payload bytes in a `media` message, shaped as pipecat sends it."""
        encoded = base64.b64encode(payload).decode("utf-8")
        await self.send_json(
            {"event": "media", "streamSid": self.stream_sid, "media": {"payload": encoded}}
        )

    async def send_tone(
        self, freq_hz: float, duration_ms: int, amplitude: int = 8000
    ) -> npt.NDArray[np.int16]:
        """Send a tone in the stream's format; returns the samples the server should decode."""
        samples = make_tone(freq_hz, duration_ms, self.sample_rate_hz, amplitude)
        payload = encode_audio(samples, self.encoding)
        await self.send_payload(payload)
        return decode_audio(payload, self.encoding)

    async def send_mark(self, name: str) -> None:
        """Ask to be told when the audio sent so far has played."""
        await self.send_json(
            {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}
        )

    async def send_clear(self) -> None:
        """Drop the audio queued on the server (barge-in)."""
        await self.send_json({"event": "clear", "streamSid": self.stream_sid})

    async def close(self) -> None:
        """Hang up from the agent's side and stop reading."""
        await self.ws.close()
        await self._reader


@asynccontextmanager
async def dial_in(session: aiohttp.ClientSession, url: str) -> AsyncIterator[TwilioTestAgent]:
    """Connect to the server's agent endpoint as a dialling-in agent."""
    ws = await session.ws_connect(url)
    agent = TwilioTestAgent(ws)
    try:
        yield agent
    finally:
        await agent.close()


class TwilioAgentServer:
    """An agent's WebSocket server on 127.0.0.1 for the media server to dial out to."""

    def __init__(self) -> None:
        self.agents: asyncio.Queue[TwilioTestAgent] = asyncio.Queue()
        self.url = ""
        self.requests: list[web.Request] = []
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        """Accept one stream and keep it open until either side closes."""
        self.requests.append(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        agent = TwilioTestAgent(ws)
        self.agents.put_nowait(agent)
        await agent._closed.wait()
        return ws

    async def next_agent(self, timeout_s: float = TIMEOUT_S) -> TwilioTestAgent:
        """The next stream the media server opened."""
        return await asyncio.wait_for(self.agents.get(), timeout_s)

    async def __aenter__(self) -> "TwilioAgentServer":
        app = web.Application()
        app.router.add_get("/agent", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"ws://127.0.0.1:{port}/agent"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
