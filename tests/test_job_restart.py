"""Jobs and webhooks survive a restart: what was queued or running completes afterwards."""

from pathlib import Path

import aiohttp

from fake_openai import FakeOpenAI
from server_harness import auth, make_settings, running_server
from speech_call import record_speech_call, wait_for_document
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
