"""The pacer: each call has its own 20 ms grid, in one of four phases 5 ms apart, kept balanced."""

import asyncio
from pathlib import Path

import aiohttp

from mediaserver.clock import ManualClock

from rtp_caller import RtpCaller, open_caller
from rtp_sender import silence_payload
from server_harness import auth, make_settings
from virtual_call import virtual_server

CALLS = 8


async def _latched_caller(client: aiohttp.ClientSession, base: str) -> tuple[str, RtpCaller]:
    """A call with a plain-RTP caller the server has latched onto (so it sends it frames)."""
    async with client.post(f"{base}/v1/calls", json={}) as response:
        call_id = (await response.json())["call_id"]
    async with client.post(f"{base}/v1/calls/{call_id}/rtp", json={}) as response:
        leg = await response.json()
    caller = await open_caller(leg["host"], leg["port"], leg["payload_type"])
    caller.send_packet(0, 0, silence_payload())
    async with asyncio.timeout(5):
        while True:
            async with client.get(f"{base}/v1/calls/{call_id}") as response:
                if (await response.json())["legs"]["caller"]["transport"]["peer"]:
                    return call_id, caller
            await asyncio.sleep(0.01)


async def _delivered(callers: list[RtpCaller], total: int) -> None:
    """Wait (real time, up to 1 s) until the callers hold `total` datagrams, and 20 ms more."""
    for _ in range(200):  # a missing datagram is left for the counts to show
        if sum(len(caller.received) for caller in callers) >= total:
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.02)  # a datagram beyond the expected ones would show up meanwhile


async def test_calls_are_ticked_in_four_phases_five_ms_apart(tmp_path: Path) -> None:
    """Eight calls: each 5 ms two of them get their frame, and every call one each 20 ms."""
    clock = ManualClock()
    async with (
        virtual_server(make_settings(tmp_path), clock) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        calls = [await _latched_caller(client, base) for _ in range(CALLS)]
        callers = [caller for _, caller in calls]
        await clock.run_for(0.1)  # the pacer settles on its schedule
        await asyncio.sleep(0.1)  # the frames of that are delivered
        windows: list[list[int]] = []
        for _ in range(8):
            before = [len(caller.received) for caller in callers]
            await clock.run_for(0.005)
            await _delivered(callers, sum(before) + CALLS // 4)
            windows.append([len(c.received) - b for c, b in zip(callers, before, strict=True)])
        for call_id, caller in calls:
            async with client.delete(f"{base}/v1/calls/{call_id}") as response:
                assert response.status == 202
            assert caller.transport is not None
            caller.transport.close()
    assert all(sum(window) == CALLS // 4 for window in windows), windows
    assert all(max(window) <= 1 for window in windows), windows
    for first, second in zip(windows[:4], windows[4:], strict=True):
        assert first == second, windows  # a call's phase stays: the same calls every 20 ms
    assert [sum(column) for column in zip(*windows[:4], strict=True)] == [1] * CALLS, windows
