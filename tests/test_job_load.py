"""Ten transcriptions at once leave the event loop free: a live call meanwhile loses nothing."""

import asyncio
import re
import time
from pathlib import Path

import aiohttp
import numpy as np

from server_harness import auth, make_settings, running_server
from speech_call import caller_packets, record_speech_call, wait_for_document

PHRASES = (
    "Hello, I would like to check my order.",
    "Can you tell me when it will arrive?",
    "My account number is four five six.",
    "I want to change the delivery address.",
    "Please send me a new invoice.",
    "The package was damaged when it came.",
    "Can I speak to someone about a refund?",
    "Thank you, that is all for today.",
    "Is the store open on Sunday?",
    "I would like to cancel my subscription.",
)
PROBE_INTERVAL_S = 0.01
IDLE_S = 3.0


def _summary(lags_s: list[float]) -> str:
    """p50/p99/max of lag samples in milliseconds."""
    lag_ms = np.array(lags_s) * 1000
    return (
        f"p50 {np.percentile(lag_ms, 50):.2f} ms, p99 {np.percentile(lag_ms, 99):.2f} ms, "
        f"max {lag_ms.max():.2f} ms ({lag_ms.size} probes)"
    )


async def _probe_lag(lags: list[float], stop: asyncio.Event) -> None:
    """Sleep 10 ms at a time and keep how late each wake-up was (the server shares this loop)."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        started = loop.time()
        await asyncio.sleep(PROBE_INTERVAL_S)
        lags.append(loop.time() - started - PROBE_INTERVAL_S)


async def test_ten_transcriptions_run_off_the_event_loop(tmp_path: Path) -> None:
    """Ten calls' analysis and pocketsphinx transcripts run in the (niced) worker processes while
    another call is live; the loop's lag is printed and the live call is recorded whole."""
    settings = make_settings(tmp_path, job_workers=2)
    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        live_packets = await asyncio.to_thread(
            caller_packets, "This call is live while the others are transcribed."
        )
        idle: list[float] = []  # the same probe with nothing to do: this machine's own noise
        stop = asyncio.Event()
        probe = asyncio.create_task(_probe_lag(idle, stop))
        await asyncio.sleep(IDLE_S)
        stop.set()
        await probe
        call_ids = await asyncio.gather(*(record_speech_call(client, base, p) for p in PHRASES))
        lags: list[float] = []
        stop = asyncio.Event()
        probe = asyncio.create_task(_probe_lag(lags, stop))
        started = time.monotonic()
        live = asyncio.create_task(record_speech_call(client, base, packets=live_packets))
        results = await asyncio.gather(
            *(wait_for_document(client, f"{base}/v1/recordings/{c}/transcript") for c in call_ids)
        )
        elapsed_s = time.monotonic() - started
        stop.set()
        await probe
        live_id = await live
        async with client.get(f"{base}/v1/recordings/{live_id}") as response:
            live_manifest = await response.json()
        async with client.get(f"{base}/metrics") as response:
            metrics = await response.text()

    print(
        f"\n10 transcriptions in {elapsed_s:.1f} s with 2 job workers, a live call meanwhile; "
        f"event-loop lag {_summary(lags)}; idle server, same probe: {_summary(idle)}"
    )
    assert [status for status, _ in results] == [200] * len(PHRASES)
    assert all(t["segments"] for _, t in results), [t for _, t in results]
    caller = next(c for c in live_manifest["channels"] if c["channel"] == "caller")
    assert caller["stats"]["lost"] == 0, caller
    completed = re.search(
        r'mediaserver_jobs_total\{kind="transcript",result="completed"\} (\S+)', metrics
    )
    assert completed is not None
    assert float(completed.group(1)) >= len(PHRASES)
