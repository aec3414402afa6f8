"""CPU per stage of the agent path, today's code against the earlier implementation, one process.

Each stage runs on the same real audio: a caller's 20 ms Opus packets (libopus, fullband
speech-band tone) on their way to a μ-law agent, and the agent's μ-law frames on their way back
as Opus. Times are CPU seconds of this process (`time.process_time`), so other work on the
machine changes them little; the earlier implementation is rebuilt here from the calls it made
(PyAV's Opus decoder + swresample to 8 kHz, PyAV's libopus encoder at complexity 5, `json.dumps`
of each message), so both are measured in the same run.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import statistics
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import print_table
from webrtc_load import build_opus_tone_packets

from mediaserver.audio.g711 import encode_pcmu
from mediaserver.audio.libopus import (
    OpusDecoder,
    OpusFrameEncoder,
    libopus_candidates,
    libopus_version,
    open_libopus,
)
from mediaserver.audio.opus_encoder import OpusEncoder
from mediaserver.audio.transcoder import AgentAudioEncoder, CallerAudioDecoder
from mediaserver.recording.channel import Codec
from mediaserver.transports.twilio_protocol import (
    MULAW_8K,
    AgentMedia,
    build_media,
    decode_payload,
    parse_agent_message,
)

STREAM_SID = "MZ" + "0" * 32
PACKETS = 250


def per_call_us(run: Callable[[int], None], count: int, repeats: int) -> float:
    """Median CPU µs of one call of `run` (it is given the call's index)."""
    results = []
    for _ in range(repeats):
        started = time.process_time()
        for index in range(count):
            run(index)
        results.append((time.process_time() - started) / count * 1e6)
    return statistics.median(results)


class EarlierDecoder:
    """The earlier caller decoder: FFmpeg's Opus decoder at 48 kHz, then swresample to 8 kHz."""

    def __init__(self) -> None:
        self.context = av.CodecContext.create("opus", "r")
        self.context.sample_rate = 48000
        self.context.layout = "mono"
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=8000)

    def decode(self, payload: bytes) -> np.ndarray:
        """One packet to 8 kHz int16."""
        chunks = [
            out.to_ndarray().reshape(-1)
            for frame in self.context.decode(av.Packet(payload))
            for out in self.resampler.resample(frame)
        ]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def earlier_media(sequence: int, payload: bytes) -> str:
    """The earlier message builder: a nested dict through json.dumps."""
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(sequence),
            "media": {
                "track": "inbound",
                "chunk": str(sequence),
                "timestamp": str(sequence * 20),
                "payload": base64.b64encode(payload).decode("ascii"),
            },
            "streamSid": STREAM_SID,
        },
        separators=(",", ":"),
    )


def agent_pcm_of(text: str) -> np.ndarray:
    """An agent's media message to PCM, as the agent connection reads it (unchanged since)."""
    message = parse_agent_message(text, stream_sid=STREAM_SID, audio_format=MULAW_8K)
    assert isinstance(message, AgentMedia)
    return decode_payload(message.payload, MULAW_8K)


def main() -> None:
    """Time each stage both ways and print the per-call cost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    opus = build_opus_tone_packets(310.0, PACKETS)
    t = np.arange(160) / 8000
    agent_pcm = (8000 * np.sin(2 * np.pi * 400 * t)).astype(np.int16)
    agent_text = json.dumps(
        {
            "event": "media",
            "streamSid": STREAM_SID,
            "media": {"payload": base64.b64encode(encode_pcmu(agent_pcm)).decode()},
        }
    )
    caller_pcm = CallerAudioDecoder(Codec.OPUS, 8000).decode(opus[100])
    mulaw = encode_pcmu(caller_pcm)

    today_decoder = CallerAudioDecoder(Codec.OPUS, 8000)
    earlier_decoder = EarlierDecoder()
    today_encoder = AgentAudioEncoder(Codec.OPUS, 8000)
    earlier_encoder = OpusEncoder(input_rate_hz=8000, bitrate_bps=32000, complexity=5)
    earlier_encoder._context.time_base = Fraction(1, 8000)

    stages = [
        (
            "caller Opus -> agent PCM 8 kHz",
            lambda i: today_decoder.decode(opus[i % PACKETS]),
            lambda i: earlier_decoder.decode(opus[i % PACKETS]),
            50,
        ),
        ("PCM -> mu-law", lambda i: encode_pcmu(caller_pcm), lambda i: encode_pcmu(caller_pcm), 50),
        (
            "media message (base64 + JSON)",
            lambda i: build_media(
                sequence_number=i, stream_sid=STREAM_SID, chunk=i, timestamp_ms=i, payload=mulaw
            ),
            lambda i: earlier_media(i, mulaw),
            50,
        ),
        (
            "agent message -> PCM (JSON, base64, mu-law)",
            lambda i: agent_pcm_of(agent_text),
            lambda i: agent_pcm_of(agent_text),
            25,
        ),
        (
            "agent PCM -> Opus 20 ms",
            lambda i: today_encoder.encode_frame(agent_pcm),
            lambda i: earlier_encoder.encode(agent_pcm),
            25,
        ),
    ]
    rows = []
    total_today = total_earlier = 0.0
    for name, today, earlier, per_second in stages:
        today_us = per_call_us(today, 2000, args.repeats)
        earlier_us = per_call_us(earlier, 2000, args.repeats)
        total_today += today_us * per_second
        total_earlier += earlier_us * per_second
        rows.append(
            [
                name,
                per_second,
                f"{today_us:.1f}",
                f"{earlier_us:.1f}",
                f"{earlier_us / today_us:.2f}x",
            ]
        )
    print_table(["stage", "per call-second", "today us", "earlier us", "speed-up"], rows)
    print(
        f"codec and message work per call: {total_today / 1e4:.3f} % of a core today,"
        f" {total_earlier / 1e4:.3f} % before ({total_earlier / total_today:.2f}x)"
    )
    compare_libopus_builds(opus, agent_pcm, args.repeats)


def compare_libopus_builds(opus: list[bytes], agent_pcm: np.ndarray, repeats: int) -> None:
    """Decode and encode cost of each libopus build this machine has; the first is the one used."""
    rows: list[list[object]] = []
    for name in libopus_candidates():
        try:
            lib = open_libopus(name)
        except OSError:
            continue
        decode_us, encode_us = time_libopus(lib, opus, agent_pcm, repeats)
        used = "used" if not rows else ""
        rows.append([libopus_version(lib), name, f"{decode_us:.1f}", f"{encode_us:.1f}", used])
    print_table(["libopus", "library", "decode -> 8 kHz us", "encode 8 kHz us", ""], rows)


def time_libopus(
    lib: ctypes.CDLL, opus: list[bytes], agent_pcm: np.ndarray, repeats: int
) -> tuple[float, float]:
    """Median µs of one decode to 8 kHz and one 8 kHz encode with one libopus build."""
    decoder = OpusDecoder(8000, lib=lib)
    encoder = OpusFrameEncoder(8000, lib=lib)

    def decode(index: int) -> None:
        decoder.decode(opus[index % PACKETS])

    def encode(index: int) -> None:
        encoder.encode(agent_pcm)

    return per_call_us(decode, 2000, repeats), per_call_us(encode, 2000, repeats)


if __name__ == "__main__":
    main()
