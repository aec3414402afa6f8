"""Build a call's files from its spool: channel files, the stereo file and the manifest."""

import hashlib
import tempfile
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import structlog

from mediaserver.audio.channel_peaks import read_channel_peaks
from mediaserver.audio.g711 import decode_pcma, decode_pcmu
from mediaserver.audio.lossless_stereo import mux_lossless_stereo
from mediaserver.audio.ogg_opus_writer import OggOpusWriter
from mediaserver.audio.opus_encoder import OpusEncoder
from mediaserver.audio.opus_silence import build_silence_packets, silence_packet
from mediaserver.audio.opus_toc import compute_packet_samples
from mediaserver.audio.peaks import PeaksBuilder, build_audiowaveform_json, choose_samples_per_pixel
from mediaserver.audio.stereo_merge import merge_stereo
from mediaserver.errors import JournalError, MergeError, OpusPacketError
from mediaserver.lifecycle.policy import build_lifecycle
from mediaserver.recording.call import CallStatus
from mediaserver.recording.call_events import (
    compute_paused_spans,
    compute_skip_spans,
    describe_paused_spans,
    place_dtmf_keys,
)
from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.column_spill import ColumnSpill
from mediaserver.recording.journal import JournalHeader, read_journal_columns, read_journal_stream
from mediaserver.recording.manifest import ChannelReport, FileEntry, Manifest, format_utc
from mediaserver.recording.placement_columns import Placement
from mediaserver.recording.plan import (
    LOSSLESS_GRANULARITY,
    OPUS_RATE_HZ,
    ChannelInput,
    RecordingPlan,
)
from mediaserver.recording.spilled_runs import PACKET_ROW
from mediaserver.recording.spool import CallSpool
from mediaserver.recording.windowed_plan import (
    ChannelSpill,
    PlacedChannel,
    close_plan,
    plan_windowed,
)
from mediaserver.rtp.media_packet import MediaPacket

log = structlog.get_logger(__name__)

G711_CHUNK_SAMPLES = 8000
PACKET_CHUNK_ROWS = 8192
# A placed packet as a channel file is written: its start and duration (channel clock units)
# and its payload.
PlacedPayload = tuple[int, int, bytes]
REMUX_PRE_SKIP = 960  # one 20 ms silence packet: keeps both channels on the lossless packet grid


@dataclass(frozen=True, slots=True)
class FinalizeOptions:
    """How to build a recording's files."""

    stereo_mode: str = "encode"
    stereo_bitrate_bps: int = 64000
    stereo_complexity: int = 10
    recovered: bool = False
    end_reason: str | None = None
    # The data key the call's journals are sealed with (encryption on); None: plain journals.
    journal_key: bytes | None = field(default=None, repr=False)


DEFAULT_OPTIONS = FinalizeOptions()


def read_channel(
    spool: CallSpool, channel: Channel, codec: Codec, journal_key: bytes | None = None
) -> ChannelInput:
    """Read a channel's journal; a missing journal is a channel that sent nothing."""
    data = spool.read_journal(channel, journal_key)
    if not data:
        return ChannelInput(channel, codec, [], [], 0)
    header, records = read_journal_columns(data)
    _check_header(header, channel, codec)
    # Compact columns, not one tuple per packet: a long call's packets all sit in memory here.
    durations = array("l")
    kept = array("l")
    for index in range(len(records)):
        try:
            durations.append(_packet_duration(codec, records.payload(index)))
        except OpusPacketError:
            continue
        kept.append(index)
    malformed = len(records) - len(kept)
    packets = records if not malformed else records.select(kept)
    return ChannelInput(channel, codec, packets, durations, malformed)


def _check_header(header: JournalHeader, channel: Channel, codec: Codec) -> None:
    """Refuse a journal that is not the channel the spool says it is."""
    if header.channel is not channel or header.codec is not codec:
        raise JournalError(
            f"{channel.value} journal holds {header.channel.value}/{header.codec.value} packets"
        )


def _packet_duration(codec: Codec, payload: bytes) -> int:
    """Audio in one payload, in the codec's RTP clock units."""
    if codec is Codec.OPUS:
        return compute_packet_samples(payload)
    if not payload:
        raise OpusPacketError("empty G.711 payload")
    return len(payload)  # one byte per 8 kHz sample (RFC 3551 §4.5.14)


def write_opus_channel(
    out_path: Path,
    records: Sequence[MediaPacket],
    placements: Sequence[Placement],
    span: int,
    *,
    silence_packet_samples: int | None = None,
) -> None:
    """Remux placed Opus payloads into Ogg Opus, silence in the gaps, `span` samples long."""
    placed = ((p.start, p.duration, records[p.index].payload) for p in placements)
    write_opus_placed(out_path, placed, span, silence_packet_samples=silence_packet_samples)


def write_opus_placed(
    out_path: Path,
    placed: Iterable[PlacedPayload],
    span: int,
    *,
    silence_packet_samples: int | None = None,
) -> None:
    """Remux Opus payloads placed in time line order into Ogg Opus, silence in the gaps."""
    with out_path.open("wb") as out:
        # RTP playout starts with the first decoded sample, so the file must too: the pre-skip
        # (which opusinfo requires to be non-zero) discards exactly one leading silence packet.
        writer = OggOpusWriter(out, channel_count=1, pre_skip_samples=REMUX_PRE_SKIP)
        fill = silence_packet_samples
        _write_silence(writer, REMUX_PRE_SKIP, fill)
        cursor = 0
        for start, duration, payload in placed:
            _write_silence(writer, start - cursor, fill)
            writer.write_packet(payload, duration)
            cursor = start + duration
        _write_silence(writer, span - cursor, fill)
        writer.close()


def _write_silence(
    writer: OggOpusWriter, duration_samples: int, packet_samples: int | None
) -> None:
    """Fill a gap with packets that decode to digital silence (of one size, when given)."""
    if duration_samples <= 0:
        return
    if packet_samples is None:
        packets = build_silence_packets(duration_samples)
    else:
        packets = [silence_packet(packet_samples)] * (duration_samples // packet_samples)
    for packet in packets:
        writer.write_packet(packet, compute_packet_samples(packet))


def write_g711_channel(
    out_path: Path,
    codec: Codec,
    records: Sequence[MediaPacket],
    placements: Sequence[Placement],
    span_8k: int,
) -> None:
    """Decode placed G.711 payloads and encode them to an Ogg Opus file `span_8k` samples long."""
    placed = ((p.start, p.duration, records[p.index].payload) for p in placements)
    write_g711_placed(out_path, codec, placed, span_8k)


def write_g711_placed(
    out_path: Path, codec: Codec, placed: Iterable[PlacedPayload], span_8k: int
) -> None:
    """Decode G.711 payloads placed in time line order and encode them to Ogg Opus."""
    decode = decode_pcmu if codec is Codec.PCMU else decode_pcma
    encoder = OpusEncoder(input_rate_hz=codec.clock_rate_hz)
    with out_path.open("wb") as out:
        writer = OggOpusWriter(out, channel_count=1, pre_skip_samples=encoder.pre_skip)
        total = 0
        for chunk in _g711_pcm(decode, placed, span_8k):
            for packet in encoder.encode(chunk):
                writer.write_packet(packet.payload, packet.duration_samples)
                total += packet.duration_samples
        for packet in encoder.flush():
            writer.write_packet(packet.payload, packet.duration_samples)
            total += packet.duration_samples
        writer.close(end_trim_samples=max(0, total - encoder.pre_skip - span_8k * 6))


def _g711_pcm(
    decode: Callable[[bytes], np.ndarray], placed: Iterable[PlacedPayload], span_8k: int
) -> Iterator[np.ndarray]:
    """Yield the channel's 8 kHz PCM in order: silence for gaps, decoded payloads in place."""
    cursor = 0
    for start, duration, payload in placed:
        yield from _silence_chunks(start - cursor)
        yield decode(payload)
        cursor = start + duration
    yield from _silence_chunks(span_8k - cursor)


def _silence_chunks(samples: int) -> Iterator[np.ndarray]:
    """Zeros in bounded chunks, so a long silence never sits in memory at once."""
    while samples > 0:
        size = min(samples, G711_CHUNK_SAMPLES)
        yield np.zeros(size, dtype=np.int16)
        samples -= size


def _file_entry(path: Path, role: str, channels: int, duration_samples: int) -> FileEntry:
    """Describe a built file: size, checksum, duration."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return FileEntry(
        name=path.name,
        role=role,
        channels=channels,
        duration_ms=round(duration_samples * 1000 / OPUS_RATE_HZ, 3),
        size_bytes=path.stat().st_size,
        sha256=digest.hexdigest(),
    )


def build_recording(spool: CallSpool, options: FinalizeOptions) -> Manifest:
    """Turn a spool's journals into left, right and stereo files and a manifest (CPU-bound)."""
    started = time.perf_counter()
    call = spool.read_description()
    record = spool.read_record()  # None after a crash: the call never ended
    events = spool.read_events()
    # Packets and placements are spilled beside the journals and read back a chunk at a time,
    # so what the build holds does not grow with the call (see recording/windowed_plan.py).
    with (
        tempfile.TemporaryDirectory(prefix=".build-", dir=spool.directory) as work_name,
        ExitStack() as stack,
    ):
        work = Path(work_name)
        spills, journals = [], []
        for channel in (Channel.CALLER, Channel.AGENT):
            journal = spool.open_journal(channel, options.journal_key)
            if journal is not None:
                stack.callback(journal.close)
            path = work / f"{channel.value}.packets"
            spills.append(spill_channel(journal, channel, call.codecs[channel], path))
            journals.append(journal)
        arrivals = [s.last_arrival_ns for s in spills if len(s.packets)]
        last_ns = max(arrivals, default=call.mono_start_ns)
        end_ns = record.ended_mono_ns if record is not None else last_ns
        paused = compute_paused_spans(events, end_ns)
        plan = plan_windowed(
            spills,
            mono_start_ns=call.mono_start_ns,
            stereo_mode=options.stereo_mode,
            work=work,
            skip_spans_ns=compute_skip_spans(paused),
        )
        stack.callback(close_plan, plan)
        frame = plan.frame
        has_media, span_samples, origin_ns = frame.has_media, frame.span_samples, frame.origin_ns
        files = []
        if has_media:
            for item, journal in zip(plan.channels, journals, strict=True):
                files.append(_write_channel(spool, item, frame, journal))
        reports = [_channel_report(item, frame) for item in plan.channels]
        caller = plan.channels[0]
        dtmf = (
            tuple(
                place_dtmf_keys(events, frame, caller.source.codec, lambda: _placed_packets(caller))
            )
            if has_media
            else ()
        )
        paused_spans = tuple(describe_paused_spans(paused, frame)) if has_media else ()
    notes: list[str] = [] if record is None else list(record.notes)
    if has_media:
        peaks = PeaksBuilder(choose_samples_per_pixel(span_samples), 2)  # fed by the merge
        stereo_mode, stereo_notes = _write_stereo(spool, options, peaks)
        notes += stereo_notes
        files.append(_file_entry(spool.output_path("stereo"), "stereo", 2, span_samples))
        files.append(_write_peaks(spool, peaks, span_samples, stereo_mode))
        status = CallStatus.RECOVERED if options.recovered else CallStatus.FINALIZING
    else:
        # Nothing to listen to: the manifest alone tells what happened to the call.
        stereo_mode, status = options.stereo_mode, CallStatus.EMPTY
        notes.append("the call carried no media: no audio files were made")

    origin_wall_ns = call.wall_start_ns + (origin_ns - call.mono_start_ns)
    if record is not None:
        ended_wall_ns = record.ended_wall_ns
    else:  # a crash: the last audio is the best known end
        ended_wall_ns = origin_wall_ns + span_samples * 1_000_000_000 // OPUS_RATE_HZ
    duration_samples = span_samples if has_media else 0
    manifest = Manifest(
        call_id=call.call_id,
        status=status,
        created_at=format_utc(call.wall_start_ns),
        ended_at=format_utc(max(ended_wall_ns, call.wall_start_ns)),
        media_started_at=format_utc(origin_wall_ns) if has_media else None,
        duration_ms=round(duration_samples * 1000 / OPUS_RATE_HZ, 3),
        stereo_mode=stereo_mode,
        channels=tuple(reports),
        files=tuple(files),
        end_reason=options.end_reason,
        notes=tuple(notes),
        storage={"metadata": call.metadata},
        lifecycle=build_lifecycle(call.retention_days),
        legs={} if record is None else record.legs,
        dropped={} if record is None else record.dropped,
        latency_ms={} if record is None else record.latency_ms,
        events=dtmf,
        paused=paused_spans,
    )
    spool.write_manifest(manifest)
    log.info(
        "recording.built",
        call_id=call.call_id,
        duration_s=duration_samples / OPUS_RATE_HZ,
        stereo_mode=stereo_mode,
        elapsed_s=round(time.perf_counter() - started, 3),
    )
    return manifest


def spill_channel(
    journal: BinaryIO | None, channel: Channel, codec: Codec, path: Path
) -> ChannelSpill:
    """Read a channel's journal into a spill of its decodable packets (none if no journal)."""
    spill = ColumnSpill(path, PACKET_ROW)
    if journal is None:
        return ChannelSpill(channel, codec, spill)
    header, entries = read_journal_stream(journal)
    _check_header(header, channel, codec)
    malformed = 0
    first_ns = last_ns = None
    whole_packets = True
    pending: list[tuple[int, int, int, int, int, int, int]] = []
    for offset, packet in entries:
        try:
            duration = _packet_duration(codec, packet.payload)
        except OpusPacketError:
            malformed += 1
            continue
        arrival_ns = packet.arrival_ns
        first_ns = arrival_ns if first_ns is None else min(first_ns, arrival_ns)
        last_ns = arrival_ns if last_ns is None else max(last_ns, arrival_ns)
        whole_packets = whole_packets and duration % LOSSLESS_GRANULARITY == 0
        pending.append(
            (
                arrival_ns,
                offset,
                packet.rtp_timestamp,
                packet.ssrc,
                duration,
                packet.sequence,
                len(packet.payload),
            )
        )
        if len(pending) == PACKET_CHUNK_ROWS:
            spill.append(np.array(pending, PACKET_ROW))
            pending.clear()
    spill.append(np.array(pending, PACKET_ROW))
    return ChannelSpill(
        channel,
        codec,
        spill,
        malformed=malformed,
        first_arrival_ns=first_ns or 0,
        last_arrival_ns=last_ns or 0,
        whole_packets=whole_packets,
    )


def _write_channel(
    spool: CallSpool, item: PlacedChannel, frame: RecordingPlan, journal: BinaryIO | None
) -> FileEntry:
    """Write one channel's Ogg Opus file as planned, payloads read back from its journal."""
    source = item.source
    path = spool.output_path(source.channel.side)
    placed = _placed_payloads(item, journal)
    if source.codec is Codec.OPUS:
        # Lossless muxing pairs the channels' packets one to one: keep gaps in 20 ms packets.
        fill = LOSSLESS_GRANULARITY if item.grid == LOSSLESS_GRANULARITY else None
        write_opus_placed(path, placed, frame.span_samples, silence_packet_samples=fill)
    else:
        write_g711_placed(path, source.codec, placed, frame.span_samples // 6)
    return _file_entry(path, source.channel.side, 1, frame.span_samples)


def _placed_payloads(item: PlacedChannel, journal: BinaryIO | None) -> Iterator[PlacedPayload]:
    """Each placement's start, duration and payload, in time line order."""
    for rows in item.rows():
        if journal is None:  # no journal, no placements
            return
        for start, duration, offset, length in zip(
            rows["start"].tolist(),
            rows["duration"].tolist(),
            rows["offset"].tolist(),
            rows["length"].tolist(),
            strict=True,
        ):
            journal.seek(offset)
            yield start, duration, journal.read(length)


def _placed_packets(item: PlacedChannel) -> Iterator[tuple[int, int, int]]:
    """Each placement's start, SSRC and RTP timestamp (where DTMF keys are placed by)."""
    for rows in item.rows():
        yield from zip(
            rows["start"].tolist(),
            rows["ssrc"].tolist(),
            rows["rtp_timestamp"].tolist(),
            strict=True,
        )


def _channel_report(item: PlacedChannel, frame: RecordingPlan) -> ChannelReport:
    """A channel's placement statistics for the manifest."""
    source = item.source
    stats = asdict(item.stats)
    stats["malformed"] = source.malformed
    silence_48k = frame.span_samples - item.placed_48k
    stats["silence_inserted_ms"] = round(silence_48k * 1000 / OPUS_RATE_HZ, 3)
    if frame.cuts:
        stats["cut_at_pause_edges"] = item.cut_packets
    return ChannelReport(source.channel.value, source.channel.side, source.codec.value, stats)


def _write_stereo(
    spool: CallSpool, options: FinalizeOptions, peaks: PeaksBuilder
) -> tuple[str, list[str]]:
    """Write the stereo file; returns the mode used and any notes about it."""
    notes: list[str] = []
    stereo_path = spool.output_path("stereo")
    left, right = spool.output_path("left"), spool.output_path("right")
    stereo_mode = options.stereo_mode
    if stereo_mode == "lossless":
        try:
            with left.open("rb") as lf, right.open("rb") as rf, stereo_path.open("wb") as out:
                mux_lossless_stereo(lf, rf, out)
        except MergeError as exc:
            notes.append(f"lossless stereo not possible ({exc}); encoded instead")
            stereo_mode = "encode"
    if stereo_mode == "encode":
        merge_stereo(
            left,
            right,
            stereo_path,
            bitrate_bps=options.stereo_bitrate_bps,
            complexity=options.stereo_complexity,
            peaks=peaks,
        )
    return stereo_mode, notes


def _write_peaks(spool: CallSpool, builder: PeaksBuilder, span: int, stereo_mode: str) -> FileEntry:
    """Write the waveform peaks: the merge fed them, unless lossless stereo decoded nothing."""
    if stereo_mode == "encode":
        peaks = builder.build()
    else:
        length = -(-span // builder.samples_per_pixel)
        channels = (spool.output_path("left"), spool.output_path("right"))
        peaks = read_channel_peaks(channels, builder.samples_per_pixel, length)
    path = spool.output_path("peaks")
    path.write_bytes(build_audiowaveform_json(peaks))
    return _file_entry(path, "peaks", 2, span)
