"""End-to-end sync: impaired RTP streams in, tone markers at their true times in the stereo file."""

import random
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from mediaserver.clock import ManualClock
from mediaserver.recording.channel import Channel
from mediaserver.recording.manifest import Manifest
from mediaserver.rtp.media_packet import MediaPacket
from mediaserver.storage_backends.local import LocalStore

from audio_oracle import RATE_HZ, assert_valid_opus, decode_ogg, find_onset, tone_amplitude
from recorder_rig import RecorderRig
from rtp_sender import Impairments, SimStream, simulate_stream

CALLER_HZ = 500.0
AGENT_HZ = 1300.0
PAYLOAD_TYPE = 111


def _wall_s(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def _record(
    tmp_path: Path, executor: object, caller: SimStream, agent: SimStream, clock: ManualClock
) -> tuple[Manifest, Path]:
    store = LocalStore(tmp_path / "store")
    recorder = RecorderRig(
        spool_root=tmp_path / "spool",
        store=store,
        executor=executor,  # type: ignore[arg-type]
        clock=clock,
    )
    await recorder.start()
    call = recorder.open_call()
    base_ns = clock.monotonic_ns()
    merged = sorted(
        [(p, Channel.CALLER) for p in caller.packets] + [(p, Channel.AGENT) for p in agent.packets],
        key=lambda item: item[0].arrival_s,
    )
    for packet, channel in merged:
        recorder.record(
            call.call_id,
            channel,
            MediaPacket(
                base_ns + round(packet.arrival_s * 1e9),
                packet.rtp_timestamp,
                packet.sequence,
                packet.ssrc,
                PAYLOAD_TYPE,
                False,
                packet.payload,
            ),
        )
    recorder.end_channel(call.call_id, Channel.AGENT)
    task = recorder.end_channel(call.call_id, Channel.CALLER)
    assert task is not None
    manifest = await task
    await recorder.close()
    assert manifest is not None
    stereo = next(f for f in manifest.files if f.role == "stereo")
    assert stereo.key is not None
    return manifest, store.root / stereo.key


def _check_markers(
    manifest: Manifest,
    stereo_path: Path,
    zero_wall_s: float,
    caller: SimStream,
    agent: SimStream,
    tolerance_s: float,
) -> list[float]:
    """Every marker is on its own channel within tolerance of its true arrival; returns errors."""
    assert_valid_opus(stereo_path)
    audio = decode_ogg(stereo_path)
    assert audio.shape[0] == 2
    start_s = _wall_s(manifest.media_started_at or "") - zero_wall_s
    errors = []
    for side, stream, freq, other_freq in (
        (0, caller, CALLER_HZ, AGENT_HZ),
        (1, agent, AGENT_HZ, CALLER_HZ),
    ):
        for true_s in stream.marker_true_s:
            expected = true_s - start_s
            onset = find_onset(audio[side], freq, expected)
            assert onset is not None, f"marker at {expected:.3f} s missing on channel {side}"
            errors.append(onset - expected)
            assert abs(onset - expected) <= tolerance_s, (side, expected, onset)
            # the other channel must not carry this marker
            assert tone_amplitude(audio[1 - side], freq, expected, 0.09) < 0.01
            assert tone_amplitude(audio[side], other_freq, expected, 0.09) < 0.01
    print(f"markers: {len(errors)}, worst error {max(abs(e) for e in errors) * 1000:.2f} ms")
    span_s = max(caller.end_true_s, agent.end_true_s) - min(caller.first_true_s, agent.first_true_s)
    assert abs(manifest.duration_ms / 1000 - span_s) <= 0.040
    assert abs(audio.shape[1] / RATE_HZ - span_s) <= 0.040
    return errors


def _scenario(duration_s: float, ppm: float, seed: int) -> tuple[SimStream, SimStream]:
    rng = random.Random(seed)
    impaired = Impairments(
        jitter_s=0.060,
        loss=0.05,
        reorder=0.02,
        duplicate=0.01,
        clock_ppm=ppm,
        ssrc_change_at_s=duration_s * 0.6,
    )
    caller_markers = list(np.arange(3.0, duration_s - 2, duration_s / 12))
    agent_markers = [m + duration_s / 24 for m in caller_markers]
    caller = simulate_stream(
        duration_s=duration_s,
        marker_times_s=[round(m / 0.02) * 0.02 for m in caller_markers],
        freq_hz=CALLER_HZ,
        start_s=0.0,
        base_delay_s=0.030,
        impairments=impaired,
        rng=rng,
    )
    silent_from = round(duration_s * 0.25 / 0.02) * 0.02
    agent_markers = [m for m in agent_markers if not silent_from - 1 <= m <= silent_from + 31]
    agent = simulate_stream(
        duration_s=duration_s - 1.0,
        marker_times_s=[round(m / 0.02) * 0.02 for m in agent_markers],
        freq_hz=AGENT_HZ,
        start_s=0.7,
        base_delay_s=0.005,
        impairments=Impairments(
            jitter_s=0.060,
            loss=0.05,
            reorder=0.02,
            duplicate=0.01,
            clock_ppm=-ppm / 2,
            silent_from_s=silent_from,
            silent_to_s=silent_from + 30.0,
        ),
        rng=rng,
    )
    return caller, agent


async def test_markers_in_place_without_drift(tmp_path: Path, process_pool: object) -> None:
    """Jitter 60 ms, 5 % loss, reorder, duplicates, SSRC change, 30 s silence: markers ±5 ms."""
    caller, agent = _scenario(duration_s=120.0, ppm=0.0, seed=7)
    clock = ManualClock()
    manifest, stereo = await _record(tmp_path, process_pool, caller, agent, clock)
    zero_wall_s = clock.wall_ns() / 1e9  # the simulation's time 0: the clock never moved
    errors = _check_markers(manifest, stereo, zero_wall_s, caller, agent, tolerance_s=0.005)
    assert len(errors) >= 18
    stats = {c.channel: c.stats for c in manifest.channels}
    assert stats["caller"]["ssrc_changes"] == 1
    assert stats["caller"]["duplicates"] == caller.duplicated
    assert stats["agent"]["duplicates"] == agent.duplicated
    assert stats["caller"]["lost"] == caller.dropped
    assert stats["agent"]["silence_inserted_ms"] >= 30_000


@pytest.mark.slow
async def test_markers_in_place_with_200ppm_drift_over_20_minutes(
    tmp_path: Path, process_pool: object
) -> None:
    """A sender 200 ppm fast for 20 minutes plus every impairment: markers within ±20 ms."""
    caller, agent = _scenario(duration_s=1200.0, ppm=200.0, seed=11)
    clock = ManualClock()
    manifest, stereo = await _record(tmp_path, process_pool, caller, agent, clock)
    zero_wall_s = clock.wall_ns() / 1e9  # the simulation's time 0: the clock never moved
    _check_markers(manifest, stereo, zero_wall_s, caller, agent, tolerance_s=0.020)
    stats = {c.channel: c.stats for c in manifest.channels}
    assert stats["caller"]["drift_corrections"] > 0
    assert 150 <= stats["caller"]["drift_ppm"] <= 250
