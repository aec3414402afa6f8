"""A simulated RTP sender: Opus packets with tone markers, sent through a bad network."""

import random
from dataclasses import dataclass, field
from functools import cache

import av
import numpy as np

RATE_HZ = 48000
FRAME_SAMPLES = 960  # 20 ms
TEMPLATE_LEAD_PACKETS = 10  # silence before the tone in a marker template, for decoder context
TEMPLATE_PACKETS = 25  # 200 ms silence, 100 ms tone, 200 ms silence
TONE_S = 0.1


@dataclass(frozen=True, slots=True)
class Impairments:
    """What the network and the sender do wrong."""

    jitter_s: float = 0.0  # extra delay, uniform in [0, jitter_s]
    loss: float = 0.0
    reorder: float = 0.0  # fraction of packets held back behind the next one or two
    duplicate: float = 0.0
    clock_ppm: float = 0.0  # sender clock error; positive: its 20 ms are shorter than ours
    ssrc_change_at_s: float | None = None  # media time of an SSRC change with a timestamp jump
    silent_from_s: float | None = None  # media time span with no packets at all
    silent_to_s: float | None = None


@dataclass(frozen=True, slots=True)
class SimPacket:
    """One packet as it reaches the server."""

    arrival_s: float
    rtp_timestamp: int
    sequence: int
    ssrc: int
    payload: bytes


@dataclass(slots=True)
class SimStream:
    """Everything one simulated sender delivered, and the truth to check the recording against."""

    packets: list[SimPacket] = field(default_factory=list)
    marker_true_s: list[float] = field(default_factory=list)  # jitter-free arrival of each tone
    first_true_s: float = 0.0
    end_true_s: float = 0.0
    sent: int = 0
    dropped: int = 0
    duplicated: int = 0


def _encoder() -> av.AudioCodecContext:
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = RATE_HZ
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = 32000
    codec.options = {"frame_duration": "20", "application": "voip"}
    codec.open()
    return codec


def _encode(signal: np.ndarray) -> list[bytes]:
    codec = _encoder()
    pcm = (signal * 32767).astype(np.int16)
    packets: list[bytes] = []
    for start in range(0, pcm.size, FRAME_SAMPLES):
        frame = av.AudioFrame.from_ndarray(
            pcm[start : start + FRAME_SAMPLES].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE_HZ
        frame.pts = start
        packets += [bytes(p) for p in codec.encode(frame)]
    packets += [bytes(p) for p in codec.encode(None)]
    return packets


@cache
def silence_payload() -> bytes:
    """An encoded 20 ms of silence after speech: a few bytes, like a real sender's quiet frames."""
    return min(marker_template(500.0), key=len)


@cache
def marker_template(freq_hz: float) -> tuple[bytes, ...]:
    """Packets: silence, a tone starting exactly at packet TEMPLATE_LEAD_PACKETS, silence."""
    lookahead = 312  # libopus's delay: shift the input so the decoded tone starts on the boundary
    signal = np.zeros(TEMPLATE_PACKETS * FRAME_SAMPLES + FRAME_SAMPLES)
    start = TEMPLATE_LEAD_PACKETS * FRAME_SAMPLES - lookahead
    t = np.arange(int(TONE_S * RATE_HZ)) / RATE_HZ
    signal[start : start + t.size] = 0.5 * np.sin(2 * np.pi * freq_hz * t)
    return tuple(_encode(signal)[:TEMPLATE_PACKETS])


def simulate_stream(
    *,
    duration_s: float,
    marker_times_s: list[float],
    freq_hz: float,
    start_s: float,
    base_delay_s: float,
    impairments: Impairments,
    rng: random.Random,
) -> SimStream:
    """Send `duration_s` of media from real time `start_s`; markers at the given media times."""
    slots = int(duration_s / 0.02)
    payloads = [silence_payload()] * slots
    protected: set[int] = set()
    template = marker_template(freq_hz)
    for marker in marker_times_s:
        onset = round(marker / 0.02)
        first = onset - TEMPLATE_LEAD_PACKETS
        payloads[first : first + TEMPLATE_PACKETS] = template
        protected.update(range(onset - 2, onset + 3))  # keep the onset itself measurable
    rate = 1 + impairments.clock_ppm * 1e-6
    stream = SimStream()
    ssrc, ts0, seq0 = rng.getrandbits(32), rng.getrandbits(32), rng.getrandbits(16)
    arrivals: list[tuple[float, int, SimPacket]] = []
    for k in range(slots):
        media_s = k * 0.02
        if (
            impairments.silent_from_s is not None
            and impairments.silent_to_s is not None
            and impairments.silent_from_s <= media_s < impairments.silent_to_s
        ):
            continue
        true_s = start_s + media_s / rate + base_delay_s
        if k == 0:
            stream.first_true_s = true_s
        stream.end_true_s = true_s + 0.02 / rate
        sequence = seq0 + stream.sent  # counts packets sent, not slots: a quiet sender skips none
        stream.sent += 1
        if k not in protected and rng.random() < impairments.loss:
            stream.dropped += 1
            continue
        changed = (
            impairments.ssrc_change_at_s is not None and media_s >= impairments.ssrc_change_at_s
        )
        packet = SimPacket(
            arrival_s=true_s + rng.uniform(0, impairments.jitter_s),
            rtp_timestamp=(ts0 + k * FRAME_SAMPLES + (0x5A5A5A5 if changed else 0)) % 2**32,
            sequence=(sequence + (7000 if changed else 0)) % 2**16,
            ssrc=(ssrc ^ 0x1234567) if changed else ssrc,
            payload=payloads[k],
        )
        if k not in protected and rng.random() < impairments.reorder:
            packet = _replace_arrival(packet, packet.arrival_s + rng.uniform(0.025, 0.045))
        arrivals.append((packet.arrival_s, k, packet))
        if k not in protected and rng.random() < impairments.duplicate:
            stream.duplicated += 1
            twin = _replace_arrival(packet, packet.arrival_s + rng.uniform(0.005, 0.03))
            arrivals.append((twin.arrival_s, k, twin))
    stream.packets = [p for _, _, p in sorted(arrivals, key=lambda item: (item[0], item[1]))]
    stream.marker_true_s = [start_s + m / rate + base_delay_s for m in marker_times_s]
    return stream


def _replace_arrival(packet: SimPacket, arrival_s: float) -> SimPacket:
    return SimPacket(arrival_s, packet.rtp_timestamp, packet.sequence, packet.ssrc, packet.payload)
