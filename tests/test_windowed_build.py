"""A long, messy call built the windowed way gives exactly what whole-call placement gives."""

# build_recording places packets spilled to disk a chunk at a time. The reference here is the
# whole-call path kept beside it (read_channel, plan_recording, write_opus_channel): every
# channel's statistics, the keys and pauses on the time line, the length, and every Ogg packet
# and granule of both channel files must be the same.

from __future__ import annotations

import random
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from mediaserver.audio.ogg_opus_reader import OggOpusReader
from mediaserver.finalize import (
    FinalizeOptions,
    build_recording,
    read_channel,
    write_g711_channel,
    write_opus_channel,
)
from mediaserver.recording.call_events import (
    compute_paused_spans,
    compute_skip_spans,
    describe_paused_spans,
    place_dtmf_events,
)
from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.journal import JournalHeader, JournalWriter
from mediaserver.recording.plan import LOSSLESS_GRANULARITY, OPUS_RATE_HZ, plan_recording
from mediaserver.recording.spool import CallDescription, CallSpool
from mediaserver.rtp.media_packet import MediaPacket

MS = 1_000_000
S = 1_000_000_000
START_NS = 5_000 * S
SECONDS = 420  # 21,000 packets a channel: several chunks of the windowed passes
PAUSE_NS = (START_NS + 200 * S, START_NS + 212 * S)  # paused with pause_behavior "skip"


def opus_payloads(seconds: float, freq_hz: float) -> list[bytes]:
    """Real libopus packets (PyAV) of a tone that comes and goes, 20 ms each."""
    context = av.CodecContext.create("libopus", "w")
    context.sample_rate = OPUS_RATE_HZ
    context.layout = "mono"
    context.format = "s16"
    context.bit_rate = 24000
    context.options = {"frame_duration": "20"}
    context.open()
    t = np.arange(int(seconds * OPUS_RATE_HZ)) / OPUS_RATE_HZ
    gate = (np.sin(2 * np.pi * 0.5 * t) > 0).astype(np.float64)
    pcm = (np.sin(2 * np.pi * freq_hz * t) * gate * 8000).astype(np.int16)
    packets: list[bytes] = []
    for start in range(0, pcm.size - 960 + 1, 960):
        frame = av.AudioFrame.from_ndarray(
            pcm[start : start + 960].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = OPUS_RATE_HZ
        frame.pts = start
        frame.time_base = Fraction(1, OPUS_RATE_HZ)
        packets += [bytes(packet) for packet in context.encode(frame)]
    return packets


def messy_channel(
    rng: random.Random, payloads: list[bytes], codec: Codec, *, drift_ppm: float, lag_ns: int
) -> list[MediaPacket]:
    """A call's packets in arrival order: loss, DTX, jitter, reorders, duplicates, SSRC changes,
    a timestamp jump, a receiver stall, drift, and nothing while paused."""
    rate = codec.clock_rate_hz
    step = rate // 50
    ssrc, sequence, timestamp = 0x1111, 65_400, (1 << 32) - 40 * step  # both wrap early on
    sent: list[tuple[int, MediaPacket]] = []
    carried = 0.0
    for index in range(SECONDS * 50):
        send_ns = START_NS + lag_ns + index * 20 * MS
        if index == SECONDS * 50 // 3:  # a new SSRC with numbers of its own
            ssrc, sequence, timestamp = 0x2222, rng.randrange(1 << 16), rng.randrange(1 << 32)
        if index == SECONDS * 50 // 2:  # the sender's clock jumps
            timestamp = (timestamp + 7_000_000) % (1 << 32)
        sequence = (sequence + 1) % (1 << 16)
        # The sender's clock runs `drift_ppm` fast: whole units, the fraction carried on.
        advance = step * (1 + drift_ppm * 1e-6) + carried
        carried = advance - round(advance)
        timestamp = (timestamp + round(advance)) % (1 << 32)
        if PAUSE_NS[0] <= send_ns < PAUSE_NS[1]:
            continue  # paused: never journalled
        second = index // 50
        if 60 <= second < 63 or rng.random() < 0.02:
            continue  # a burst of loss, and scattered loss
        dtx = 90 <= second < 96
        if dtx and index % 20:
            continue  # DTX: one small packet every 400 ms
        payload = payloads[index % len(payloads)]
        if dtx:
            payload = payload[:3] if codec is Codec.OPUS else payload
        delay_ns = 30 * MS + int(rng.expovariate(1 / (4 * MS)))
        if rng.random() < 0.003:
            delay_ns += 350 * MS  # late: dropped as late or placed late
        if 150 <= second < 151:
            delay_ns += (50 - index % 50) * 20 * MS  # a receiver stall: all held until 151 s
        packet = MediaPacket(send_ns + delay_ns, timestamp, sequence, ssrc, 0, False, payload)
        sent.append((packet.arrival_ns, packet))
        if rng.random() < 0.005:
            duplicate = packet._replace(arrival_ns=packet.arrival_ns + 3 * MS)
            sent.append((duplicate.arrival_ns, duplicate))
    sent.sort(key=lambda item: item[0])
    packets = [packet for _, packet in sent]
    for at in range(5, len(packets) - 1, 97):  # neighbours swapped on the wire
        packets[at], packets[at + 1] = packets[at + 1], packets[at]
    return packets


def write_spool(directory: Path, codecs: dict[Channel, Codec]) -> CallSpool:
    """A spool of a long call ended by a crash (no record): journals and events."""
    rng = random.Random(20)
    spool = CallSpool(directory / "call")
    spool.create(CallDescription("call", START_NS, START_NS, codecs, {}))
    opus = opus_payloads(10.0, 500.0)
    g711 = [bytes(rng.randrange(256) for _ in range(160)) for _ in range(50)]
    for channel, drift_ppm, lag_ns in ((Channel.CALLER, 0.0, 0), (Channel.AGENT, 350.0, 7 * MS)):
        codec = codecs[channel]
        payloads = opus if codec is Codec.OPUS else g711
        packets = messy_channel(rng, payloads, codec, drift_ppm=drift_ppm, lag_ns=lag_ns)
        with spool.journal_path(channel).open("wb") as handle:
            writer = JournalWriter(handle, JournalHeader(channel, codec, START_NS, START_NS))
            for packet in packets:
                writer.append(packet)
    caller = messy_channel(random.Random(20), opus, Codec.OPUS, drift_ppm=0.0, lag_ns=0)
    pressed = caller[len(caller) * 3 // 4]
    spool.append_event({"type": "pause", "at_ns": PAUSE_NS[0], "behavior": "skip"})
    spool.append_event({"type": "resume", "at_ns": PAUSE_NS[1]})
    spool.append_event(
        {
            "type": "dtmf",
            "digit": "7",
            "rtp_timestamp": pressed.rtp_timestamp,
            "ssrc": pressed.ssrc,
            "duration_ms": 160.0,
            "ended_ns": pressed.arrival_ns + 200 * MS,
        }
    )
    spool.append_event(
        {"type": "dtmf", "digit": "#", "duration_ms": 100.0, "ended_ns": START_NS + 300 * S}
    )
    return spool


def ogg_packets(path: Path) -> list[tuple[bytes, int | None]]:
    """Every audio packet of an Ogg Opus file with its granule (the serial number aside)."""
    with path.open("rb") as handle:
        return list(OggOpusReader(handle))


@pytest.mark.parametrize(
    ("caller_codec", "stereo_mode"),
    [(Codec.OPUS, "encode"), (Codec.OPUS, "lossless"), (Codec.PCMU, "encode")],
)
def test_windowed_build_equals_whole_call_placement(
    tmp_path: Path, caller_codec: Codec, stereo_mode: str
) -> None:
    codecs = {Channel.CALLER: caller_codec, Channel.AGENT: Codec.OPUS}
    spool = write_spool(tmp_path, codecs)
    events = spool.read_events()

    # The whole-call reference: every packet and placement in memory.
    inputs = [read_channel(spool, channel, codecs[channel]) for channel in codecs]
    last_ns = max(p.arrival_ns for i in inputs for p in i.packets)
    paused = compute_paused_spans(events, last_ns)
    plan = plan_recording(
        inputs,
        mono_start_ns=START_NS,
        stereo_mode=stereo_mode,
        skip_spans_ns=compute_skip_spans(paused),
    )
    assert plan.cuts, "the pause with pause_behavior skip cuts the time line"
    expected_reports = []
    for item in plan.channels:
        stats: dict[str, Any] = asdict(item.timeline.stats)
        stats["malformed"] = item.input.malformed
        placed = sum(
            p.duration * OPUS_RATE_HZ // item.input.codec.clock_rate_hz
            for p in item.timeline.placements
        )
        stats["silence_inserted_ms"] = round((plan.span_samples - placed) * 1000 / OPUS_RATE_HZ, 3)
        stats["cut_at_pause_edges"] = item.cut_packets
        expected_reports.append(stats)
    caller_stats, agent_stats = expected_reports
    # The capture is as messy as it claims.
    assert caller_stats["ssrc_changes"] == 1
    assert caller_stats["timestamp_jumps"] == 1
    assert caller_stats["duplicates"] > 0
    assert caller_stats["reordered"] > 0
    assert caller_stats["lost"] > 0
    assert caller_stats["silence_ms"] > 3000
    assert agent_stats["drift_corrections"] > 0
    assert agent_stats["drift_ppm"] != 0
    assert caller_stats["late_dropped"] + agent_stats["late_dropped"] > 0
    reference = tmp_path / "reference"
    reference.mkdir()
    for item in plan.channels:
        path = reference / item.input.channel.side
        if item.input.codec is Codec.OPUS:
            fill = LOSSLESS_GRANULARITY if item.grid == LOSSLESS_GRANULARITY else None
            write_opus_channel(
                path,
                item.input.packets,
                item.timeline.placements,
                plan.span_samples,
                silence_packet_samples=fill,
            )
        else:
            write_g711_channel(
                path,
                item.input.codec,
                item.input.packets,
                item.timeline.placements,
                plan.span_samples // 6,
            )

    manifest = build_recording(spool, FinalizeOptions(stereo_mode=stereo_mode))

    assert [report.stats for report in manifest.channels] == expected_reports
    assert list(manifest.events) == place_dtmf_events(events, plan)
    assert list(manifest.paused) == describe_paused_spans(paused, plan)
    assert manifest.duration_ms == round(plan.span_samples * 1000 / OPUS_RATE_HZ, 3)
    assert manifest.stereo_mode == stereo_mode
    for side in ("left", "right"):
        assert ogg_packets(spool.output_path(side)) == ogg_packets(reference / side)
    assert not list(spool.directory.glob(".build-*")), "the build's spills are removed"
