"""The recorder end to end: refcount, contents, G.711, lossless stereo, expiry, failed uploads."""

import asyncio
import hashlib
import json
import random
import struct
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from mediaserver.audio.g711 import encode_pcma, encode_pcmu
from mediaserver.audio.ogg_opus_reader import OggOpusReader
from mediaserver.clock import ManualClock
from mediaserver.errors import CallStateError, UnknownCallError
from mediaserver.finalize import FinalizeOptions
from mediaserver.recording.call import CallStatus, EndReason
from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.manifest import Manifest
from mediaserver.rtp.media_packet import MediaPacket
from mediaserver.storage_backends.gcs import GcsStore, RetryPolicy, build_gcs_client
from mediaserver.storage_backends.local import LocalStore
from mediaserver.storage_backends.store import StoredObject

from audio_oracle import (
    RATE_HZ,
    assert_valid_opus,
    check_peaks,
    decode_ogg,
    find_onset,
    run_opusinfo,
    tone_amplitude,
)
from gcs_emulator import GcsEmulator, find_free_port
from recorder_rig import RecorderRig
from rtp_sender import Impairments, SimPacket, SimStream, simulate_stream

CALLER_HZ = 500.0
AGENT_HZ = 1300.0
OPUS_PAYLOAD_TYPE = 111
# RFC 3551 §6 table 4: static payload types of G.711.
PCMU_PAYLOAD_TYPE = 0
PCMA_PAYLOAD_TYPE = 8
G711_RATE_HZ = 8000
PACKET_S = 0.02
TIMEOUT_S = 60.0
# Short retries: an upload to a port with nothing behind it fails in well under a second.
FAST_RETRY = RetryPolicy(initial_backoff_s=0.02, max_backoff_s=0.05, deadline_s=0.3)
# libopus's encoder delay at 48 kHz: input is shifted by it so decoded tones start on time.
OPUS_LOOKAHEAD_SAMPLES = 312


# -- helpers ----------------------------------------------------------------------------------


def expected_keys(call_id: str, wall_ns: int) -> dict[str, str]:
    """The object keys a call opened at `wall_ns` must be stored under (the seed's names)."""
    day = datetime.fromtimestamp(wall_ns / 1e9, UTC)
    prefix = f"recordings/{day:%Y/%m/%d}/conversation_{call_id}"
    return {
        "left": f"{prefix}_left.opus",
        "right": f"{prefix}_right.opus",
        "stereo": f"{prefix}_merged.opus",
        "peaks": f"{prefix}_peaks.json",
        "manifest": f"{prefix}_manifest.json",
    }


def wall_s(text: str) -> float:
    """Seconds since the epoch of a manifest timestamp."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def tone_stream(
    *, duration_s: float, markers_s: list[float], freq_hz: float, start_s: float = 0.0
) -> SimStream:
    """A clean 20 ms Opus stream (no impairments) with tone markers at the given media times."""
    return simulate_stream(
        duration_s=duration_s,
        marker_times_s=markers_s,
        freq_hz=freq_hz,
        start_s=start_s,
        base_delay_s=0.0,
        impairments=Impairments(),
        rng=random.Random(f"{freq_hz}-{start_s}"),
    )


def feed(
    recorder: RecorderRig,
    call_id: str,
    packets: Iterable[tuple[Channel, SimPacket]],
    base_ns: int,
) -> int:
    """Record packets in arrival order, timestamped from `base_ns`; returns how many."""
    count = 0
    for channel, packet in sorted(packets, key=lambda item: item[1].arrival_s):
        count += recorder.record(
            call_id,
            channel,
            MediaPacket(
                base_ns + round(packet.arrival_s * 1e9),
                packet.rtp_timestamp,
                packet.sequence,
                packet.ssrc,
                OPUS_PAYLOAD_TYPE,
                False,
                packet.payload,
            ),
        )
    return count


def tagged(channel: Channel, packets: Iterable[SimPacket]) -> Iterator[tuple[Channel, SimPacket]]:
    """Packets labelled with their channel."""
    return ((channel, packet) for packet in packets)


def build_rtp(payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes) -> bytes:
    """An RTP packet with a 12-byte fixed header (RFC 3550 §5.1): V=2, no padding/extension/CSRC."""
    return struct.pack("!BBHII", 0x80, payload_type, sequence, timestamp, ssrc) + payload


def encode_opus(signal: npt.NDArray[np.float64], frame_ms: int) -> list[bytes]:
    """Encode mono 48 kHz float audio with libopus (PyAV) into packets of `frame_ms`."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = RATE_HZ
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = 32000
    codec.options = {"frame_duration": str(frame_ms), "application": "voip"}
    codec.open()
    frame_samples = RATE_HZ * frame_ms // 1000
    pcm = (signal * 32767).astype(np.int16)
    packets: list[bytes] = []
    for start in range(0, pcm.size, frame_samples):
        frame = av.AudioFrame.from_ndarray(
            pcm[start : start + frame_samples].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE_HZ
        frame.pts = start
        packets += [bytes(p) for p in codec.encode(frame)]
    packets += [bytes(p) for p in codec.encode(None)]
    return packets


def tone_signal(
    rate_hz: int, duration_s: float, freq_hz: float, from_s: float, to_s: float, shift: int = 0
) -> npt.NDArray[np.float64]:
    """Silence with a half-scale sine from `from_s` to `to_s`, moved `shift` samples early."""
    signal = np.zeros(round(duration_s * rate_hz))
    t = np.arange(round((to_s - from_s) * rate_hz)) / rate_hz
    start = round(from_s * rate_hz) - shift
    signal[start : start + t.size] = 0.5 * np.sin(2 * np.pi * freq_hz * t)
    return signal


def peak_frequency_hz(signal: npt.NDArray[np.float32], at_s: float, length_s: float) -> float:
    """The strongest frequency of a stretch of audio (Hann-windowed FFT, zero-padded)."""
    segment = signal[round(at_s * RATE_HZ) : round((at_s + length_s) * RATE_HZ)].astype(np.float64)
    size = 1 << 20
    spectrum = np.abs(np.fft.rfft(segment * np.hanning(segment.size), n=size))
    return float(np.argmax(spectrum)) * RATE_HZ / size


def sha256_hex(data: bytes) -> str:
    """SHA-256 of bytes, as the manifest writes it."""
    return hashlib.sha256(data).hexdigest()


async def wait_until(predicate: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    """Poll a condition every 10 ms until it holds; TimeoutError after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        # The recorder exposes counters, not events, for what its background loops did.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def stored_path(store: LocalStore, key: str | None) -> Path:
    """The file behind a key of a LocalStore."""
    assert key is not None
    return store.root / key


def check_marker(
    audio: npt.NDArray[np.float32],
    side: int,
    freq_hz: float,
    other_hz: float,
    expected_s: float,
    tolerance_s: float,
) -> None:
    """A tone is on its side near the expected time, and absent from the other side."""
    onset = find_onset(audio[side], freq_hz, expected_s)
    assert onset is not None, f"{freq_hz} Hz tone missing on channel {side} near {expected_s} s"
    assert abs(onset - expected_s) <= tolerance_s, (side, freq_hz, expected_s, onset)
    assert tone_amplitude(audio[1 - side], freq_hz, expected_s, 0.09) < 0.01
    assert tone_amplitude(audio[side], other_hz, expected_s, 0.09) < 0.01


class SpoolWitnessStore(LocalStore):
    """A LocalStore that notes, at each upload, whether the call's spool directory still exists."""

    def __init__(self, root: Path, spool_dir: Path) -> None:
        """Store under `root`; watch `spool_dir`."""
        super().__init__(root)
        self.spool_dir = spool_dir
        self.uploads: list[tuple[str, bool]] = []

    async def put_file(self, key: str, path: Path, *, content_type: str) -> StoredObject:
        """Note the spool's presence, then store for real."""
        spool_present = await asyncio.to_thread(self.spool_dir.is_dir)
        self.uploads.append((key, spool_present))
        return await super().put_file(key, path, content_type=content_type)


@pytest.fixture
async def recorders() -> AsyncIterator[list[RecorderRig]]:
    """Recorders a test made; each is closed at teardown (a no-op if the test closed it)."""
    made: list[RecorderRig] = []
    yield made
    for recorder in made:
        await recorder.close()


def new_recorder(made: list[RecorderRig], **kwargs: object) -> RecorderRig:
    """A recording pipeline remembered for teardown."""
    recorder = RecorderRig(**kwargs)  # type: ignore[arg-type]
    made.append(recorder)
    return recorder


# -- refcount and lifecycle -------------------------------------------------------------------


async def test_refcount_finalizes_once_after_both_channels_end(
    tmp_path: Path, process_pool: ProcessPoolExecutor, recorders: list[RecorderRig]
) -> None:
    """Agent hangup alone keeps recording; caller hangup stores 4 objects, then frees the spool."""
    clock = ManualClock()
    spool_root = tmp_path / "spool"
    call_id = "refcount-1"
    store = SpoolWitnessStore(tmp_path / "store", spool_root / call_id)
    recorder = new_recorder(
        recorders, spool_root=spool_root, store=store, executor=process_pool, clock=clock
    )
    await recorder.start()
    call = recorder.open_call(call_id, metadata={"tenant": "acme"})
    keys = expected_keys(call_id, clock.wall_ns())
    caller = tone_stream(duration_s=3.0, markers_s=[0.6, 2.4], freq_hz=CALLER_HZ)
    agent = tone_stream(duration_s=1.5, markers_s=[0.8], freq_hz=AGENT_HZ, start_s=0.2)
    base_ns = clock.monotonic_ns()
    early = [p for p in caller.packets if p.arrival_s < 1.5]
    fed = feed(
        recorder,
        call_id,
        [*tagged(Channel.AGENT, agent.packets), *tagged(Channel.CALLER, early)],
        base_ns,
    )

    assert recorder.end_channel(call_id, Channel.AGENT) is None
    assert call.open_channels == {Channel.CALLER}
    assert call.status is CallStatus.RECORDING
    assert recorder.stats().live_calls == 1
    assert await recorder.wait_finalized(call_id) is None  # nothing is being finalized
    assert (spool_root / call_id).is_dir()
    # A packet for the ended channel is counted, never journalled.
    assert feed(recorder, call_id, [(Channel.AGENT, agent.packets[-1])], base_ns) == 0
    assert call.packets_after_end == 1
    late = [p for p in caller.packets if p.arrival_s >= 1.5]
    fed += feed(recorder, call_id, tagged(Channel.CALLER, late), base_ns)
    assert recorder.stats().packets_recorded == fed == len(caller.packets) + len(agent.packets)

    task = recorder.end_channel(call_id, Channel.CALLER)
    assert task is not None
    assert call.end(Channel.CALLER, EndReason.CALLER_HANGUP) is False  # ended once only
    async with asyncio.timeout(TIMEOUT_S):
        manifest = await task
    assert manifest is not None
    assert manifest.status is CallStatus.STORED
    assert manifest.end_reason == "caller_hangup"
    assert recorder.stats().calls_finalized == 1

    # Every object was stored while the spool still existed; the spool is gone now.
    assert sorted(key for key, _ in store.uploads) == sorted(keys.values())
    assert store.uploads[-1][0] == keys["manifest"]
    assert all(spool_present for _, spool_present in store.uploads)
    assert not (spool_root / call_id).exists()
    listed = await store.list_objects("recordings/")
    assert [info.key for info in listed] == sorted(keys.values())
    for role in ("left", "right", "stereo"):
        assert_valid_opus(stored_path(store, keys[role]))
    stored_manifest = json.loads(await store.get_range(keys["manifest"]))
    assert stored_manifest["status"] == "stored"
    assert stored_manifest["storage"]["metadata"] == {"tenant": "acme"}
    reports = {c["channel"]: c["stats"] for c in stored_manifest["channels"]}
    assert reports["caller"]["packets"] == len(caller.packets)
    assert reports["agent"]["packets"] == len(agent.packets)

    # Once stored, the call is unknown: ending or feeding it again is refused.
    with pytest.raises(UnknownCallError):
        recorder.end_channel(call_id, Channel.CALLER)
    with pytest.raises(UnknownCallError):
        recorder.end_call(call_id)
    with pytest.raises(UnknownCallError):
        feed(recorder, call_id, [(Channel.CALLER, caller.packets[0])], base_ns)
    assert recorder.stats().calls_finalized == 1


async def test_unknown_invalid_and_duplicate_call_ids_are_refused(
    tmp_path: Path, recorders: list[RecorderRig]
) -> None:
    """Unknown ids raise UnknownCallError; malformed and duplicate ids raise CallStateError."""
    spool_root = tmp_path / "spool"
    recorder = new_recorder(
        recorders,
        spool_root=spool_root,
        store=LocalStore(tmp_path / "store"),
        executor=None,
        clock=ManualClock(),
    )
    packet = build_rtp(OPUS_PAYLOAD_TYPE, 1, 960, 0x1234, b"\xf8\xff\xfe")
    with pytest.raises(UnknownCallError):
        recorder.get_call("nobody")
    with pytest.raises(UnknownCallError):
        recorder.record_rtp("nobody", Channel.CALLER, packet)
    with pytest.raises(UnknownCallError):
        recorder.end_channel("nobody", Channel.AGENT)
    with pytest.raises(UnknownCallError):
        recorder.end_call("nobody")

    for bad in ["", "a/b", "../escape", ".hidden", "a b", "x" * 65, "caf\u00e9", "a.b"]:
        with pytest.raises(CallStateError, match="call id must match"):
            recorder.open_call(bad)
    assert not spool_root.exists() or list(spool_root.iterdir()) == []

    recorder.open_call("dup")
    with pytest.raises(CallStateError, match="already exists"):
        recorder.open_call("dup")
    (spool_root / "leftover").mkdir()  # a spool no live call owns, e.g. awaiting an upload
    with pytest.raises(CallStateError, match="already exists"):
        recorder.open_call("leftover")
    assert {c.call_id for c in recorder.live_calls()} == {"dup"}

    # A malformed RTP packet is counted and dropped, not journalled.
    assert recorder.record_rtp("dup", Channel.CALLER, b"\x80\x6f\x00") is False
    assert recorder.record_rtp("dup", Channel.CALLER, packet) is True
    stats = recorder.stats()
    assert (stats.packets_malformed, stats.packets_recorded) == (1, 1)


# -- contents ---------------------------------------------------------------------------------


async def test_stored_channels_carry_each_side_at_its_time_and_checksums_match(
    tmp_path: Path, process_pool: ProcessPoolExecutor, recorders: list[RecorderRig]
) -> None:
    """Caller tones sit left, agent tones right, on time; size, sha256, duration match the files."""
    clock = ManualClock()
    store = LocalStore(tmp_path / "store")
    recorder = new_recorder(
        recorders,
        spool_root=tmp_path / "spool",
        store=store,
        executor=process_pool,
        clock=clock,
    )
    call = recorder.open_call()
    caller = tone_stream(duration_s=3.5, markers_s=[1.0, 2.4], freq_hz=CALLER_HZ)
    agent = tone_stream(duration_s=3.0, markers_s=[1.2, 2.0], freq_hz=AGENT_HZ, start_s=0.5)
    zero_wall_s = clock.wall_ns() / 1e9  # the simulation's time 0; the clock never moves
    feed(
        recorder,
        call.call_id,
        [*tagged(Channel.CALLER, caller.packets), *tagged(Channel.AGENT, agent.packets)],
        clock.monotonic_ns(),
    )
    task = recorder.end_call(call.call_id)
    assert task is not None
    async with asyncio.timeout(TIMEOUT_S):
        manifest = await task
    assert manifest is not None

    assert [f.role for f in manifest.files] == ["left", "right", "stereo", "peaks"]
    for entry in manifest.files:
        data = await store.get_range(entry.key or "")
        assert (len(data), sha256_hex(data)) == (entry.size_bytes, entry.sha256)
    for entry in manifest.files[:3]:
        path = stored_path(store, entry.key)
        assert_valid_opus(path)
        audio = decode_ogg(path)
        assert audio.shape[0] == entry.channels
        assert audio.shape[1] == round(entry.duration_ms * RATE_HZ / 1000)
    span_s = max(caller.end_true_s, agent.end_true_s) - min(caller.first_true_s, agent.first_true_s)
    assert manifest.duration_ms == pytest.approx(span_s * 1000, abs=2.5)
    channel_files = (
        stored_path(store, manifest.files[0].key),
        stored_path(store, manifest.files[1].key),
    )
    check_peaks(
        stored_path(store, manifest.files[3].key).read_bytes(), channel_files, manifest.duration_ms
    )

    stereo = decode_ogg(stored_path(store, manifest.files[2].key))
    start_s = wall_s(manifest.media_started_at or "") - zero_wall_s
    for true_s in caller.marker_true_s:
        check_marker(stereo, 0, CALLER_HZ, AGENT_HZ, true_s - start_s, tolerance_s=0.005)
    for true_s in agent.marker_true_s:
        check_marker(stereo, 1, AGENT_HZ, CALLER_HZ, true_s - start_s, tolerance_s=0.005)
    left = decode_ogg(stored_path(store, manifest.files[0].key))[0]
    right = decode_ogg(stored_path(store, manifest.files[1].key))[0]
    assert find_onset(left, CALLER_HZ, caller.marker_true_s[0] - start_s) is not None
    assert find_onset(left, AGENT_HZ, agent.marker_true_s[0] - start_s) is None
    assert find_onset(right, AGENT_HZ, agent.marker_true_s[0] - start_s) is not None
    assert find_onset(right, CALLER_HZ, caller.marker_true_s[0] - start_s) is None


async def test_g711_call_is_stored_as_opus_with_tones_in_place(
    tmp_path: Path, process_pool: ProcessPoolExecutor, recorders: list[RecorderRig]
) -> None:
    """A μ-law caller and an A-law agent become valid Opus with each tone at its time and pitch."""
    clock = ManualClock()
    store = LocalStore(tmp_path / "store")
    recorder = new_recorder(
        recorders,
        spool_root=tmp_path / "spool",
        store=store,
        executor=process_pool,
        clock=clock,
    )
    call = recorder.open_call(caller_codec=Codec.PCMU, agent_codec=Codec.PCMA)
    caller_hz, agent_hz = 440.0, 1000.0
    caller_pcm = tone_signal(G711_RATE_HZ, 3.0, caller_hz, 1.0, 1.5)
    agent_pcm = tone_signal(G711_RATE_HZ, 3.0, agent_hz, 2.0, 2.5)
    samples_per_packet = round(G711_RATE_HZ * PACKET_S)
    base_ns = clock.monotonic_ns()
    for index in range(caller_pcm.size // samples_per_packet):
        chunk = slice(index * samples_per_packet, (index + 1) * samples_per_packet)
        arrival_ns = base_ns + index * 20_000_000
        for channel, pcm, encode, payload_type, ssrc in (
            (Channel.CALLER, caller_pcm, encode_pcmu, PCMU_PAYLOAD_TYPE, 0x11111111),
            (Channel.AGENT, agent_pcm, encode_pcma, PCMA_PAYLOAD_TYPE, 0x22222222),
        ):
            payload = encode((pcm[chunk] * 32767).astype(np.int16))
            rtp = build_rtp(payload_type, 100 + index, 5000 + chunk.start, ssrc, payload)
            assert recorder.record_rtp(call.call_id, channel, rtp, arrival_ns=arrival_ns)
    task = recorder.end_call(call.call_id)
    assert task is not None
    async with asyncio.timeout(TIMEOUT_S):
        manifest = await task
    assert manifest is not None
    assert [c.codec for c in manifest.channels] == ["pcmu", "pcma"]

    files = {f.role: stored_path(store, f.key) for f in manifest.files}
    for entry in manifest.files[:3]:
        assert_valid_opus(files[entry.role])
        assert decode_ogg(files[entry.role]).shape[1] == round(entry.duration_ms * RATE_HZ / 1000)
    assert manifest.duration_ms == pytest.approx(3000, abs=2.5)
    left = decode_ogg(files["left"])[0]
    right = decode_ogg(files["right"])[0]
    stereo = decode_ogg(files["stereo"])
    assert stereo.shape[0] == 2
    for signal in (left, stereo[0]):
        onset = find_onset(signal, caller_hz, 1.0)
        assert onset == pytest.approx(1.0, abs=0.01)
        assert peak_frequency_hz(signal, 1.1, 0.3) == pytest.approx(caller_hz, abs=2.0)
        assert find_onset(signal, agent_hz, 2.0) is None
    for signal in (right, stereo[1]):
        onset = find_onset(signal, agent_hz, 2.0)
        assert onset == pytest.approx(2.0, abs=0.01)
        assert peak_frequency_hz(signal, 2.1, 0.3) == pytest.approx(agent_hz, abs=2.0)
        assert find_onset(signal, caller_hz, 1.0) is None


# -- lossless stereo --------------------------------------------------------------------------


async def record_lossless_call(
    tmp_path: Path,
    executor: ProcessPoolExecutor,
    made: list[RecorderRig],
    caller: list[tuple[int, bytes]],
    agent: list[tuple[int, bytes]],
    agent_start_s: float = 0.0,
) -> tuple[Manifest, LocalStore]:
    """Record (rtp_timestamp offset, payload) packets of both channels in lossless stereo mode."""
    clock = ManualClock()
    store = LocalStore(tmp_path / "store")
    recorder = new_recorder(
        made,
        spool_root=tmp_path / "spool",
        store=store,
        executor=executor,
        clock=clock,
        options=FinalizeOptions(stereo_mode="lossless"),
    )
    call = recorder.open_call()
    base_ns = clock.monotonic_ns()
    timed = [
        (offset / RATE_HZ, Channel.CALLER, seq, offset, payload)
        for seq, (offset, payload) in enumerate(caller)
    ] + [
        (agent_start_s + offset / RATE_HZ, Channel.AGENT, seq, offset, payload)
        for seq, (offset, payload) in enumerate(agent)
    ]
    for arrival_s, channel, seq, offset, payload in sorted(timed, key=lambda item: item[0]):
        recorder.record(
            call.call_id,
            channel,
            MediaPacket(
                base_ns + round(arrival_s * 1e9),
                1000 + offset,
                seq,
                0xAAAA if channel is Channel.CALLER else 0xBBBB,
                OPUS_PAYLOAD_TYPE,
                False,
                payload,
            ),
        )
    task = recorder.end_call(call.call_id)
    assert task is not None
    async with asyncio.timeout(TIMEOUT_S):
        manifest = await task
    assert manifest is not None
    return manifest, store


def framed(packets: list[bytes], frame_samples: int) -> list[tuple[int, bytes]]:
    """Packets with their RTP timestamp offsets."""
    return [(index * frame_samples, packet) for index, packet in enumerate(packets)]


def marker_packets(freq_hz: float, at_s: float, frame_ms: int) -> list[bytes]:
    """3 s of Opus with a 100 ms tone at `at_s`, in packets of `frame_ms`."""
    signal = tone_signal(RATE_HZ, 3.0, freq_hz, at_s, at_s + 0.1, OPUS_LOOKAHEAD_SAMPLES)
    return encode_opus(signal, frame_ms)[: 3000 // frame_ms]


async def test_lossless_stereo_muxes_both_channels_without_reencoding(
    tmp_path: Path, process_pool: ProcessPoolExecutor, recorders: list[RecorderRig]
) -> None:
    """Lossless mode muxes 2 uncoupled streams (mapping family 1), each side in place."""
    caller = framed(marker_packets(CALLER_HZ, 1.0, 20), 960)
    agent = framed(marker_packets(AGENT_HZ, 2.0, 20), 960)
    manifest, store = await record_lossless_call(tmp_path, process_pool, recorders, caller, agent)
    assert manifest.stereo_mode == "lossless"
    assert manifest.notes == ()
    merged = stored_path(store, manifest.files[2].key)
    assert_valid_opus(merged)
    report = run_opusinfo(merged).stdout
    assert "Channel Mapping Family: 1" in report
    assert "Streams: 2, Coupled: 0" in report
    with merged.open("rb") as handle:
        head = OggOpusReader(handle).head
    assert (head.channel_count, head.mapping_family, head.stream_count, head.coupled_count) == (
        2,
        1,
        2,
        0,
    )
    audio = decode_ogg(merged)
    assert audio.shape == (2, round(manifest.duration_ms * RATE_HZ / 1000))
    check_marker(audio, 0, CALLER_HZ, AGENT_HZ, 1.0, tolerance_s=0.005)
    check_marker(audio, 1, AGENT_HZ, CALLER_HZ, 2.0, tolerance_s=0.005)
    # Lossless stereo decodes nothing, so its peaks come from a decode of their own.
    channel_files = (
        stored_path(store, manifest.files[0].key),
        stored_path(store, manifest.files[1].key),
    )
    check_peaks(
        stored_path(store, manifest.files[3].key).read_bytes(), channel_files, manifest.duration_ms
    )


async def test_lossless_stereo_falls_back_to_encoding_when_packets_differ(
    tmp_path: Path, process_pool: ProcessPoolExecutor, recorders: list[RecorderRig]
) -> None:
    """10 ms caller packets and a 20 ms agent cannot be muxed: encoded, and the notes say why."""
    caller = framed(marker_packets(CALLER_HZ, 1.0, 10), 480)
    agent = framed(marker_packets(AGENT_HZ, 2.0, 20), 960)
    manifest, store = await record_lossless_call(tmp_path, process_pool, recorders, caller, agent)
    assert manifest.stereo_mode == "encode"
    assert len(manifest.notes) == 1
    assert "lossless stereo not possible" in manifest.notes[0]
    assert "encoded instead" in manifest.notes[0]
    merged = stored_path(store, manifest.files[2].key)
    assert_valid_opus(merged)
    audio = decode_ogg(merged)
    assert audio.shape[0] == 2
    check_marker(audio, 0, CALLER_HZ, AGENT_HZ, 1.0, tolerance_s=0.005)
    check_marker(audio, 1, AGENT_HZ, CALLER_HZ, 2.0, tolerance_s=0.005)


async def test_lossless_stereo_survives_an_agent_that_starts_later(
    tmp_path: Path, process_pool: ProcessPoolExecutor, recorders: list[RecorderRig]
) -> None:
    """Two 20 ms channels stay lossless when the agent starts 300 ms after the caller."""
    caller = framed(marker_packets(CALLER_HZ, 1.0, 20), 960)
    agent = framed(marker_packets(AGENT_HZ, 1.5, 20), 960)
    manifest, _ = await record_lossless_call(
        tmp_path, process_pool, recorders, caller, agent, agent_start_s=0.3
    )
    assert manifest.notes == ()
    assert manifest.stereo_mode == "lossless"


# -- expiry -----------------------------------------------------------------------------------


def feed_silence(
    recorder: RecorderRig, call_id: str, start_ns: int, count: int, first_index: int = 0
) -> None:
    """`count` 20 ms packets per channel of quiet Opus, arriving every 20 ms from `start_ns`."""
    stream = tone_stream(
        duration_s=(first_index + count) * PACKET_S, markers_s=[], freq_hz=CALLER_HZ
    )
    for offset, packet in enumerate(stream.packets[first_index:]):
        for channel in Channel:
            recorder.record(
                call_id,
                channel,
                MediaPacket(
                    start_ns + offset * 20_000_000,
                    packet.rtp_timestamp,
                    packet.sequence,
                    packet.ssrc,
                    OPUS_PAYLOAD_TYPE,
                    False,
                    packet.payload,
                ),
            )


async def test_sweep_expires_idle_calls_only(
    tmp_path: Path, process_pool: ProcessPoolExecutor, recorders: list[RecorderRig]
) -> None:
    """A call idle beyond the retention is ended and stored as expired; a busy one is left alone."""
    clock = ManualClock()
    store = LocalStore(tmp_path / "store")
    recorder = new_recorder(
        recorders,
        spool_root=tmp_path / "spool",
        store=store,
        executor=process_pool,
        clock=clock,
        retention_s=2.0,
    )
    await recorder.start()
    assert await recorder.sweep() == 0  # nothing to do: harmless
    idle = recorder.open_call("idle")
    busy = recorder.open_call("busy")
    feed_silence(recorder, "idle", clock.monotonic_ns(), 50)
    feed_silence(recorder, "busy", clock.monotonic_ns(), 50)
    clock.advance(1.0)

    clock.advance(1.5)
    assert await recorder.sweep() == 0  # both idle for 1.52 s, under the retention
    clock.advance(1.0)
    feed_silence(recorder, "busy", clock.monotonic_ns(), 1, first_index=50)
    assert await recorder.sweep() == 1

    assert {c.call_id for c in recorder.live_calls()} == {"busy"}
    assert busy.status is CallStatus.RECORDING
    assert idle.status is CallStatus.FINALIZING
    assert idle.open_channels == set()
    assert recorder.stats().calls_expired == 1
    async with asyncio.timeout(TIMEOUT_S):
        manifest = await recorder.wait_finalized("idle")
    assert manifest is not None
    assert manifest.status is CallStatus.STORED
    assert manifest.end_reason == "expired"
    keys = expected_keys("idle", idle.wall_start_ns)
    assert [i.key for i in await store.list_objects("recordings/")] == sorted(keys.values())
    assert_valid_opus(stored_path(store, keys["stereo"]))
    assert not (tmp_path / "spool" / "idle").exists()

    assert await recorder.sweep() == 0  # already expired calls are not counted twice
    assert recorder.stats().calls_expired == 1
    assert recorder.get_call("busy") is busy


async def test_sweep_loop_expires_an_idle_call_by_itself(
    tmp_path: Path, process_pool: ProcessPoolExecutor, recorders: list[RecorderRig]
) -> None:
    """With a 50 ms sweep interval the started recorder expires and stores an idle call alone."""
    clock = ManualClock()
    store = LocalStore(tmp_path / "store")
    recorder = new_recorder(
        recorders,
        spool_root=tmp_path / "spool",
        store=store,
        executor=process_pool,
        clock=clock,
        retention_s=60.0,
        sweep_interval_s=0.05,
    )
    await recorder.start()
    call = recorder.open_call("forgotten")
    feed_silence(recorder, call.call_id, clock.monotonic_ns(), 25)
    keys = expected_keys(call.call_id, call.wall_start_ns)
    manifest_path = stored_path(store, keys["manifest"])
    clock.advance(61.0)
    async with asyncio.timeout(TIMEOUT_S):
        # Virtual time: the sweeper wakes once per 50 ms of it; nothing else moves the clock.
        while recorder.stats().calls_expired == 0:
            await clock.run_for(0.05)
            await asyncio.sleep(0.01)

    await wait_until(manifest_path.exists)
    await wait_until(lambda: not (tmp_path / "spool" / call.call_id).exists())
    stored = json.loads(manifest_path.read_text())
    assert (stored["status"], stored["end_reason"]) == ("stored", "expired")
    assert recorder.live_calls() == []


# -- upload failure ---------------------------------------------------------------------------


def gcs_store(port: int, bucket: str) -> GcsStore:
    """A GcsStore on the emulator endpoint at `port`, retrying briefly."""
    client = build_gcs_client({"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"})
    return GcsStore(
        bucket, client=client, retry_policy=FAST_RETRY, request_timeout_s=5.0, owns_client=True
    )


def list_bucket(port: int, bucket: str) -> dict[str, bytes]:
    """Every object of a bucket and its bytes, read with a plain client (the oracle)."""
    client = storage.Client(
        project="test",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": f"http://127.0.0.1:{port}"},
    )
    return {blob.name: blob.download_as_bytes() for blob in client.list_blobs(bucket)}


async def record_short_call(recorder: RecorderRig, call_id: str) -> Manifest:
    """Record 1 s of both channels and wait for the finalization's result."""
    recorder.open_call(call_id)
    feed_silence(recorder, call_id, recorder.clock.monotonic_ns(), 50)
    task = recorder.end_call(call_id)
    assert task is not None
    async with asyncio.timeout(TIMEOUT_S):
        manifest = await task
    assert manifest is not None
    return manifest


def check_kept_after_failure(spool_dir: Path, manifest: Manifest) -> None:
    """The spool holds the built files and a manifest that says the upload failed."""
    assert manifest.status is CallStatus.UPLOAD_FAILED
    for name in ("left.opus", "right.opus", "merged.opus", "caller.journal", "agent.journal"):
        assert (spool_dir / name).is_file(), name
    assert json.loads((spool_dir / "manifest.json").read_text())["status"] == "upload_failed"


def check_bucket_holds(port: int, bucket: str, manifest: Manifest, call_id: str) -> None:
    """The bucket has the 4 files and the manifest, the files matching the manifest's checksums."""
    objects = list_bucket(port, bucket)
    keys = expected_keys(call_id, int(wall_s(manifest.created_at) * 1e9))
    assert sorted(objects) == sorted(keys.values())
    for entry in manifest.files:
        assert entry.key is not None
        assert sha256_hex(objects[entry.key]) == entry.sha256
    assert json.loads(objects[keys["manifest"]])["status"] == "stored"


async def test_failed_upload_is_kept_and_delivered_by_a_later_sweep(
    tmp_path: Path, process_pool: ProcessPoolExecutor, recorders: list[RecorderRig]
) -> None:
    """With GCS unreachable the spool stays as upload_failed; once GCS is up a sweep delivers it."""
    port, bucket = find_free_port(), "recordings-sweep"
    store = gcs_store(port, bucket)
    spool_root = tmp_path / "spool"
    recorder = new_recorder(
        recorders, spool_root=spool_root, store=store, executor=process_pool, clock=ManualClock()
    )
    failed = await record_short_call(recorder, "unlucky")
    check_kept_after_failure(spool_root / "unlucky", failed)
    assert recorder.stats().uploads_failed == 1

    with GcsEmulator(port, default_bucket=bucket):
        assert await recorder.sweep() == 0
        async with asyncio.timeout(TIMEOUT_S):
            delivered = await recorder.wait_finalized("unlucky")
        assert delivered is not None
        assert delivered.status is CallStatus.STORED
        assert not (spool_root / "unlucky").exists()
        await asyncio.to_thread(check_bucket_holds, port, bucket, delivered, "unlucky")
    assert recorder.stats().uploads_failed == 1
    await store.close()


async def test_failed_upload_is_delivered_by_a_restarted_recorder(
    tmp_path: Path, process_pool: ProcessPoolExecutor, recorders: list[RecorderRig]
) -> None:
    """A new recorder on the spool of one whose upload failed delivers the files at start()."""
    port, bucket = find_free_port(), "recordings-restart"
    spool_root = tmp_path / "spool"
    first_store = gcs_store(port, bucket)
    first = new_recorder(
        recorders,
        spool_root=spool_root,
        store=first_store,
        executor=process_pool,
        clock=ManualClock(),
    )
    failed = await record_short_call(first, "stranded")
    check_kept_after_failure(spool_root / "stranded", failed)
    await first.close()
    await first_store.close()

    with GcsEmulator(port, default_bucket=bucket):
        second_store = gcs_store(port, bucket)
        second = new_recorder(
            recorders,
            spool_root=spool_root,
            store=second_store,
            executor=process_pool,
            clock=ManualClock(),
        )
        await second.start()
        async with asyncio.timeout(TIMEOUT_S):
            delivered = await second.wait_finalized("stranded")
        assert delivered is not None
        assert delivered.status is CallStatus.STORED
        assert delivered.end_reason == "caller_hangup"
        assert [f.sha256 for f in delivered.files] == [f.sha256 for f in failed.files]
        assert second.stats().calls_recovered == 0  # the built files were reused, not rebuilt
        assert not (spool_root / "stranded").exists()
        await asyncio.to_thread(check_bucket_holds, port, bucket, delivered, "stranded")
        await second.close()
        await second_store.close()


# -- shutdown ---------------------------------------------------------------------------------


async def test_close_ends_live_calls_as_shutdown_and_stores_them(
    tmp_path: Path, process_pool: ProcessPoolExecutor, recorders: list[RecorderRig]
) -> None:
    """close() ends every live call with end_reason shutdown, stores it, then refuses new calls."""
    clock = ManualClock()
    store = LocalStore(tmp_path / "store")
    spool_root = tmp_path / "spool"
    recorder = new_recorder(
        recorders, spool_root=spool_root, store=store, executor=process_pool, clock=clock
    )
    await recorder.start()
    for call_id in ("live-a", "live-b"):
        recorder.open_call(call_id)
        feed_silence(recorder, call_id, clock.monotonic_ns(), 50)
    recorder.end_channel("live-b", Channel.AGENT)

    await recorder.close(drain_timeout_s=TIMEOUT_S)

    assert recorder.live_calls() == []
    assert recorder.stats().calls_finalized == 2
    for call_id in ("live-a", "live-b"):
        keys = expected_keys(call_id, clock.wall_ns())
        stored = json.loads(await store.get_range(keys["manifest"]))
        assert (stored["status"], stored["end_reason"]) == ("stored", "shutdown")
        assert_valid_opus(stored_path(store, keys["stereo"]))
        assert not (spool_root / call_id).exists()
    with pytest.raises(CallStateError, match="shutting down"):
        recorder.open_call("too-late")
