"""Jobs and webhooks survive a restart: what was queued or running completes afterwards."""

import asyncio
import time
from pathlib import Path

import aiohttp

from fake_openai import FakeOpenAI
from rtp_caller import open_caller
from server_harness import auth, make_settings, running_server
from speech_call import caller_packets, record_speech_call, wait_for_document
from webhook_receiver import SECRET, WebhookReceiver


async def _status(client: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with client.get(url) as response:
        return response.status, (await response.json())["status"]


async def test_queued_and_running_jobs_complete_after_a_restart(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """One worker: call A's transcript hangs at the API, call B's jobs wait behind it. The server
    stops; after the restart A's transcript runs again and B's jobs run; the webhook receiver,
    down during the first run, then gets every event from the outbox."""
    receiver = WebhookReceiver()
    settings = make_settings(
        tmp_path,
        transcription_backend="openai",
        job_workers=1,
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        webhook_backoff_s=0.2,
        drain_timeout_s=5.0,
    )
    fake_openai.script.extend(["hold"])
    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        call_a = await record_speech_call(client, base, "Please call me back tomorrow.")
        await fake_openai.holding.wait()  # A's transcript is at the API and stays there
        call_b = await record_speech_call(client, base, "I want to cancel my order.")
        assert await _status(client, f"{base}/v1/recordings/{call_a}/transcript") == (
            202,
            "processing",
        )
        for kind in ("analysis", "transcript"):
            url = f"{base}/v1/recordings/{call_b}/{kind}"
            assert await _status(client, url) == (202, "queued")
    # The server has stopped with A's transcript unfinished and B's jobs never started.
    jobs_left = sorted(p.name for p in (tmp_path / "jobs" / "queue").glob("*.json"))
    assert len(jobs_left) == 3, jobs_left

    await receiver.start()
    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        for call_id in (call_a, call_b):
            for kind in ("analysis", "transcript"):
                status, document = await wait_for_document(
                    client, f"{base}/v1/recordings/{call_id}/{kind}"
                )
                assert status == 200, document
                assert document.get("status") in (None, "completed"), document
        async with client.get(f"{base}/v1/recordings/{call_a}") as response:
            jobs_a = (await response.json())["jobs"]
        for call_id in (call_a, call_b):
            await receiver.wait_for("recording.stored", call_id)
            await receiver.wait_for("analysis.completed", call_id)
            await receiver.wait_for("transcript.completed", call_id)
    await receiver.stop()
    assert jobs_a["transcript"]["attempts"] == 2  # cut short once, then run again
    assert jobs_a["analysis"]["attempts"] == 1
    assert all(r.signature_ok for r in receiver.received)
    assert not list((tmp_path / "jobs" / "queue").glob("*.json"))


async def _metric(client: aiohttp.ClientSession, base: str, name: str) -> float:
    """One unlabelled counter from /metrics (0 when absent)."""
    async with client.get(f"{base}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def test_jobs_not_queued_when_the_recording_was_stored_are_queued_at_the_next_start(
    tmp_path: Path,
) -> None:
    """The queue cannot take the jobs of a just-stored recording (its directory is a file): the
    spool stays and the recording shows as finalizing. After a restart with a working queue,
    recovery stores it again and queues its jobs; the analysis completes."""
    settings = make_settings(tmp_path, transcription_backend="none", drain_timeout_s=5.0)
    queue_dir = tmp_path / "jobs" / "queue"
    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        queue_dir.rmdir()  # empty: the server created it at start
        queue_dir.write_text("the job queue cannot write here")
        async with client.post(f"{base}/v1/calls", json={}) as response:
            call_id = (await response.json())["call_id"]
        async with client.post(f"{base}/v1/calls/{call_id}/rtp", json={}) as response:
            leg = await response.json()
        caller = await open_caller(leg["host"], leg["port"], leg["payload_type"])
        await caller.send_stream(await asyncio.to_thread(caller_packets, "Where is my parcel?"))
        assert caller.transport is not None
        caller.transport.close()
        async with client.delete(f"{base}/v1/calls/{call_id}") as response:
            assert response.status == 202
        deadline = time.monotonic() + 60
        while await _metric(client, base, "mediaserver_hand_offs_failed_total") < 1:
            assert time.monotonic() < deadline, "the hand-off never failed"
            await asyncio.sleep(0.1)
        async with client.get(f"{base}/v1/recordings/{call_id}") as response:
            while_kept = (await response.json())["status"]
    stored_manifests = list((tmp_path / "recordings").rglob(f"*{call_id}_manifest.json"))
    spool_kept = (tmp_path / "spool" / call_id).is_dir()
    queue_dir.unlink()  # the queue works again

    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        status, analysis = await wait_for_document(
            client, f"{base}/v1/recordings/{call_id}/analysis"
        )
        async with client.get(f"{base}/v1/recordings/{call_id}") as response:
            manifest = await response.json()
    assert len(stored_manifests) == 1  # the files and manifest were in the store already
    assert spool_kept
    assert while_kept == "finalizing"
    assert status == 200, analysis
    assert analysis["call_id"] == call_id
    assert analysis["channels"]["caller"]["talk_time_s"] > 0.5
    assert manifest["status"] == "stored"  # it was built before: recovery only stores it again
    assert manifest["jobs"]["analysis"]["status"] == "completed"
    assert not (tmp_path / "spool" / call_id).exists()
