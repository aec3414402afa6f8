"""How fast the console's recording page is ready for a 60-minute call, in headless Chromium."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from bench_merge import decoded_duration_s, generate_channel

from mediaserver.audio.channel_peaks import read_channel_peaks
from mediaserver.audio.lossless_stereo import mux_lossless_stereo
from mediaserver.audio.peaks import build_audiowaveform_json, choose_samples_per_pixel
from mediaserver.recording.call import CallStatus
from mediaserver.recording.channel import Channel
from mediaserver.recording.manifest import ChannelReport, FileEntry, Manifest, format_utc
from mediaserver.storage_backends.keys import build_recording_keys

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import cdp
from server_harness import TOKEN, make_settings, running_server

RATE_HZ = 48000
CALL_ID = "bench-console-60min"


def store_recording(workdir: Path, store_root: Path, minutes: float) -> tuple[float, int]:
    """Put a long recording (channels, lossless stereo, peaks, manifest) in a local store."""
    left, right = (workdir / f"{name}_{minutes:g}min.opus" for name in ("left", "right"))
    for name, path in (("left", left), ("right", right)):
        if not path.exists():
            print(f"generating {path} ...")
            generate_channel(path, name, minutes)
    duration_s = decoded_duration_s(left)
    stereo = workdir / "stereo.opus"
    with left.open("rb") as lf, right.open("rb") as rf, stereo.open("wb") as out:
        mux_lossless_stereo(lf, rf, out)
    total = round(duration_s * RATE_HZ)
    spp = choose_samples_per_pixel(total)
    peaks_path = workdir / "peaks.json"
    peaks_path.write_bytes(
        build_audiowaveform_json(read_channel_peaks((left, right), spp, -(-total // spp)))
    )
    started = datetime.now(UTC)
    keys = build_recording_keys(CALL_ID, started)
    files = []
    for role, path, key, channels in (
        ("left", left, keys.left, 1),
        ("right", right, keys.right, 1),
        ("stereo", stereo, keys.merged, 2),
        ("peaks", peaks_path, keys.peaks, 2),
    ):
        target = store_root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        data = path.read_bytes()
        files.append(
            FileEntry(
                name=path.name,
                role=role,
                channels=channels,
                duration_ms=duration_s * 1000,
                size_bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                key=key,
            )
        )
    wall_ns = int(started.timestamp() * 1e9)
    manifest = Manifest(
        call_id=CALL_ID,
        status=CallStatus.STORED,
        created_at=format_utc(wall_ns),
        ended_at=format_utc(wall_ns + int(duration_s * 1e9)),
        media_started_at=format_utc(wall_ns),
        duration_ms=duration_s * 1000,
        stereo_mode="lossless",
        channels=tuple(
            ChannelReport(channel.value, channel.side, "opus", {}) for channel in Channel
        ),
        files=tuple(files),
        storage={"metadata": {"bench": "console"}},
    )
    manifest = replace(manifest, storage={**manifest.storage, "manifest_key": keys.manifest})
    (store_root / keys.manifest).write_text(manifest.to_json())
    return duration_s, peaks_path.stat().st_size


async def measure(base: str, repeats: int) -> list[dict[str, float]]:
    """Open the recording page `repeats` times (signed in); when each part of it was ready."""
    runs = []
    async with cdp.launch() as browser:
        page = await browser.new_page("bench")
        await page.goto(f"{base}/login")
        await page.type_into("[data-testid=login-token]", TOKEN)
        await page.click("[data-testid=login-submit]")
        await page.wait_for("location.pathname === '/'")
        for _ in range(repeats):
            await page.goto(f"{base}/recordings/{CALL_ID}")
            await page.wait_for(
                "document.getElementById('waveform').dataset.drawn === 'true'", timeout_s=60
            )
            marks = await page.evaluate(
                """(() => {
                    const at = (name) => performance.getEntriesByName(name)[0]?.startTime;
                    const peaks = performance.getEntriesByType('resource')
                        .find(r => r.name.endsWith('/peaks'));
                    return {
                        dom_ready_ms: performance.timing.domContentLoadedEventEnd
                            - performance.timing.navigationStart,
                        controls_ready_ms: at('console:controls-ready'),
                        waveform_drawn_ms: at('console:waveform-drawn'),
                        peaks_fetch_ms: peaks ? peaks.duration : null,
                    };
                })()"""
            )
            started = time.perf_counter()
            await page.click("[data-testid=play-button]")
            await page.wait_for(
                "document.querySelector('[data-testid=recording-audio]').currentTime > 0",
                timeout_s=30,
            )
            marks["click_to_sound_ms"] = (time.perf_counter() - started) * 1000
            await page.click("[data-testid=play-button]")
            runs.append(marks)
    return runs


async def main() -> None:
    """Store a long recording, serve it, and time the page over a few loads."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None, help="keep inputs here for reuse")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_console_"))
    workdir.mkdir(parents=True, exist_ok=True)
    server_dir = Path(tempfile.mkdtemp(prefix="bench_console_server_"))
    settings = make_settings(server_dir, log_level="error", analysis_enabled=False)
    duration_s, peaks_bytes = store_recording(workdir, Path(settings.storage_path), args.minutes)
    print(
        f"recording: {duration_s:.0f} s, peaks JSON {peaks_bytes / 1000:.1f} KB; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    async with running_server(settings) as (_, base):
        runs = await measure(base, args.repeat)
    for key in runs[0]:
        values = sorted(run[key] for run in runs if run[key] is not None)
        if values:
            median = values[len(values) // 2]
            print(f"{key:<22} median {median:8.1f} ms  (min {values[0]:.1f}, max {values[-1]:.1f})")
    shutil.rmtree(server_dir)
    if args.workdir is None:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    asyncio.run(main())
