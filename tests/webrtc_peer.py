"""A WebRTC client peer for tests (aiortc): sends a sine tone, records the audio it receives."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from aiortc import (
    AudioStreamTrack,
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from mediaserver.transports.webrtc import use_ice_host_addresses

RATE_HZ = 48000
FRAME_SAMPLES = 960


class ToneTrack(AudioStreamTrack):
    """A live 48 kHz mono sine tone in 20 ms frames, paced by the wall clock."""

    def __init__(self, freq_hz: float, amplitude: float = 0.5) -> None:
        super().__init__()
        self._freq_hz = freq_hz
        self._amplitude = amplitude
        self._pts = 0
        self._start_s: float | None = None

    async def recv(self) -> AudioFrame:
        """The next 20 ms of the tone, no earlier than its time."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._start_s is None:
            self._start_s = time.monotonic()
        else:
            await asyncio.sleep(self._start_s + self._pts / RATE_HZ - time.monotonic())
        t = (self._pts + np.arange(FRAME_SAMPLES)) / RATE_HZ
        samples = (self._amplitude * 32767 * np.sin(2 * np.pi * self._freq_hz * t)).astype(np.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE_HZ
        frame.time_base = fractions.Fraction(1, RATE_HZ)
        frame.pts = self._pts
        self._pts += FRAME_SAMPLES
        return frame


class ClientPeer:
    """The caller's side of a call: offers audio sendrecv and decodes what comes back."""

    def __init__(
        self,
        track: MediaStreamTrack | None = None,
        host_addresses: Sequence[str] = ("127.0.0.1",),
    ) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver(track or "audio", direction="sendrecv")
        self._host_addresses = host_addresses
        self._chunks: list[npt.NDArray[np.float32]] = []
        self.received_samples = 0
        self._new_audio = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.pc.add_listener("track", self._on_track)

    async def create_offer(self) -> str:
        """Create the offer with all its (loopback) candidates."""
        offer = await self.pc.createOffer()
        with use_ice_host_addresses(self._host_addresses):
            await self.pc.setLocalDescription(offer)
        return str(self.pc.localDescription.sdp)

    async def accept_answer(self, answer_sdp: str) -> None:
        """Apply the server's answer; ICE and DTLS start."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

    async def wait_for_samples(self, count: int) -> None:
        """Return once at least `count` samples of decoded audio have arrived."""
        while self.received_samples < count:
            self._new_audio.clear()
            await self._new_audio.wait()

    def audio(self) -> npt.NDArray[np.float32]:
        """Everything received so far, mono float in [-1, 1] at 48 kHz."""
        if not self._chunks:
            return np.zeros(0, np.float32)
        return np.concatenate(self._chunks)

    async def close(self) -> None:
        """Close the peer connection and stop reading."""
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._reader = asyncio.create_task(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, AudioFrame)
                # aiortc decodes Opus to interleaved s16 stereo; the left channel is enough.
                interleaved = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
                self._chunks.append((interleaved[:, 0] / 32768).astype(np.float32))
                self.received_samples += frame.samples
                self._new_audio.set()


class TickTrack(AudioStreamTrack):
    """A live 48 kHz tone of `tick_s` every `interval_s`, silence between, paced by the clock."""

    def __init__(self, freq_hz: float, interval_s: float, tick_s: float) -> None:
        super().__init__()
        self._freq_hz = freq_hz
        self._interval = round(interval_s * RATE_HZ)
        self._tick = round(tick_s * RATE_HZ)
        self._pts = 0
        self._start_s: float | None = None

    async def recv(self) -> AudioFrame:
        """The next 20 ms, no earlier than its time."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._start_s is None:
            self._start_s = time.monotonic()
        else:
            await asyncio.sleep(self._start_s + self._pts / RATE_HZ - time.monotonic())
        index = self._pts + np.arange(FRAME_SAMPLES)
        ticking = index % self._interval < self._tick
        tone = 0.4 * 32767 * np.sin(2 * np.pi * self._freq_hz * index / RATE_HZ)
        samples = np.where(ticking, tone, 0).astype(np.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE_HZ
        frame.time_base = fractions.Fraction(1, RATE_HZ)
        frame.pts = self._pts
        self._pts += FRAME_SAMPLES
        return frame
