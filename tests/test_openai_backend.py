"""The openai transcription backend end to end, against an OpenAI-compatible server on loopback."""

from pathlib import Path

import aiohttp
import pytest

from fake_openai import API_KEY, FakeOpenAI
from server_harness import auth, make_settings, running_server
from speech_call import record_speech_call, wait_for_document
from webhook_receiver import SECRET, WebhookReceiver

MAX_UPLOAD_BYTES = 6000  # a 3 s channel is about 12 KB: it goes in pieces
SPEECH_START_S = 0.5  # record_speech_call speaks after half a second


async def _post_transcript(client: aiohttp.ClientSession, url: str, body: dict[str, str]) -> int:
    async with client.post(f"{url}/transcript", json=body) as response:
        return response.status


async def test_openai_backend_pieces_retries_turns_and_failures(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """whisper-1 in pieces under the size limit with a 429 retried; a model without timestamps
    per turn; a second request while one runs is 409; a permanent error fails the job with the
    API's message."""
    receiver = WebhookReceiver()
    await receiver.start()
    settings = make_settings(
        tmp_path,
        transcription_backend="openai",
        transcription_max_upload_bytes=MAX_UPLOAD_BYTES,
        webhook_url=receiver.url,
        webhook_secret=SECRET,
    )
    fake_openai.script.extend(["429"])
    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        call_id = await record_speech_call(client, base)
        url = f"{base}/v1/recordings/{call_id}"
        status, transcript = await wait_for_document(client, f"{url}/transcript")
        assert status == 200, transcript

        # whisper-1: the caller's channel (the agent's is silent: not sent) in pieces.
        whisper = list(fake_openai.seen)
        assert [s.answered for s in whisper[:2]] == [429, 200]
        assert whisper[0].filename == whisper[1].filename == "caller-0.ogg"
        assert whisper[0].size_bytes == whisper[1].size_bytes
        assert len(whisper) >= 3  # 429 + at least two pieces
        assert [s.filename for s in whisper[1:]] == [
            f"caller-{i}.ogg" for i in range(len(whisper) - 1)
        ]
        for seen in whisper:
            assert seen.authorization == f"Bearer {API_KEY}"
            assert seen.model == "whisper-1"
            assert seen.response_format == "verbose_json"
            assert seen.size_bytes <= MAX_UPLOAD_BYTES
        assert transcript["backend"] == "openai"
        assert transcript["model"] == "whisper-1"
        segments = transcript["segments"]
        assert {s["speaker"] for s in segments} == {"caller"}
        assert segments[0]["start_s"] == pytest.approx(SPEECH_START_S, abs=0.1)
        assert [s["start_s"] for s in segments] == sorted(s["start_s"] for s in segments)
        # each piece's segments come back on the recording's time line, not the piece's
        assert all(s["text"].startswith("caller-") for s in segments)
        assert all(s["words"] for s in segments)
        async with client.get(url) as response:
            duration_s = (await response.json())["duration_ms"] / 1000
        assert segments[-1]["end_s"] <= duration_s + 0.05

        # gpt-4o-transcribe gives no timestamps: one request per turn, text on the turn.
        count = len(fake_openai.seen)
        assert await _post_transcript(client, url, {"model": "gpt-4o-transcribe"}) == 202
        status, transcript = await wait_for_document(client, f"{url}/transcript")
        assert status == 200
        [seen] = fake_openai.seen[count:]
        assert (seen.model, seen.response_format, seen.filename) == (
            "gpt-4o-transcribe",
            "json",
            "caller-0.ogg",
        )
        [segment] = transcript["segments"]
        assert segment["text"] == "caller-0 said something"
        assert segment["start_s"] == pytest.approx(SPEECH_START_S, abs=0.1)
        assert "words" not in segment

        # A second request while one is being processed is refused.
        fake_openai.script.extend(["hold"])
        assert await _post_transcript(client, url, {"language": "en"}) == 202
        await fake_openai.holding.wait()
        assert await _post_transcript(client, url, {}) == 409
        fake_openai.release.set()
        status, transcript = await wait_for_document(client, f"{url}/transcript")
        assert status == 200
        assert fake_openai.seen[-1].language == "en"

        # A permanent error: the job fails with the API's own message.
        fake_openai.script.extend(["400"])
        assert await _post_transcript(client, url, {}) == 202
        status, failed = await wait_for_document(client, f"{url}/transcript")
        assert status == 200
        assert failed["status"] == "failed"
        assert failed["error"]["code"] == "transcription_failed"
        assert "Audio file is too short to transcribe" in failed["error"]["message"]
        assert failed["error"]["details"]["http_status"] == 400
        assert fake_openai.seen[-1].answered == 400
        async with client.get(url) as response:
            manifest = await response.json()
        assert manifest["jobs"]["transcript"]["status"] == "failed"
        assert manifest["jobs"]["analysis"]["status"] == "completed"
        event = await receiver.wait_for("transcript.failed", call_id)
        completed = await receiver.wait_for_all("transcript.completed", call_id, 3)
    await receiver.stop()
    assert event.signature_ok
    assert event.event["error"]["code"] == "transcription_failed"
    assert "too short" in event.event["error"]["message"]
    assert all(c.signature_ok for c in completed)
