"""Time the call analysis of a long call against ffmpeg's silencedetect, and transcription speed."""

# The call is built as the server stores one: two mono Ogg Opus channel files over one span,
# speech packets from libopus (espeak-ng phrases, 32 kbit/s, 20 ms, as a phone or the agent
# encoder sends them) and the recorder's own silence packets in the gaps; the two sides take
# turns with pauses and now and then talk over each other. The stereo file is merged from them
# with the server's merge. Then, in the same run:
#   - ours: decode + VAD + turns/latencies/interruptions/silences, as the analysis job runs it
#     (each channel in a worker process; also with one worker, which is its CPU time);
#   - ffmpeg: `silencedetect` on the stereo file, and on the two channel files one after the
#     other (the closest thing ffmpeg has to a per-channel activity detection);
#   - transcription real-time factor: pocketsphinx on a few minutes of the call; openai when
#     OPENAI_API_KEY is set (the network and the service dominate it).

from __future__ import annotations

import argparse
import asyncio
import io
import os
import resource
import shutil
import subprocess
import tempfile
import time
import wave
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from mediaserver.analysis.report import AnalysisConfig
from mediaserver.analysis.turns import Speaker
from mediaserver.audio.ogg_opus_writer import OggOpusWriter
from mediaserver.audio.opus_silence import build_silence_packets
from mediaserver.audio.opus_toc import compute_packet_samples
from mediaserver.audio.stereo_merge import merge_stereo
from mediaserver.jobs.analysis_job import analyze_files, detect_channels_speech
from mediaserver.transcription.backend import ChannelAudio, Transcriber
from mediaserver.transcription.openai import OpenAITranscriber
from mediaserver.transcription.pocketsphinx import PocketsphinxTranscriber
from mediaserver.workers import create_process_pool, start_workers

RATE_HZ = 48000
FRAME = 960
LIBOPUS_DELAY = 312  # libopus's encoder lookahead at 48 kHz: the pre-skip of what it encodes
PHRASES = {
    "caller": (
        "Hello, I would like to check the status of my order.",
        "It is four five six seven.",
        "Yes, can I change the delivery address?",
        "Twelve Oak Street, Springfield.",
        "Could you send me the invoice by email?",
        "No, that is all, thank you.",
    ),
    "agent": (
        "Sure. Can you tell me your order number please?",
        "Thank you. Your order was shipped yesterday and should arrive on Monday.",
        "Of course. What is the new address?",
        "I have updated your address.",
        "The invoice is on its way to your inbox.",
        "Is there anything else I can help you with today?",
    ),
}
VOICES = {"caller": ("en-us", "150"), "agent": ("en-us+m3", "165")}


def speak(text: str, side: str) -> np.ndarray:
    """espeak-ng speech at 48 kHz, trimmed to its audible part."""
    voice, speed = VOICES[side]
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", speed, "--stdout", text], capture_output=True, check=True
    ).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
        pcm = np.frombuffer(reader.readframes(reader.getnframes()), np.int16)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE_HZ)
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    audio = np.concatenate(out)
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > 0.02 * np.abs(audio).max())
    return audio[loud[0] : loud[-1] + 1]


def _encoder() -> av.AudioCodecContext:
    """libopus at 32 kbit/s, 20 ms frames, VoIP: what a phone or the agent encoder sends."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = RATE_HZ
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = 32000
    codec.options = {"frame_duration": "20", "application": "voip"}
    codec.open()
    return codec


def encode(pcm: np.ndarray) -> list[bytes]:
    """20 ms libopus packets of one phrase, padded to whole packets."""
    codec = _encoder()
    padded = np.concatenate([pcm, np.zeros(-pcm.size % FRAME + FRAME, np.int16)])
    packets: list[bytes] = []
    for start in range(0, padded.size, FRAME):
        frame = av.AudioFrame.from_ndarray(
            padded[start : start + FRAME].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE_HZ
        frame.pts = start
        frame.time_base = Fraction(1, RATE_HZ)
        packets += [bytes(p) for p in codec.encode(frame)]
    packets += [bytes(p) for p in codec.encode(None)]
    return packets


def build_call(work: Path, minutes: float) -> tuple[Path, Path, float]:
    """Write the two channel files of a `minutes`-long call; return them and the agent's speech
    share. The caller's phone sends all the time (speech over a quiet background, as browsers
    and phones do); the agent's channel holds its speech and the recorder's silence packets."""
    speech = {side: [speak(text, side) for text in texts] for side, texts in PHRASES.items()}
    rng = np.random.default_rng(7)
    total = int(minutes * 60 * RATE_HZ) // FRAME * FRAME
    # A schedule of (start sample, phrase) per side: turns with 0.3-2 s answers, every tenth a
    # barge-in 1 s into the other side's phrase, now and then a 6 s silence.
    schedule: dict[str, list[tuple[int, np.ndarray]]] = {"caller": [], "agent": []}
    cursor, turn, side = RATE_HZ, 0, "caller"
    while True:
        pcm = speech[side][turn % len(speech[side])]
        length = -(-pcm.size // FRAME) * FRAME
        if cursor + length >= total:
            break
        schedule[side].append((cursor // FRAME * FRAME, pcm))
        turn += 1
        pause_s = 6.0 if turn % 30 == 15 else float(rng.uniform(0.3, 2.0))
        if turn % 10 == 0:
            cursor += RATE_HZ  # the other side starts 1 s into this phrase
        else:
            cursor += length + int(pause_s * RATE_HZ)
        side = "agent" if side == "caller" else "caller"
    left = work / "conversation_bench_left.opus"
    right = work / "conversation_bench_right.opus"
    write_continuous_channel(left, schedule["caller"], total, rng)
    talk = write_recorded_channel(right, schedule["agent"], total)
    return left, right, talk / total


def write_continuous_channel(
    path: Path, schedule: list[tuple[int, np.ndarray]], total: int, rng: np.random.Generator
) -> None:
    """A channel encoded frame by frame for its whole length: speech over quiet noise."""
    codec = _encoder()
    with path.open("wb") as out:
        writer = OggOpusWriter(out, channel_count=1, pre_skip_samples=LIBOPUS_DELAY)
        phrases = iter(schedule)
        current = next(phrases, None)
        for start in range(0, total, FRAME):
            frame_pcm = rng.normal(0, 30, FRAME)  # about -60 dBFS
            while current is not None and current[0] + current[1].size <= start:
                current = next(phrases, None)
            if current is not None and current[0] < start + FRAME:
                offset = start - current[0]
                piece = current[1][max(0, offset) : offset + FRAME]
                lead = max(0, -offset)
                frame_pcm[lead : lead + piece.size] += piece[: FRAME - lead]
            samples = np.clip(frame_pcm, -32768, 32767).astype(np.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate = RATE_HZ
            frame.pts = start
            frame.time_base = Fraction(1, RATE_HZ)
            for packet in codec.encode(frame):
                writer.write_packet(bytes(packet), FRAME)
        writer.close()


def write_recorded_channel(path: Path, schedule: list[tuple[int, np.ndarray]], total: int) -> int:
    """A channel as the recorder writes the agent's: speech packets, silence packets between."""
    talk = 0
    with path.open("wb") as out:
        writer = OggOpusWriter(out, channel_count=1, pre_skip_samples=FRAME)
        silence = build_silence_packets(FRAME)  # under the pre-skip, as the recorder writes
        position = 0
        for planned, pcm in schedule:
            start = max(planned, position)
            silence += build_silence_packets(start - position)
            for packet in silence:
                writer.write_packet(packet, compute_packet_samples(packet))
            packets = encode(pcm)
            for packet in packets:
                writer.write_packet(packet, FRAME)
            silence = []
            position = start + len(packets) * FRAME
            talk += len(packets) * FRAME
        for packet in silence + build_silence_packets(total - position):
            writer.write_packet(packet, compute_packet_samples(packet))
        writer.close()
    return talk


def child_cpu_s() -> float:
    """CPU seconds of finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_ffmpeg_silencedetect(paths: list[Path]) -> tuple[float, float, int]:
    """ffmpeg -af silencedetect over each file in turn: (wall, CPU seconds, silences found)."""
    cpu = child_cpu_s()
    started = time.perf_counter()
    found = 0
    for path in paths:
        result = subprocess.run(
            [
                "ffmpeg",
                "-nostats",
                "-hide_banner",
                "-i",
                str(path),
                "-af",
                "silencedetect=noise=-40dB:d=0.3",
                "-f",
                "null",
                "-",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        found += result.stderr.count("silence_end")
    return time.perf_counter() - started, child_cpu_s() - cpu, found


def time_ours(
    left: Path, right: Path, duration_s: float, workers: int
) -> tuple[float, dict[str, Any]]:
    """The analysis job's work on the two files with `workers` processes: (wall s, document)."""
    with create_process_pool(workers, log_level="warning") as pool:
        start_workers(pool, workers)
        started = time.perf_counter()
        document = asyncio.run(
            analyze_files(
                "bench",
                duration_s,
                {Speaker.CALLER: left, Speaker.AGENT: right},
                AnalysisConfig(),
                pool,
            )
        )
        return time.perf_counter() - started, document


def transcription_rtf(
    transcriber: Transcriber, path: Path, side: Speaker, pool: ProcessPoolExecutor
) -> float:
    """Seconds of processing per second of channel audio for one channel."""

    async def run() -> float:
        speech = (await detect_channels_speech({side: path}, AnalysisConfig(), pool))[side]
        duration_s = max((s.end_s for s in speech), default=0.0)
        started = time.perf_counter()
        channel = ChannelAudio(side, path, 0.0, tuple(speech), duration_s)
        await transcriber.transcribe(channel, "en")
        return (time.perf_counter() - started) / duration_s

    return asyncio.run(run())


def cut_minutes(source: Path, out: Path, minutes: float) -> None:
    """The first minutes of a channel file (ffmpeg stream copy, no re-encoding)."""
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-i",
            str(source),
            "-t",
            str(minutes * 60),
            "-c",
            "copy",
            str(out),
        ],
        check=True,
    )


def main() -> None:
    """Build the call, time ours against ffmpeg, time transcription; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the call")
    parser.add_argument("--transcribe-minutes", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each timing (median)")
    parser.add_argument("--work", type=Path, help="keep the files here (default: a temp dir)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"building a {args.minutes:g}-minute call in {work} ...", flush=True)
        left, right, agent_share = build_call(work, args.minutes)
        stereo = work / "conversation_bench_merged.opus"
        merge_stereo(left, right, stereo, bitrate_bps=64000, complexity=10)
        duration_s = args.minutes * 60
        print(
            f"the caller's phone sends all along; the agent talks {agent_share:.0%} of the time; "
            + ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in (left, right, stereo))
        )

        ours2, ours1, ff_stereo, ff_channels = [], [], [], []
        document: dict[str, Any] = {}
        for _ in range(args.repeats):
            wall, document = time_ours(left, right, duration_s, 2)
            ours2.append(wall)
            ours1.append(time_ours(left, right, duration_s, 1)[0])
            ff_stereo.append(time_ffmpeg_silencedetect([stereo]))
            ff_channels.append(time_ffmpeg_silencedetect([left, right]))
        ours2_s, ours1_s = float(np.median(ours2)), float(np.median(ours1))
        ffs_wall = float(np.median([w for w, _, _ in ff_stereo]))
        ffs_cpu = float(np.median([c for _, c, _ in ff_stereo]))
        ffc_wall = float(np.median([w for w, _, _ in ff_channels]))
        turns = document["turns"]
        print(
            f"\nanalysis of {args.minutes:g} min (decode + VAD + turns, latencies, interruptions, "
            f"silences), median of {args.repeats}:"
        )
        for label, wall_s in (("2 worker processes", ours2_s), ("1 worker process", ours1_s)):
            print(
                f"  ours, {label:18} : {wall_s:6.2f} s wall ({duration_s / wall_s:5.0f}x real time)"
            )
        print(
            f"  ffmpeg silencedetect, stereo file   : {ffs_wall:6.2f} s wall, {ffs_cpu:6.2f} s CPU"
            f" ({duration_s / ffs_wall:5.0f}x)"
        )
        print(
            f"  ffmpeg silencedetect, both channels : {ffc_wall:6.2f} s wall "
            f"({duration_s / ffc_wall:5.0f}x)"
        )
        print(
            f"  ratio ours(2)/ffmpeg(stereo) {ours2_s / ffs_wall:.2f}, ours(1)/ffmpeg(stereo) "
            f"{ours1_s / ffs_wall:.2f}; target < 1 and >= 300x real time"
        )
        print(
            f"  found {len(turns)} turns, "
            f"{len(document['interruptions'])} interruptions, "
            f"{len(document['silences'])} silences > 5 s; ffmpeg found "
            f"{ff_stereo[0][2]} silences > 0.3 s in the stereo mix"
        )

        print(
            f"\ntranscription real-time factor (processing s per audio s), "
            f"first {args.transcribe_minutes:g} min of the caller channel:"
        )
        clip = work / "clip.opus"
        cut_minutes(left, clip, args.transcribe_minutes)
        with create_process_pool(2, log_level="warning") as pool:
            start_workers(pool, 2)
            rtf = transcription_rtf(PocketsphinxTranscriber(pool), clip, Speaker.CALLER, pool)
            print(f"  pocketsphinx (2 worker processes): RTF {rtf:.2f} ({1 / rtf:.1f}x real time)")
            if os.environ.get("OPENAI_API_KEY"):
                rtf = transcription_rtf(OpenAITranscriber(pool), clip, Speaker.CALLER, pool)
                print(
                    f"  openai whisper-1 at {os.environ.get('OPENAI_BASE_URL', 'api.openai.com')}: "
                    f"RTF {rtf:.2f}"
                )
            else:
                print(
                    "  openai: not measured (set OPENAI_API_KEY, and OPENAI_BASE_URL for another "
                    "server; the service and the network dominate it)"
                )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
