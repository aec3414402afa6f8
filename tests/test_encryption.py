"""Encryption at rest end to end: real calls, sealed storage, byte-exact playback, offline keys."""

import asyncio
import hashlib
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from mediaserver.clock import ManualClock
from mediaserver.encryption.keyring import Keyring, load_private_key
from mediaserver.finalizer import Finalizer
from mediaserver.recorder import Recorder
from mediaserver.recording.call import CallStatus, EndReason
from mediaserver.recording.spool import Spool
from mediaserver.storage_backends.envelope_store import EnvelopeStore
from mediaserver.storage_backends.local import LocalStore

from gcs_emulator import GcsEmulator, find_free_port
from operator_keys import write_key_pair
from rtp_sender import marker_template
from server_harness import auth, make_settings, running_server, wait_for_recording
from short_call import CALLER_HZ, run_call
from virtual_call import journal_tones

CHANNELS = ("stereo", "left", "right")
RUN_BYTES = 16  # "any run of its plaintext": no 16-byte window of a file is found in storage


def windows(data: bytes, size: int = RUN_BYTES) -> set[bytes]:
    """Every run of `size` bytes of `data`, at every offset."""
    return {data[i : i + size] for i in range(len(data) - size + 1)}


def find_plaintext_runs(plaintexts: list[bytes], stored: bytes) -> int:
    """How many 16-byte runs of any plaintext occur anywhere in `stored`."""
    runs = set().union(*(windows(p) for p in plaintexts))
    return sum(1 for i in range(len(stored) - RUN_BYTES + 1) if stored[i : i + RUN_BYTES] in runs)


def mediaserver(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the `mediaserver` command."""
    return subprocess.run(
        [sys.executable, "-m", "mediaserver", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )


async def fetch(client: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, bytes]:
    """GET a URL: status and body."""
    async with client.get(url, headers={**auth(), **headers}) as response:
        return response.status, await response.read()


async def wait_for_jobs(client: aiohttp.ClientSession, base: str, call_id: str) -> None:
    """Until the analysis and the transcript are served."""
    async with asyncio.timeout(90):
        for kind in ("analysis", "transcript"):
            while True:  # the API says so only when asked: poll it
                if (await fetch(client, f"{base}/v1/recordings/{call_id}/{kind}"))[0] == 200:
                    break
                await asyncio.sleep(0.2)


async def check_served_exactly(
    client: aiohttp.ClientSession, base: str, manifest: dict[str, Any]
) -> dict[str, bytes]:
    """Every channel whole (sha256 = the manifest's) and by 40 random ranges, byte-exact."""
    digests = {entry["role"]: entry["sha256"] for entry in manifest["files"]}
    served = {}
    rng = random.Random(11)
    for channel in CHANNELS:
        url = f"{base}/v1/recordings/{manifest['call_id']}/audio?channel={channel}"
        status, whole = await fetch(client, url)
        assert status == 200
        assert hashlib.sha256(whole).hexdigest() == digests[channel], channel
        for _ in range(40):
            start = rng.randrange(len(whole))
            end = min(len(whole) - 1, start + rng.randrange(1, 200_000))
            status, part = await fetch(client, url, Range=f"bytes={start}-{end}")
            assert status == 206
            assert part == whole[start : end + 1], (channel, start, end)
        status, tail = await fetch(client, url, Range="bytes=-777")
        assert tail == whole[-777:]
        served[channel] = whole
    return served


def stored_objects(root: Path, call_id: str) -> dict[str, bytes]:
    """A recording's objects as the local store holds them, by name."""
    prefix = f"conversation_{call_id}_"
    return {p.name.removeprefix(prefix): p.read_bytes() for p in root.rglob(f"{prefix}*")}


@pytest.mark.timeout(300)
async def test_encrypted_recordings_are_sealed_served_exactly_and_decrypt_offline(
    tmp_path: Path,
) -> None:
    """No stored object holds an Ogg page or a run of plaintext; the API serves every channel
    byte-exact by range; `decrypt` restores identical files; `rekey` then decrypt works."""
    public, private = write_key_pair(tmp_path, "operator")
    settings = make_settings(
        tmp_path,
        encryption="envelope",
        encryption_public_key_path=str(public),
        encryption_private_key_path=str(private),
    )
    store_root = tmp_path / "recordings"
    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession() as client,
    ):
        call_task = asyncio.create_task(run_call(client, base, auth(), seconds=3.0))
        journal = await _live_journal(tmp_path / "spool")
        call_id = await call_task
        manifest = await wait_for_recording(client, base, call_id)
        await wait_for_jobs(client, base, call_id)
        served = await check_served_exactly(client, base, manifest)
        documents = {
            kind: (await fetch(client, f"{base}/v1/recordings/{call_id}/{kind}"))[1]
            for kind in ("peaks", "analysis", "transcript")
        }
        _, vtt = await fetch(client, f"{base}/v1/recordings/{call_id}/transcript?format=vtt")

    # The journal was sealed while the call went on: no plain header, none of the caller's audio.
    assert journal[:4] == b"MSJE"
    assert b"MSJ1" not in journal
    caller_payloads = [p for p in marker_template(CALLER_HZ) if len(p) >= RUN_BYTES]
    assert find_plaintext_runs(caller_payloads, journal) == 0

    objects = stored_objects(store_root, call_id)
    sealed = {n: d for n, d in objects.items() if n not in ("manifest.json", "envelope.json")}
    assert set(sealed) == {
        "left.opus", "right.opus", "merged.opus", "peaks.json",
        "analysis.json", "transcript.json", "transcript.vtt",
    }  # fmt: skip
    assert all(len(served[channel]) > 1000 for channel in CHANNELS)
    audio = list(served.values())
    for name, data in objects.items():
        assert b"OggS" not in data, name
        assert find_plaintext_runs(audio, data) == 0, name
    # The sealed ones share no run with any plaintext, the documents' included (the manifest and
    # the envelope are plain JSON by design: they share field names with the documents).
    for name, data in sealed.items():
        assert data[:4] == b"MSE1", name
        assert find_plaintext_runs([*audio, *documents.values(), vtt], data) == 0, name

    out = tmp_path / "plain"
    result = mediaserver(
        "decrypt", "-o", str(out), "--private-key", str(private),
        "--storage-path", str(store_root), "--spool-path", str(tmp_path / "spool"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "4 file(s) match their manifest's SHA-256" in result.stdout
    decrypted = {p.name: p.read_bytes() for p in out.rglob(f"conversation_{call_id}_*")}
    prefix = f"conversation_{call_id}_"
    assert decrypted[prefix + "merged.opus"] == served["stereo"]
    assert decrypted[prefix + "left.opus"] == served["left"]
    assert decrypted[prefix + "right.opus"] == served["right"]
    assert decrypted[prefix + "transcript.vtt"] == vtt
    assert decrypted[prefix + "peaks.json"] == documents["peaks"]
    assert {p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()} == {0o600}

    new_public, new_private = write_key_pair(tmp_path, "next")
    envelope_before = objects["envelope.json"]
    rekeyed = mediaserver(
        "rekey", "--old-private-key", str(private), "--new-public-key", str(new_public),
        "--storage-path", str(store_root), "--spool-path", str(tmp_path / "spool"),
    )  # fmt: skip
    assert rekeyed.returncode == 0, rekeyed.stderr
    assert "1 data key(s) rewrapped" in rekeyed.stdout
    after = stored_objects(store_root, call_id)
    assert after["envelope.json"] != envelope_before
    assert {n: d for n, d in after.items() if n != "envelope.json"} == {
        n: d for n, d in objects.items() if n != "envelope.json"
    }  # the audio was not rewritten
    again = mediaserver(
        "rekey", "--old-private-key", str(private), "--new-public-key", str(new_public),
        "--storage-path", str(store_root), "--spool-path", str(tmp_path / "spool"),
    )  # fmt: skip
    assert "0 data key(s) rewrapped, 1 already for the new key" in again.stdout
    old_key = mediaserver(
        "decrypt", "-o", str(tmp_path / "old"), "--private-key", str(private),
        "--storage-path", str(store_root),
    )  # fmt: skip
    assert old_key.returncode != 0
    assert "mediaserver rekey" in old_key.stderr
    assert not [p for p in (tmp_path / "old").rglob("*") if p.is_file()]  # no empty or cut file
    new_out = tmp_path / "plain-new"
    new_key = mediaserver(
        "decrypt", "-o", str(new_out), "--private-key", str(new_private),
        "--storage-path", str(store_root),
    )  # fmt: skip
    assert new_key.returncode == 0, new_key.stderr
    assert (next(new_out.rglob(prefix + "merged.opus"))).read_bytes() == served["stereo"]


async def _live_journal(spool_root: Path) -> bytes:
    """A call's caller journal, read while the call is still running (after a flush or two)."""

    def read() -> bytes | None:
        journals = list(spool_root.glob("*/caller.journal"))
        if journals and journals[0].stat().st_size > 2000:
            return journals[0].read_bytes()
        return None

    async with asyncio.timeout(20):
        while True:
            journal = await asyncio.to_thread(read)
            if journal is not None:
                return journal
            await asyncio.sleep(0.1)


@pytest.mark.timeout(240)
async def test_without_the_private_key_the_api_answers_409_and_decrypt_works(
    tmp_path: Path,
) -> None:
    """A store-only server records and stores, says plainly why it cannot play; offline works;
    a delete takes every object, the data key included."""
    public, private = write_key_pair(tmp_path, "operator")
    settings = make_settings(
        tmp_path, encryption="envelope", encryption_public_key_path=str(public)
    )
    out = tmp_path / "plain"
    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession() as client,
    ):
        call_id = await run_call(client, base, auth())
        manifest = await wait_for_recording(client, base, call_id)
        answers = {}
        for path in ("audio?channel=left", "audio?channel=stereo", "peaks"):
            async with client.get(
                f"{base}/v1/recordings/{call_id}/{path}", headers=auth()
            ) as response:
                answers[path] = (response.status, await response.json())
        async with client.get(f"{base}/v1/recordings/{call_id}", headers=auth()) as response:
            assert response.status == 200  # the manifest stays readable
        result = await asyncio.to_thread(
            mediaserver,
            "decrypt", "-o", str(out), "--private-key", str(private),
            "--storage-path", str(tmp_path / "recordings"),
        )  # fmt: skip
        assert "envelope.json" in stored_objects(tmp_path / "recordings", call_id)
        async with client.delete(f"{base}/v1/recordings/{call_id}", headers=auth()) as response:
            assert response.status == 204
    unknown = mediaserver(
        "decrypt", "-o", str(tmp_path / "none"), "--private-key", str(private),
        "--call-id", "not-stored", "--storage-path", str(tmp_path / "recordings"),
    )  # fmt: skip
    assert unknown.returncode == 1
    assert "no recording not-stored in" in unknown.stderr
    mistyped = mediaserver(
        "decrypt", "-o", str(tmp_path / "none"), "--private-key", str(private),
        "--storage-path", str(tmp_path / "recordngs"),
    )  # fmt: skip
    assert mistyped.returncode == 2
    assert "recordngs is not a directory" in mistyped.stderr
    for status, body in answers.values():
        assert status == 409
        assert body["error"]["code"] == "encryption_key_unavailable"
        assert "mediaserver decrypt" in body["error"]["message"]
    assert manifest["jobs"] == {}  # nothing to analyse without the key: no jobs queued
    assert result.returncode == 0, result.stderr
    assert "4 file(s) match their manifest's SHA-256" in result.stdout
    stereo = next(out.rglob(f"conversation_{call_id}_merged.opus")).read_bytes()
    assert stereo[:4] == b"OggS"
    assert stored_objects(tmp_path / "recordings", call_id) == {}


async def test_a_crashed_calls_sealed_journals_recover_only_with_the_private_key(
    tmp_path: Path,
) -> None:
    """Journals left by a crash: a store-only server keeps the spool; `rekey` re-wraps the spool's
    data key; with the new private key it recovers, and the old one no longer opens it."""
    _, private = write_key_pair(tmp_path, "operator")
    key = load_private_key(private)
    clock = ManualClock()
    spool = Spool(tmp_path / "spool")
    recording_keys = Keyring(key.public_key())  # the process that crashes: public key only

    async def never_called(*_: Any) -> None:
        raise AssertionError("the call never ends: the process dies first")

    recorder = Recorder(
        spool=spool, on_call_ended=never_called, clock=clock, keyring=recording_keys
    )
    await recorder.start()
    call = recorder.open_call("crashed")
    journal_tones(call, clock, 1.0)
    recorder.flush()
    await recorder.close()  # what SIGKILL leaves: flushed journals, no end, no manifest

    store_only = Keyring(key.public_key())  # a new process, still without the private key
    root = tmp_path / "store"
    root.mkdir()
    stuck = Finalizer(
        spool=spool,
        store=EnvelopeStore(LocalStore(root), store_only),
        executor=None,
        keyring=store_only,
    )
    assert await stuck.recover() == ["crashed"]
    assert await stuck.wait("crashed") is None
    assert spool.call("crashed").exists()  # kept for a process that can unseal it

    new_public, new_private = write_key_pair(tmp_path, "next")
    journal_before = (spool.call("crashed").directory / "caller.journal").read_bytes()
    rekeyed = await asyncio.to_thread(
        mediaserver,
        "rekey", "--old-private-key", str(private), "--new-public-key", str(new_public),
        "--storage-path", str(root), "--spool-path", str(tmp_path / "spool"),
    )  # fmt: skip
    assert rekeyed.returncode == 0, rekeyed.stderr
    assert "1 data key(s) rewrapped, 0 already for the new key, 0 failed" in rekeyed.stdout
    assert (spool.call("crashed").directory / "caller.journal").read_bytes() == journal_before

    old = Keyring(key.public_key(), key)
    refused = Finalizer(
        spool=spool, store=EnvelopeStore(LocalStore(root), old), executor=None, keyring=old
    )
    assert await refused.recover() == ["crashed"]
    assert await refused.wait("crashed") is None  # the old key no longer opens the journals
    assert spool.call("crashed").exists()

    new_key = load_private_key(new_private)
    playing = Keyring(new_key.public_key(), new_key)
    finalizer = Finalizer(
        spool=spool,
        store=EnvelopeStore(LocalStore(root), playing),
        executor=None,
        keyring=playing,
    )
    assert await finalizer.recover() == ["crashed"]
    manifest = await finalizer.wait("crashed")
    assert manifest is not None
    assert manifest.status is CallStatus.RECOVERED
    assert manifest.duration_ms > 900
    assert not spool.call("crashed").exists()
    stored = next(root.rglob("conversation_crashed_left.opus")).read_bytes()
    assert stored[:4] == b"MSE1"
    store = EnvelopeStore(LocalStore(root), playing)
    left_key = next(f.key for f in manifest.files if f.role == "left")
    assert left_key is not None
    plain = await store.get_range(left_key)
    assert hashlib.sha256(plain).hexdigest() == next(
        f.sha256 for f in manifest.files if f.role == "left"
    )
    assert EndReason.RECOVERED.value == manifest.end_reason


@pytest.fixture(scope="module")
def emulator() -> Iterator[GcsEmulator]:
    """One GCS emulator for the module."""
    with GcsEmulator(find_free_port()) as running:
        yield running


@pytest.mark.timeout(300)
async def test_on_gcs_objects_are_sealed_served_exactly_and_decrypt_from_the_bucket(
    tmp_path: Path, emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on the GCS emulator, with kms_key_name set (which the emulator ignores)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    public, private = write_key_pair(tmp_path, "operator")
    bucket_name = f"enc-{uuid.uuid4().hex[:12]}"
    kms = "projects/p/locations/global/keyRings/recordings/cryptoKeys/audio"
    settings = make_settings(
        tmp_path,
        storage_type="gcs",
        storage_path=bucket_name,
        gcs_create_bucket=True,
        encryption="envelope",
        encryption_public_key_path=str(public),
        encryption_private_key_path=str(private),
        kms_key_name=kms,
        transcription_backend="none",
    )
    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession() as client,
    ):
        call_id = await run_call(client, base, auth())
        manifest = await wait_for_recording(client, base, call_id)
        served = await check_served_exactly(client, base, manifest)
        status, _ = await fetch(
            client, f"{base}/v1/recordings/{call_id}/audio?channel=stereo&redirect=1"
        )
        assert status == 200  # never a redirect to the bucket's sealed bytes
    gcs = storage.Client(
        project="test",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": emulator.url},
    )
    # The client asks GCS for the Cloud KMS key on every upload; the emulator ignores it (real
    # GCS would encrypt with that key and report it as the object's kmsKeyName).
    uploads = [line for line in emulator.read_log().splitlines() if "/upload/" in line]
    assert uploads
    assert all("kmsKeyName=projects%2Fp%2Flocations%2Fglobal" in line for line in uploads)
    blobs = [b for b in gcs.list_blobs(bucket_name) if call_id in b.name]
    names = {b.name.rsplit("_", 1)[-1] for b in blobs}
    assert {"left.opus", "right.opus", "merged.opus", "peaks.json", "envelope.json"} <= names
    for blob in blobs:
        data = blob.download_as_bytes()
        assert b"OggS" not in data, blob.name
        if blob.name.endswith(".opus"):
            assert data[:4] == b"MSE1"
            assert find_plaintext_runs(list(served.values()), data) == 0
    out = tmp_path / "plain"
    env = {"STORAGE_EMULATOR_HOST": emulator.url, "PATH": "/usr/bin:/bin"}
    result = mediaserver(
        "decrypt", "-o", str(out), "--private-key", str(private),
        "--storage-type", "gcs", "--storage-path", bucket_name, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "4 file(s) match their manifest's SHA-256" in result.stdout
    assert next(out.rglob("*_merged.opus")).read_bytes() == served["stereo"]
