"""Crash recovery: a killed recorder loses at most its flush interval; bad spools harm nothing."""

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import aiohttp
import pytest
import structlog
from crash_child import AGENT_HZ, AGENT_MARKER_S, CALLER_HZ, CALLER_MARKER_S

from mediaserver.recording.call import CallStatus
from mediaserver.recording.manifest import Manifest
from mediaserver.storage_backends.local import LocalStore

from audio_oracle import RATE_HZ, assert_valid_opus, decode_ogg, find_onset, tone_amplitude
from recorder_rig import RecorderRig
from server_harness import auth, make_settings, running_server
from speech_call import wait_for_document

CHILD_SCRIPT = Path(__file__).with_name("crash_child.py")
TIMEOUT_S = 60.0
PACKETS_PER_S = 50
# The child flushes its journals every 1.0 s, so a kill loses at most the packets fed since
# the last flush: one interval at 50 packets/s per channel.
FLUSH_LOSS_PACKETS = 50
# Extra packets the flush may be late by. The flush timer and the feeder share the child's
# event loop: when the loop stalls, both stall, and on waking the flush (its timer expired
# first) runs before the feeder's backlog. What remains is the timer's own wake-up lateness
# on a busy machine; 10 packets (200 ms) is far above it.
SCHEDULING_SLACK_PACKETS = 10
KILL_AFTER_PACKETS = 230  # 4.6 s into the call, 0.6 s after the 4th flush
CHILD_CALL_PACKETS = 500  # the call the child would make: 10 s, so the kill comes mid-call


@dataclass
class Child:
    """A running crash_child.py and the file its stderr (log lines) goes to."""

    process: asyncio.subprocess.Process
    stderr: IO[bytes]

    async def read_line(self) -> str:
        """The child's next stdout line; fails with its log if it exited."""
        assert self.process.stdout is not None
        async with asyncio.timeout(TIMEOUT_S):
            line = await self.process.stdout.readline()
        if not line:
            await self.process.wait()
            self.stderr.seek(0)
            log_text = self.stderr.read().decode(errors="replace")
            pytest.fail(f"child exited with {self.process.returncode}:\n{log_text}")
        return line.decode().strip()

    async def kill(self) -> None:
        """SIGKILL the child: no cleanup, no flush, no finalization."""
        self.process.kill()
        async with asyncio.timeout(TIMEOUT_S):
            assert await self.process.wait() == -9


@pytest.fixture
async def spawn() -> AsyncIterator[list[Child]]:
    """Children started by a test; any still alive at teardown are killed."""
    children: list[Child] = []
    yield children
    for child in children:
        if child.process.returncode is None:
            child.process.kill()
            await child.process.wait()
        child.stderr.close()


async def start_child(
    children: list[Child], tmp_path: Path, mode: str, call_id: str, packets: int
) -> Child:
    """Start crash_child.py recording one call into tmp_path/spool."""
    stderr = (tmp_path / f"child-{call_id}.log").open("w+b")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD_SCRIPT),
        mode,
        str(tmp_path / "spool"),
        str(tmp_path / "child-store"),
        call_id,
        str(packets),
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        stdin=asyncio.subprocess.DEVNULL,
    )
    child = Child(process, stderr)
    children.append(child)
    return child


async def crashed_burst_spool(
    children: list[Child], tmp_path: Path, call_id: str, packets: int
) -> tuple[int, int]:
    """Leave the spool of a killed recorder holding `packets` per channel; last payload sizes."""
    child = await start_child(children, tmp_path, "burst", call_id, packets)
    word, count, last_caller, last_agent = (await child.read_line()).split()
    assert (word, int(count)) == ("flushed", packets)
    await child.kill()
    return int(last_caller), int(last_agent)


async def recover_with_new_recorder(
    tmp_path: Path, executor: ProcessPoolExecutor, call_ids: list[str]
) -> tuple[RecorderRig, LocalStore, dict[str, Manifest | None]]:
    """Start a fresh recorder on the spool and wait for the recoveries of the given calls."""
    store = LocalStore(tmp_path / "store")
    recorder = RecorderRig(spool_root=tmp_path / "spool", store=store, executor=executor)
    await recorder.start()
    results: dict[str, Manifest | None] = {}
    async with asyncio.timeout(TIMEOUT_S):
        for call_id in call_ids:
            results[call_id] = await recorder.wait_finalized(call_id)
    return recorder, store, results


def stored(store: LocalStore, manifest: Manifest, role: str) -> Path:
    """The stored file of one role of a recording."""
    entry = next(f for f in manifest.files if f.role == role)
    assert entry.key is not None
    return store.root / entry.key


def check_tones(path: Path) -> None:
    """The caller's tone is on the left and the agent's on the right, at the child's media times."""
    audio = decode_ogg(path)
    assert audio.shape[0] == 2
    for side, freq, other, at_s in (
        (0, CALLER_HZ, AGENT_HZ, CALLER_MARKER_S),
        (1, AGENT_HZ, CALLER_HZ, AGENT_MARKER_S),
    ):
        onset = find_onset(audio[side], freq, at_s)
        assert onset is not None, f"{freq} Hz tone missing near {at_s} s"
        assert onset == pytest.approx(at_s, abs=0.02)
        assert tone_amplitude(audio[1 - side], freq, at_s, 0.09) < 0.01
        assert tone_amplitude(audio[side], other, at_s, 0.09) < 0.01


async def test_killed_mid_call_is_recovered_losing_at_most_the_flush_interval(
    tmp_path: Path, process_pool: ProcessPoolExecutor, spawn: list[Child]
) -> None:
    """A recorder SIGKILLed mid-call leaves a spool that start() stores, minus ≤ 1 s of audio."""
    child = await start_child(spawn, tmp_path, "realtime", "crashed", CHILD_CALL_PACKETS)
    fed = 0
    while fed < KILL_AFTER_PACKETS:
        fed = int(await child.read_line())
    await child.kill()
    # The child prints after recording a slot, so it had fed at least `fed` packets per channel.
    assert (tmp_path / "spool" / "crashed").is_dir()

    recorder, store, results = await recover_with_new_recorder(tmp_path, process_pool, ["crashed"])
    manifest = results["crashed"]
    assert manifest is not None
    assert manifest.status is CallStatus.RECOVERED
    assert manifest.end_reason == "recovered"
    assert recorder.stats().calls_recovered == 1
    assert not (tmp_path / "spool" / "crashed").exists()
    for role in ("left", "right", "stereo"):
        assert_valid_opus(stored(store, manifest, role))

    placed = {r.channel: r.stats["placed"] for r in manifest.channels}
    print(f"recovered after SIGKILL: fed {fed} per channel, placed {placed}")
    least_kept = fed - FLUSH_LOSS_PACKETS - SCHEDULING_SLACK_PACKETS
    for report in manifest.channels:
        assert report.stats["placed"] == report.stats["packets"], report
        assert report.stats["placed"] >= least_kept, (report.channel, fed)
    assert manifest.duration_ms >= least_kept * 1000 / PACKETS_PER_S
    stereo = stored(store, manifest, "stereo")
    assert decode_ogg(stereo).shape[1] >= least_kept * RATE_HZ // PACKETS_PER_S
    check_tones(stereo)
    await recorder.close()


async def test_torn_journal_records_are_recovered_up_to_the_last_whole_one(
    tmp_path: Path, process_pool: ProcessPoolExecutor, spawn: list[Child]
) -> None:
    """Journals cut inside a payload or a record header keep every whole record before the cut."""
    packets = 150
    last_caller, last_agent = await crashed_burst_spool(spawn, tmp_path, "torn", packets)
    spool = tmp_path / "spool" / "torn"
    assert last_caller >= 3
    caller_journal = spool / "caller.journal"
    agent_journal = spool / "agent.journal"
    # The caller loses the end of its last payload; the agent its payload and part of its header.
    await asyncio.to_thread(cut, caller_journal, 2)
    await asyncio.to_thread(cut, agent_journal, last_agent + 5)

    recorder, store, results = await recover_with_new_recorder(tmp_path, process_pool, ["torn"])
    manifest = results["torn"]
    assert manifest is not None
    assert manifest.status is CallStatus.RECOVERED
    for report in manifest.channels:
        assert (report.stats["packets"], report.stats["placed"]) == (packets - 1, packets - 1)
        assert report.stats["malformed"] == 0
    assert manifest.duration_ms == (packets - 1) * 20
    stereo = stored(store, manifest, "stereo")
    assert_valid_opus(stereo)
    assert decode_ogg(stereo).shape[1] == (packets - 1) * RATE_HZ // PACKETS_PER_S
    check_tones(stereo)
    await recorder.close()


def cut(path: Path, size_bytes: int) -> None:
    """Truncate a file by `size_bytes`, as a crash in the middle of a write would."""
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size - size_bytes)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file of a directory and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


async def test_spool_with_garbage_description_is_kept_and_does_not_block_others(
    tmp_path: Path, process_pool: ProcessPoolExecutor, spawn: list[Child]
) -> None:
    """A spool with a garbage call.json is logged and left intact; the other is still recovered."""
    await crashed_burst_spool(spawn, tmp_path, "healthy", 100)
    garbage = tmp_path / "spool" / "garbage"
    garbage.mkdir()
    (garbage / "call.json").write_bytes(b'{"call_id": \x00 not json')
    (garbage / "caller.journal").write_bytes(b"MSJ1 and then nothing sensible")
    before = snapshot(garbage)

    with structlog.testing.capture_logs() as logs:
        recorder, store, results = await recover_with_new_recorder(
            tmp_path, process_pool, ["garbage", "healthy"]
        )
    healthy = results["healthy"]
    assert healthy is not None
    assert healthy.status is CallStatus.RECOVERED
    assert_valid_opus(stored(store, healthy, "stereo"))
    assert not (tmp_path / "spool" / "healthy").exists()
    stored_manifest = json.loads(
        stored(store, healthy, "left").with_name("conversation_healthy_manifest.json").read_text()
    )
    assert stored_manifest["status"] == "recovered"

    assert results["garbage"] is None
    failures = [e for e in logs if e["event"] == "recording.build_failed"]
    assert [e["call_id"] for e in failures] == ["garbage"]
    assert "call description is malformed" in failures[0]["error"]
    assert snapshot(garbage) == before

    # Later sweeps try again and still leave it in place.
    await recorder.sweep()
    async with asyncio.timeout(TIMEOUT_S):
        assert await recorder.wait_finalized("garbage") is None
    assert snapshot(garbage) == before
    assert [i.key.rsplit("/", 1)[1] for i in await store.list_objects("recordings/")] == [
        "conversation_healthy_left.opus",
        "conversation_healthy_manifest.json",
        "conversation_healthy_merged.opus",
        "conversation_healthy_peaks.json",
        "conversation_healthy_right.opus",
    ]
    await recorder.close()


async def test_mediaserver_recover_queues_the_jobs_the_next_start_runs(
    tmp_path: Path, spawn: list[Child]
) -> None:
    """`mediaserver recover` (server stopped) stores a crashed call and queues its analysis job
    durably before it lets the spool go; the server's next start runs the job."""
    await crashed_burst_spool(spawn, tmp_path, "offline", 150)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDIASERVER_", "AUDIO_"))}
    env |= {
        "MEDIASERVER_SPOOL_PATH": str(tmp_path / "spool"),
        "MEDIASERVER_STORAGE_PATH": str(tmp_path / "recordings"),
        "MEDIASERVER_JOBS_PATH": str(tmp_path / "jobs"),
        "MEDIASERVER_TRANSCRIPTION_BACKEND": "none",
        "MEDIASERVER_LOG_FORMAT": "json",
    }
    recover = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mediaserver", "recover", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(recover.communicate(), TIMEOUT_S * 2)
    assert recover.returncode == 0, err.decode(errors="replace")
    assert out.decode().splitlines() == ["offline: recovered", "1 call(s) recovered"]
    queued = [path.name for path in (tmp_path / "jobs" / "queue").glob("*.json")]
    assert [name.split("-", 1)[1] for name in queued] == ["offline-analysis.json"]
    assert not (tmp_path / "spool" / "offline").exists()

    settings = make_settings(tmp_path, transcription_backend="none")
    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        status, analysis = await wait_for_document(client, f"{base}/v1/recordings/offline/analysis")
    assert status == 200, analysis
    assert analysis["call_id"] == "offline"
    assert analysis["duration_s"] == pytest.approx(3.0, abs=0.05)
