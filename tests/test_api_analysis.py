"""The analysis and transcript API on a real server: status codes, re-runs, listing, delete."""

from pathlib import Path

import aiohttp
import pytest

from gcs_emulator import GcsEmulator, find_free_port
from server_harness import auth, make_settings, running_server
from speech_call import record_speech_call, wait_for_document


async def test_documents_status_codes_and_a_requested_transcript(tmp_path: Path) -> None:
    """404 for unknown ids, 400 for bad input, 202 then 200, a transcript on request only."""
    settings = make_settings(tmp_path, transcription_backend="none")
    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        for path in ("analysis", "transcript"):
            async with client.get(f"{base}/v1/recordings/nope/{path}") as response:
                assert response.status == 404
                assert (await response.json())["error"]["code"] == "not_found"
        async with client.post(f"{base}/v1/recordings/nope/transcript", json={}) as response:
            assert response.status == 404

        call_id = await record_speech_call(client, base)
        url = f"{base}/v1/recordings/{call_id}"
        status, analysis = await wait_for_document(client, f"{url}/analysis")
        assert status == 200
        assert analysis["call_id"] == call_id
        [span] = analysis["channels"]["caller"]["speech"]
        assert 0.45 <= span[0] <= 0.6, span
        assert analysis["channels"]["agent"]["speech"] == []
        assert analysis["channels"]["caller"]["words_per_minute"] is None

        async with client.get(f"{url}/transcript") as response:
            assert response.status == 404  # transcription_backend = none: nothing queued
            assert "POST" in (await response.json())["error"]["message"]
        async with client.get(f"{url}/transcript?format=srt") as response:
            assert response.status == 400
        for body in ({"backend": "none"}, {"speed": 2}, {"language": "not a language"}):
            async with client.post(f"{url}/transcript", json=body) as response:
                assert response.status == 400, body
        async with client.post(f"{url}/transcript", data="{") as response:
            assert response.status in (400, 415)

        async with client.post(f"{url}/transcript", json={"language": "en"}) as response:
            assert response.status == 202
            queued = await response.json()
        assert queued["status"] in ("queued", "processing")
        assert queued["params"] == {"backend": "pocketsphinx", "model": "en-us", "language": "en"}
        status, transcript = await wait_for_document(client, f"{url}/transcript")
        assert status == 200
        assert transcript["language"] == "en"
        assert any("order" in s["text"] for s in transcript["segments"]), transcript
        async with client.get(f"{url}/analysis") as response:
            analysis = await response.json()
        assert analysis["channels"]["caller"]["words_per_minute"] > 0  # updated by the transcript

        async with client.get(f"{base}/v1/recordings") as response:
            [item] = (await response.json())["items"]
        assert item["jobs"] == {"analysis": "completed", "transcript": "completed"}
        async with client.get(url) as response:
            jobs = (await response.json())["jobs"]
        assert jobs["transcript"]["params"]["backend"] == "pocketsphinx"
        assert jobs["analysis"]["attempts"] == 1

        async with client.delete(url) as response:
            assert response.status == 204
        for path in ("analysis", "transcript"):
            async with client.get(f"{url}/{path}") as response:
                assert response.status == 404
    stored = sorted(p.name for p in (tmp_path / "recordings").rglob("*") if p.is_file())
    assert stored == [], stored


async def test_a_live_call_answers_queued(tmp_path: Path) -> None:
    """While a call is recording, its analysis is 202 queued (it runs once the call is stored)."""
    async with (
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        async with client.post(f"{base}/v1/calls", json={}) as response:
            call_id = (await response.json())["call_id"]
        async with client.get(f"{base}/v1/recordings/{call_id}/analysis") as response:
            assert response.status == 202
            body = await response.json()
        assert body == {"call_id": call_id, "status": "queued", "recording": "recording"}
        async with client.post(f"{base}/v1/recordings/{call_id}/transcript", json={}) as response:
            assert response.status == 409
        async with client.delete(f"{base}/v1/calls/{call_id}") as response:
            assert response.status == 202


async def test_jobs_read_and_write_through_gcs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the GCS emulator with the real client: the jobs fetch the channels from the bucket and
    store the analysis, the transcript and the job states there."""
    with GcsEmulator(find_free_port()) as emulator:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
        settings = make_settings(
            tmp_path, storage_type="gcs", storage_path="jobs-bucket", gcs_create_bucket=True
        )
        async with (
            running_server(settings) as (_, base),
            aiohttp.ClientSession(headers=auth()) as client,
        ):
            call_id = await record_speech_call(client, base)
            url = f"{base}/v1/recordings/{call_id}"
            status, analysis = await wait_for_document(client, f"{url}/analysis")
            assert status == 200
            assert len(analysis["channels"]["caller"]["speech"]) == 1
            status, webvtt = await wait_for_document(client, f"{url}/transcript?format=vtt")
            assert status == 200
            assert "<v caller>" in webvtt
            async with client.get(f"{base}/v1/recordings") as response:
                [item] = (await response.json())["items"]
        keys = emulator.read_log()
    assert item["jobs"] == {"analysis": "completed", "transcript": "completed"}
    assert f"conversation_{call_id}_analysis.json" in keys
    assert f"conversation_{call_id}_transcript.vtt" in keys
