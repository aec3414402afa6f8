"""Webhooks: signed events to the global URL and the call's own, retried until delivered."""

import asyncio
import re
import time
from pathlib import Path

import aiohttp
import pytest

from mediaserver.webhooks import WebhookUrlError, check_webhook_url, sign_payload

from rtp_caller import open_caller
from server_harness import auth, make_settings, running_server
from speech_call import record_speech_call, wait_for_document
from spoken_dialogue import encode_opus, speak
from webhook_receiver import SECRET, WebhookReceiver, check_signature


def test_signature_is_hmac_sha256_of_time_dot_body() -> None:
    """The server's signature passes the receiver's independent check; a changed body fails."""
    body = b'{"type": "recording.stored"}'
    header = sign_payload(SECRET, 1_790_000_000, body)
    assert re.fullmatch(r"t=1790000000,v1=[0-9a-f]{64}", header)
    assert check_signature(SECRET, header, body, now_s=1_790_000_010)
    assert not check_signature(SECRET, header, body + b" ", now_s=1_790_000_010)
    assert not check_signature("other", header, body, now_s=1_790_000_010)


@pytest.mark.parametrize("url", ["ftp://x", "http://a b", "/relative", 42, "http://" + "x" * 3000])
def test_bad_webhook_urls_are_refused(url: object) -> None:
    """Only absolute http(s) URLs of sensible length."""
    with pytest.raises(WebhookUrlError):
        check_webhook_url(url)


async def _counter(client: aiohttp.ClientSession, base: str, result: str) -> float:
    """mediaserver_webhook_deliveries{result=...} from /metrics."""
    async with client.get(f"{base}/metrics") as response:
        text = await response.text()
    match = re.search(
        rf'mediaserver_webhook_deliveries_total{{result="{result}"}} ([0-9.e+]+)', text
    )
    return float(match.group(1)) if match else 0.0


async def test_events_are_signed_and_a_receiver_down_at_first_gets_them_later(
    tmp_path: Path,
) -> None:
    """recording.stored and analysis.completed reach the global URL at once and the call's
    status_callback, down at first, after retries; /metrics counts the deliveries."""
    always_up = WebhookReceiver()
    down_at_first = WebhookReceiver()
    await always_up.start()
    settings = make_settings(
        tmp_path,
        transcription_backend="none",
        webhook_url=always_up.url,
        webhook_secret=SECRET,
        webhook_backoff_s=0.2,
    )
    try:
        async with (
            running_server(settings) as (_, base),
            aiohttp.ClientSession(headers=auth()) as client,
        ):
            async with client.post(f"{base}/v1/calls", json={"status_callback": "ftp://x"}) as r:
                assert r.status == 400
            call_id = await record_speech_call(
                client, base, call_body={"status_callback": down_at_first.url}
            )
            stored = await always_up.wait_for("recording.stored", call_id)
            analysed = await always_up.wait_for("analysis.completed", call_id)
            status, _ = await wait_for_document(client, f"{base}/v1/recordings/{call_id}/analysis")
            assert status == 200
            deadline = time.monotonic() + 30
            while await _counter(client, base, "retried") < 2:  # both events failed once
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await down_at_first.start()
            late = await down_at_first.wait_for("analysis.completed", call_id)
            await down_at_first.wait_for("recording.stored", call_id)
            assert await _counter(client, base, "delivered") >= 4
    finally:
        await always_up.stop()
        await down_at_first.stop()

    for received in (stored, analysed, late):
        assert received.signature_ok, received.headers
        assert received.headers["X-Mediaserver-Event"] == received.event["type"]
        assert received.event["call_id"] == call_id
        assert received.event["id"].startswith("evt_")
        assert received.event["links"]["recording"] == f"/v1/recordings/{call_id}"
    assert stored.event["status"] == "stored"
    assert analysed.event["status"] == "completed"
    assert analysed.event["links"]["analysis"] == f"/v1/recordings/{call_id}/analysis"
    assert late.event == analysed.event  # the same event, delivered later


async def test_an_upload_failure_sends_recording_failed(tmp_path: Path) -> None:
    """A store that cannot take the files: recording.failed, once, with status upload_failed."""
    receiver = WebhookReceiver()
    await receiver.start()
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("storage cannot live under a regular file")
    settings = make_settings(
        tmp_path,
        storage_path=str(blocked / "recordings"),
        webhook_url=receiver.url,
        webhook_secret=SECRET,
    )
    try:
        async with (
            running_server(settings) as (_, base),
            aiohttp.ClientSession(headers=auth()) as client,
        ):
            async with client.post(f"{base}/v1/calls", json={}) as response:
                call_id = (await response.json())["call_id"]
            async with client.post(f"{base}/v1/calls/{call_id}/rtp", json={}) as response:
                leg = await response.json()
            caller = await open_caller(leg["host"], leg["port"], leg["payload_type"])
            await caller.send_stream(encode_opus(speak("Hello there.", "caller")))
            assert caller.transport is not None
            caller.transport.close()
            async with client.delete(f"{base}/v1/calls/{call_id}") as response:
                assert response.status == 202
            failed = await receiver.wait_for("recording.failed", call_id)
    finally:
        await receiver.stop()
    assert failed.signature_ok
    assert failed.event["status"] == "upload_failed"
    assert receiver.types(call_id) == ["recording.failed"]


async def test_a_call_without_media_sends_recording_stored_with_status_empty(
    tmp_path: Path,
) -> None:
    """A call ended before any audio: recording.stored with status empty and only the
    recording's link, to the global URL and the call's callback; no job, so no job event."""
    receiver = WebhookReceiver()
    callback = WebhookReceiver()
    await receiver.start()
    await callback.start()
    settings = make_settings(tmp_path, webhook_url=receiver.url, webhook_secret=SECRET)
    try:
        async with (
            running_server(settings) as (_, base),
            aiohttp.ClientSession(headers=auth()) as client,
        ):
            async with client.post(
                f"{base}/v1/calls", json={"status_callback": callback.url}
            ) as response:
                call_id = (await response.json())["call_id"]
            async with client.delete(f"{base}/v1/calls/{call_id}") as response:
                assert response.status == 202
            stored = await receiver.wait_for("recording.stored", call_id)
            called_back = await callback.wait_for("recording.stored", call_id)
            async with client.get(f"{base}/v1/recordings/{call_id}/analysis") as response:
                analysis_status = response.status
    finally:
        await receiver.stop()
        await callback.stop()
    assert stored.signature_ok
    assert stored.event["status"] == "empty"
    assert stored.event["duration_s"] == 0
    assert stored.event["links"] == {"recording": f"/v1/recordings/{call_id}"}
    assert called_back.event == stored.event
    assert analysis_status == 404  # an empty recording has nothing to analyse: no job was queued
    assert receiver.types(call_id) == ["recording.stored"]
