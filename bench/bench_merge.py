"""Time the stereo merge of two long mono Ogg Opus files against the ffmpeg CLI doing the same."""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import av

from mediaserver.audio.opus_encoder import OPUS_RATE_HZ
from mediaserver.audio.stereo_merge import merge_stereo

# Speech-like channels: a voiced tone plus pink noise, talking for a few seconds out of every
# seven; the right channel talks while the left one listens, as in a call.
_CHANNEL_FILTERS = {
    "left": "volume='if(lt(mod(t,7),3),0.5,0.02)':eval=frame",
    "right": "volume='if(lt(mod(t,7),3),0.02,0.5)':eval=frame",
}
_CHANNEL_TONES_HZ = {"left": 220, "right": 330}


def generate_channel(path: Path, name: str, minutes: float) -> None:
    """Encode a speech-like mono channel file with the ffmpeg CLI (libopus, 32 kbit/s)."""
    duration_s = minutes * 60
    rate_and_duration = f"sample_rate={OPUS_RATE_HZ}:duration={duration_s}"
    tone = f"sine=frequency={_CHANNEL_TONES_HZ[name]}:{rate_and_duration}"
    noise = f"anoisesrc=color=pink:amplitude=0.1:{rate_and_duration}"
    graph = f"[0][1]amix=inputs=2:normalize=0,{_CHANNEL_FILTERS[name]}[a]"
    command = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", tone, "-f", "lavfi", "-i", noise]
    command += ["-filter_complex", graph, "-map", "[a]", "-ac", "1", "-c:a", "libopus"]
    command += ["-b:a", "32k", str(path)]
    subprocess.run(command, check=True)


def decoded_duration_s(path: Path) -> float:
    """Decode a file with PyAV and return its length in seconds (pre-skip excluded)."""
    with av.open(str(path)) as container:
        samples = sum(frame.samples for frame in container.decode(audio=0))
    return samples / OPUS_RATE_HZ


def time_ffmpeg(
    left: Path, right: Path, out: Path, *, bitrate_bps: int, complexity: int
) -> tuple[float, float]:
    """Run the reference ffmpeg CLI merge; return its (wall, CPU) seconds."""
    graph = (
        f"[0:a]aresample={OPUS_RATE_HZ}[l];[1:a]aresample={OPUS_RATE_HZ}[r];"
        "[l][r]join=inputs=2:channel_layout=stereo[a]"
    )
    command = ["ffmpeg", "-v", "error", "-y", "-i", str(left), "-i", str(right)]
    command += ["-filter_complex", graph, "-map", "[a]", "-c:a", "libopus"]
    command += ["-b:a", str(bitrate_bps), "-compression_level", str(complexity)]
    command += ["-frame_duration", "20", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started_s = time.perf_counter()
    subprocess.run(command, check=True)
    wall_s = time.perf_counter() - started_s
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall_s, cpu_s


def time_ours(
    left: Path, right: Path, out: Path, *, bitrate_bps: int, complexity: int
) -> tuple[float, float]:
    """Run merge_stereo in this process; return its (wall, CPU) seconds."""
    cpu_started_s = time.process_time()
    result = merge_stereo(left, right, out, bitrate_bps=bitrate_bps, complexity=complexity)
    return result.elapsed_s, time.process_time() - cpu_started_s


def time_lossless(left: Path, right: Path, out: Path) -> float | None:
    """Time the lossless two-stream mux if that module exists yet; None otherwise."""
    try:
        module = importlib.import_module("mediaserver.audio.lossless_stereo")
    except ImportError:
        return None
    mux = getattr(module, "mux_lossless_stereo", None)
    if mux is None:
        return None
    started_s = time.perf_counter()
    with left.open("rb") as left_file, right.open("rb") as right_file, out.open("wb") as out_file:
        mux(left_file, right_file, out_file)
    return time.perf_counter() - started_s


def print_figure(label: str, wall_s: float, cpu_s: float | None, audio_s: float) -> None:
    """Print one timing line: wall seconds, multiple of real time, CPU seconds."""
    cpu = "" if cpu_s is None else f"  (CPU {cpu_s:.2f} s, {audio_s / cpu_s:.1f}x)"
    print(f"{label:<36} {wall_s:8.2f} s  {audio_s / wall_s:9.1f}x real time{cpu}")


def main() -> None:
    """Generate inputs (cached in --workdir), time every merge path, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--bitrate", type=int, default=64000, help="stereo bit rate, bit/s")
    parser.add_argument("--complexity", type=int, default=10, help="libopus complexity 0..10")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; medians printed")
    parser.add_argument("--workdir", type=Path, default=None, help="keep inputs here for reuse")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_merge_"))
    workdir.mkdir(parents=True, exist_ok=True)
    left = workdir / f"left_{args.minutes:g}min.opus"
    right = workdir / f"right_{args.minutes:g}min.opus"
    for name, path in (("left", left), ("right", right)):
        if not path.exists():
            print(f"generating {path} ...")
            generate_channel(path, name, args.minutes)
    audio_s = decoded_duration_s(left)
    print(
        f"input: 2 x {audio_s:.1f} s mono Ogg Opus; output {args.bitrate} bit/s, "
        f"complexity {args.complexity}, 20 ms frames; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    settings = {"bitrate_bps": args.bitrate, "complexity": args.complexity}
    ours: list[tuple[float, float]] = []
    theirs: list[tuple[float, float]] = []
    for _ in range(args.repeat):
        # Alternating the two spreads the machine's background load over both.
        ours.append(time_ours(left, right, workdir / "ours.opus", **settings))
        theirs.append(time_ffmpeg(left, right, workdir / "ffmpeg.opus", **settings))
    ours_wall_s, ours_cpu_s = (statistics.median(column) for column in zip(*ours, strict=True))
    theirs_wall_s, theirs_cpu_s = (
        statistics.median(column) for column in zip(*theirs, strict=True)
    )
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print_figure("merge_stereo (PyAV, in-process)", ours_wall_s, ours_cpu_s, audio_s)
    print_figure("ffmpeg CLI", theirs_wall_s, theirs_cpu_s, audio_s)
    print(f"{'ratio ours/ffmpeg, wall (target <= 1)':<36} {ours_wall_s / theirs_wall_s:8.2f}")
    print(f"{'ratio ours/ffmpeg, CPU':<36} {ours_cpu_s / theirs_cpu_s:8.2f}")
    print(f"{'peak RSS of this process':<36} {peak_rss_mb:8.1f} MB")
    lossless_s = time_lossless(left, right, workdir / "lossless.opus")
    if lossless_s is None:
        print("lossless stereo mux: mediaserver.audio.lossless_stereo not available")
    else:
        print_figure("lossless stereo mux (target >= 2000x)", lossless_s, None, audio_s)
    if args.workdir is None:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
