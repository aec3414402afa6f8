"""Calls on a server in virtual time: created through the API, media journalled directly."""

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from mediaserver.api.keys import RECORDER
from mediaserver.call_recording import CallRecording
from mediaserver.clock import ManualClock
from mediaserver.recording.channel import Channel
from mediaserver.rtp.media_packet import MediaPacket
from mediaserver.server import RunningServer, start_server
from mediaserver.settings import Settings

from rtp_sender import Impairments, simulate_stream
from server_harness import auth, wait_for_recording

OPUS_PAYLOAD_TYPE = 111


@asynccontextmanager
async def virtual_server(
    settings: Settings, clock: ManualClock
) -> AsyncIterator[tuple[RunningServer, str]]:
    """A real server whose every timer (pacer, sweeper, flushes) runs on `clock`."""
    server = await start_server(settings, clock=clock)
    try:
        yield server, f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()


def journal_tones(recording: CallRecording, clock: ManualClock, seconds: float) -> None:
    """Journal `seconds` of Opus on both channels (a tone each), then move the clock past them."""
    rng = random.Random(recording.call_id)
    base_ns = clock.monotonic_ns()
    for channel, freq_hz in ((Channel.CALLER, 500.0), (Channel.AGENT, 1300.0)):
        stream = simulate_stream(
            duration_s=seconds,
            marker_times_s=[0.6],
            freq_hz=freq_hz,
            start_s=0.0,
            base_delay_s=0.02,
            impairments=Impairments(),
            rng=rng,
        )
        for packet in stream.packets:
            recording.record(
                channel,
                MediaPacket(
                    base_ns + round(packet.arrival_s * 1e9),
                    packet.rtp_timestamp,
                    packet.sequence,
                    packet.ssrc,
                    OPUS_PAYLOAD_TYPE,
                    False,
                    packet.payload,
                ),
            )
    clock.advance(seconds + 0.1)


async def record_call(
    client: aiohttp.ClientSession,
    server: RunningServer,
    base: str,
    clock: ManualClock,
    body: dict[str, Any] | None = None,
    *,
    seconds: float = 1.2,
) -> dict[str, Any]:
    """Create a call through the API, journal its media, end it; the stored manifest."""
    async with client.post(f"{base}/v1/calls", json=body or {}, headers=auth()) as response:
        assert response.status == 201, await response.text()
        call_id: str = (await response.json())["call_id"]
    journal_tones(server.app[RECORDER].get_call(call_id), clock, seconds)
    async with client.delete(f"{base}/v1/calls/{call_id}", headers=auth()) as response:
        assert response.status == 202, await response.text()
    return await wait_for_recording(client, base, call_id)
