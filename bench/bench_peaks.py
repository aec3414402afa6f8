"""Waveform peaks of a long call: what they add to finalization, and the size of their JSON."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from bench_merge import decoded_duration_s, generate_channel

from mediaserver.audio.channel_peaks import read_channel_peaks
from mediaserver.audio.lossless_stereo import mux_lossless_stereo
from mediaserver.audio.peaks import (
    FloatPcm,
    Peaks,
    PeaksBuilder,
    build_audiowaveform_json,
    choose_samples_per_pixel,
)
from mediaserver.audio.stereo_merge import merge_stereo

RATE_HZ = 48000


class TimedPeaksBuilder(PeaksBuilder):
    """A PeaksBuilder that adds up the thread time spent in it (the merge feeds it a thread)."""

    def __init__(self, samples_per_pixel: int, channel_count: int) -> None:
        """Start at zero."""
        super().__init__(samples_per_pixel, channel_count)
        self.spent_s = 0.0

    def add(self, pcm: FloatPcm) -> None:
        """Time one add."""
        started = time.thread_time()
        super().add(pcm)
        self.spent_s += time.thread_time() - started

    def build(self) -> Peaks:
        """Time the final reduction."""
        started = time.thread_time()
        peaks = super().build()
        self.spent_s += time.thread_time() - started
        return peaks


def main() -> None:
    """Generate two speech-like channels, merge them with and without peaks, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=1, help="merges of each kind (alternated)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep inputs here for reuse")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_peaks_"))
    workdir.mkdir(parents=True, exist_ok=True)
    left, right = (workdir / f"{name}_{args.minutes:g}min.opus" for name in ("left", "right"))
    for name, path in (("left", left), ("right", right)):
        if not path.exists():
            print(f"generating {path} ...")
            generate_channel(path, name, args.minutes)
    audio_s = decoded_duration_s(left)
    total_samples = round(audio_s * RATE_HZ)
    spp = choose_samples_per_pixel(total_samples)
    print(
        f"input: 2 x {audio_s:.1f} s mono Ogg Opus; {spp} samples per point; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )

    plain_s: list[float] = []
    with_peaks_s: list[float] = []
    plain_cpu_s: list[float] = []
    with_peaks_cpu_s: list[float] = []
    in_builder_s: list[float] = []
    peaks: Peaks | None = None
    for _ in range(args.repeat):
        # Alternated, so the machine's background load falls on both alike.
        cpu_s = time.process_time()
        plain_s.append(merge_stereo(left, right, workdir / "plain.opus").elapsed_s)
        plain_cpu_s.append(time.process_time() - cpu_s)
        builder = TimedPeaksBuilder(spp, 2)
        cpu_s = time.process_time()
        merged = merge_stereo(left, right, workdir / "peaks.opus", peaks=builder)
        peaks = builder.build()
        with_peaks_cpu_s.append(time.process_time() - cpu_s)
        with_peaks_s.append(merged.elapsed_s)
        in_builder_s.append(builder.spent_s)
    assert peaks is not None
    document = build_audiowaveform_json(peaks)
    best = f"best of {args.repeat}"
    print(f"{'encode: merge without / with peaks, wall':<44} ", end="")
    print(f"{min(plain_s):8.2f} s / {min(with_peaks_s):.2f} s ({best})")
    print(f"{'encode: merge without / with peaks, CPU':<44} ", end="")
    print(f"{min(plain_cpu_s):8.2f} s / {min(with_peaks_cpu_s):.2f} s ({best})")
    print(f"{'encode: peaks work in the decode thread':<44} {min(in_builder_s):8.3f} s CPU")
    print("  (the decode thread runs beside libopus, which is two thirds of the merge; wall")
    print("   figures swing by seconds when the machine is busy)")
    print(f"{'peaks JSON':<44} {len(document) / 1000:8.1f} KB, {peaks.length} points")

    started = time.perf_counter()
    with (
        left.open("rb") as lf,
        right.open("rb") as rf,
        (workdir / "lossless.opus").open("wb") as out,
    ):
        mux_lossless_stereo(lf, rf, out)
    mux_s = time.perf_counter() - started
    cpu_before = time.process_time()
    started = time.perf_counter()
    length = -(-total_samples // spp)
    lossless_peaks = read_channel_peaks((left, right), spp, length)
    decode_s = time.perf_counter() - started
    decode_cpu_s = time.process_time() - cpu_before
    print(f"{'lossless: stereo mux (no decode)':<44} {mux_s:8.2f} s wall")
    print(
        f"{'lossless: peaks by decoding both channels':<44} {decode_s:8.2f} s wall, "
        f"{decode_cpu_s:.2f} s CPU ({threading.active_count()} threads left)"
    )
    same = (lossless_peaks.minima == peaks.minima).mean() * 100
    print(f"{'lossless vs encode peaks, points equal':<44} {same:8.1f} %")
    if args.workdir is None:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
