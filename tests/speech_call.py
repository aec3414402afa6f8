"""Drive a short call of real speech through a running server; wait for what it produces."""

import asyncio
import time
from typing import Any

import aiohttp
import numpy as np

from rtp_caller import open_caller
from server_harness import auth, wait_for_recording
from spoken_dialogue import RATE_HZ, encode_opus, speak


def caller_packets(text: str) -> list[bytes]:
    """Opus packets of 0.5 s of silence, `text` spoken, 0.5 s of silence (espeak-ng, libopus)."""
    silence = np.zeros(RATE_HZ // 2, np.int16)
    return encode_opus(np.concatenate([silence, speak(text, "caller"), silence]))


async def record_speech_call(
    client: aiohttp.ClientSession,
    base: str,
    text: str = "Hello, I would like to check my order.",
    *,
    call_body: dict[str, object] | None = None,
    packets: list[bytes] | None = None,
) -> str:
    """A caller-only call: 0.5 s of silence, `text`, 0.5 s of silence; returns its call id."""
    if packets is None:  # espeak-ng and libopus, off the loop the server shares
        packets = await asyncio.to_thread(caller_packets, text)
    async with client.post(f"{base}/v1/calls", json=call_body or {}, headers=auth()) as response:
        assert response.status == 201, await response.text()
        call_id: str = (await response.json())["call_id"]
    async with client.post(f"{base}/v1/calls/{call_id}/rtp", json={}, headers=auth()) as response:
        leg = await response.json()
    caller = await open_caller(leg["host"], leg["port"], leg["payload_type"])
    try:
        await caller.send_stream(packets)
    finally:
        assert caller.transport is not None
        caller.transport.close()
    async with client.delete(f"{base}/v1/calls/{call_id}", headers=auth()) as response:
        assert response.status == 202
    await wait_for_recording(client, base, call_id)
    return call_id


async def wait_for_document(
    client: aiohttp.ClientSession, url: str, timeout_s: float = 180.0
) -> tuple[int, Any]:
    """Poll a job's URL while it answers 202; the final status and body."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with client.get(url, headers=auth()) as response:
            if response.content_type == "application/json":
                body = await response.json()
            else:
                body = await response.text()
            if response.status != 202:
                return response.status, body
        assert body["status"] in ("queued", "processing"), body
        assert time.monotonic() < deadline, f"{url} still {body['status']}"
        await asyncio.sleep(0.2)
