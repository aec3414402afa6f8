"""Turn a capture of a call's two RTP streams into the same files and manifest as a live call."""

# A capture is read twice, packet by packet, so memory stays flat however long it is: a first
# pass finds the streams (counts, payload types, a few payloads to tell the codec), a second
# writes the chosen two straight into journals, as a live call would have. The recording is then
# built from the journals exactly as the server builds a live call's.

import ipaddress
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

import dpkt

from mediaserver.audio.opus_toc import compute_packet_samples
from mediaserver.errors import OpusPacketError, PcapImportError, RtpParseError
from mediaserver.excerpt import excerpt
from mediaserver.finalize import DEFAULT_OPTIONS, FinalizeOptions, build_recording
from mediaserver.recording.call import CallStatus
from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.journal import JournalHeader, JournalWriter
from mediaserver.recording.manifest import Manifest
from mediaserver.recording.spool import CallDescription, CallSpool
from mediaserver.rtp.media_packet import MediaPacket
from mediaserver.rtp.packet import is_rtcp, parse_rtp_header
from mediaserver.storage_backends.keys import build_file_name

MIN_STREAM_PACKETS = 5  # fewer valid RTP packets than this from one source is noise, not a stream
SAMPLE_PAYLOADS = 20  # payloads kept per stream to tell its codec
PROGRESS_EVERY_PACKETS = 5000
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"

Address = tuple[str, int]
StreamKey = tuple[Address, Address]
# Told how far a pass has read: its name, bytes read so far, and the capture's size.
Progress = Callable[[str, int, int], None]


class _Sourced(Protocol):
    """A stream that knows its source address."""

    @property
    def source(self) -> Address:
        """Who sent it."""
        ...


_Stream = TypeVar("_Stream", bound=_Sourced)


@dataclass(slots=True)
class RtpStream:
    """Every RTP packet one source address sent to one destination."""

    source: Address
    destination: Address
    packets: list[MediaPacket] = field(default_factory=list)

    @property
    def payload_type(self) -> int:
        """The most common payload type of the stream."""
        counts: dict[int, int] = {}
        for packet in self.packets:
            counts[packet.payload_type] = counts.get(packet.payload_type, 0) + 1
        return max(counts, key=counts.__getitem__)


@dataclass(slots=True)
class StreamSummary:
    """What the first pass learns of one stream: no packets kept but a few payloads."""

    source: Address
    destination: Address
    packet_count: int = 0
    first_arrival_ns: int = 0
    payload_type_counts: dict[int, int] = field(default_factory=dict)
    sample_payloads: list[bytes] = field(default_factory=list)

    @property
    def payload_type(self) -> int:
        """The most common payload type of the stream."""
        counts = self.payload_type_counts
        return max(counts, key=counts.__getitem__)

    @property
    def key(self) -> StreamKey:
        """Source and destination."""
        return self.source, self.destination

    def add(self, packet: MediaPacket) -> None:
        """Count one packet of the stream."""
        if not self.packet_count:
            self.first_arrival_ns = packet.arrival_ns
        self.packet_count += 1
        counts = self.payload_type_counts
        counts[packet.payload_type] = counts.get(packet.payload_type, 0) + 1
        if len(self.sample_payloads) < SAMPLE_PAYLOADS:
            self.sample_payloads.append(packet.payload)


def parse_address(text: str) -> Address:
    """Parse `IP:PORT` (IPv6 as `[addr]:port`)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise PcapImportError(f"address {excerpt(text)} is not IP:PORT") from None
    if not sep or not 0 < number < 65536:
        raise PcapImportError(f"address {excerpt(text)} is not IP:PORT")
    return host, number


def _open_reader(stream: BinaryIO, name: str) -> Iterator[tuple[float, bytes]]:
    """A dpkt reader for pcap or pcapng, chosen by the file's magic number."""
    magic = stream.read(4)
    stream.seek(0)
    try:
        if magic == _PCAPNG_MAGIC:
            reader: Iterator[tuple[float, bytes]] = dpkt.pcapng.Reader(stream)
        else:
            reader = dpkt.pcap.Reader(stream)
    except (ValueError, dpkt.dpkt.UnpackError, dpkt.dpkt.NeedData) as exc:
        raise PcapImportError(f"{name} is not a pcap or pcapng capture ({exc})") from None
    return reader


def _ip_layer(link_type: int, frame: bytes) -> dpkt.Packet | None:
    """The IPv4/IPv6 packet inside a captured frame, for the link types tcpdump writes."""
    if link_type == dpkt.pcap.DLT_EN10MB:
        inner = dpkt.ethernet.Ethernet(frame).data
    elif link_type == dpkt.pcap.DLT_LINUX_SLL:
        inner = dpkt.sll.SLL(frame).data
    elif link_type == 276:  # LINUX_SLL2, written by `tcpdump -i any`
        inner = dpkt.sll2.SLL2(frame).data
    elif link_type in (dpkt.pcap.DLT_RAW, 101):  # LINKTYPE_RAW
        inner = dpkt.ip.IP(frame) if frame[:1] and frame[0] >> 4 == 4 else dpkt.ip6.IP6(frame)
    elif link_type in (dpkt.pcap.DLT_NULL, dpkt.pcap.DLT_LOOP):
        inner = dpkt.loopback.Loopback(frame).data
    else:
        raise PcapImportError(f"unsupported capture link type {link_type}")
    return inner if isinstance(inner, dpkt.ip.IP | dpkt.ip6.IP6) else None


def iter_rtp_packets(
    path: Path, progress: Progress | None = None, phase: str = "reading"
) -> Iterator[tuple[StreamKey, MediaPacket]]:
    """Every valid RTP packet over UDP in a capture, with its stream, one at a time."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise PcapImportError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        total = path.stat().st_size
        reader = _open_reader(handle, str(path))
        link_type = reader.datalink()  # type: ignore[attr-defined]
        count = 0
        try:
            for timestamp, frame in reader:
                found = _rtp_packet(link_type, timestamp, frame)
                if found is not None:
                    yield found
                count += 1
                if progress is not None and count % PROGRESS_EVERY_PACKETS == 0:
                    progress(phase, handle.tell(), total)
        except (dpkt.dpkt.NeedData, dpkt.dpkt.UnpackError, ValueError) as exc:
            raise PcapImportError(f"{path} is truncated or corrupt ({exc})") from None
        if progress is not None:
            progress(phase, total, total)


def read_rtp_streams(path: Path) -> list[RtpStream]:
    """Group a capture's RTP packets by stream, in order of first appearance (all in memory)."""
    streams: dict[StreamKey, RtpStream] = {}
    for key, packet in iter_rtp_packets(path):
        stream = streams.get(key)
        if stream is None:
            stream = streams[key] = RtpStream(*key)
        stream.packets.append(packet)
    return [s for s in streams.values() if len(s.packets) >= MIN_STREAM_PACKETS]


def scan_rtp_streams(path: Path, progress: Progress | None = None) -> list[StreamSummary]:
    """The capture's streams in order of first appearance, without keeping their packets."""
    streams: dict[StreamKey, StreamSummary] = {}
    for key, packet in iter_rtp_packets(path, progress, "scanning"):
        summary = streams.get(key)
        if summary is None:
            summary = streams[key] = StreamSummary(*key)
        summary.add(packet)
    return [s for s in streams.values() if s.packet_count >= MIN_STREAM_PACKETS]


def _rtp_packet(
    link_type: int, timestamp: float, frame: bytes
) -> tuple[StreamKey, MediaPacket] | None:
    """One captured frame's RTP packet over UDP and its stream, or None if it carries none."""
    try:
        ip = _ip_layer(link_type, frame)
    except (dpkt.dpkt.UnpackError, dpkt.dpkt.NeedData, ValueError):
        return None
    if ip is None or not isinstance(ip.data, dpkt.udp.UDP):
        return None
    udp = ip.data
    data = bytes(udp.data)
    if is_rtcp(data):
        return None
    try:
        header = parse_rtp_header(data)
    except RtpParseError:
        return None
    source = (str(ipaddress.ip_address(ip.src)), udp.sport)
    destination = (str(ipaddress.ip_address(ip.dst)), udp.dport)
    packet = MediaPacket(
        round(timestamp * 1e9),
        header.timestamp,
        header.sequence,
        header.ssrc,
        header.payload_type,
        header.marker,
        data[header.payload_offset : header.payload_end],
    )
    return (source, destination), packet


def summarize(stream: RtpStream) -> StreamSummary:
    """What the first pass would have learnt of a stream held in memory."""
    summary = StreamSummary(stream.source, stream.destination)
    for packet in stream.packets:
        summary.add(packet)
    return summary


def detect_codec(stream: StreamSummary) -> Codec:
    """The stream's codec: G.711 by static payload type, else Opus if its payloads parse."""
    payload_type = stream.payload_type
    for codec in Codec:
        if codec.static_payload_type == payload_type:
            return codec
    if 96 <= payload_type <= 127:  # dynamic (RFC 3551 §6); Opus is always dynamic (RFC 7587 §6.1)
        try:
            for payload in stream.sample_payloads:
                compute_packet_samples(payload)
        except OpusPacketError:
            pass
        else:
            return Codec.OPUS
    raise PcapImportError(
        f"stream from {stream.source[0]}:{stream.source[1]} has payload type {payload_type},"
        " which is neither G.711 nor Opus"
    )


def select_streams(
    streams: Sequence[_Stream], caller: Address | None, agent: Address | None
) -> tuple[_Stream, _Stream | None]:
    """Pick the caller's and the agent's stream: by source address, else by order of appearance."""

    def by_source(address: Address, role: str) -> _Stream:
        for stream in streams:
            if stream.source == address:
                return stream
        found = ", ".join(f"{s.source[0]}:{s.source[1]}" for s in streams) or "none"
        raise PcapImportError(
            f"no RTP stream from {role} address {address[0]}:{address[1]} (found: {found})"
        )

    if not streams:
        raise PcapImportError("no RTP stream found in the capture")
    caller_stream = by_source(caller, "caller") if caller else None
    agent_stream = by_source(agent, "agent") if agent else None
    rest = [s for s in streams if s is not caller_stream and s is not agent_stream]
    if caller_stream is None:
        if not rest:
            raise PcapImportError("no RTP stream left for the caller")
        caller_stream = rest.pop(0)
    if agent_stream is None and rest:
        agent_stream = rest.pop(0)
    return caller_stream, agent_stream


def import_pcap(
    capture: Path,
    out_dir: Path,
    *,
    call_id: str,
    caller: Address | None = None,
    agent: Address | None = None,
    options: FinalizeOptions = DEFAULT_OPTIONS,
    progress: Progress | None = None,
) -> Manifest:
    """Build a recording from a capture into `out_dir`, with the seed's file names."""
    caller_stream, agent_stream = select_streams(scan_rtp_streams(capture, progress), caller, agent)
    chosen = {Channel.CALLER: caller_stream, Channel.AGENT: agent_stream}
    caller_codec = detect_codec(caller_stream)
    codecs = {
        Channel.CALLER: caller_codec,
        Channel.AGENT: detect_codec(agent_stream) if agent_stream else caller_codec,
    }
    start_ns = min(s.first_arrival_ns for s in chosen.values() if s is not None)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".import-", dir=out_dir) as work_name:
        spool = CallSpool(Path(work_name) / call_id)
        # Capture times are wall-clock times, so the call's two start clocks coincide.
        spool.create(
            CallDescription(
                call_id, start_ns, start_ns, codecs, {"source": "pcap", "capture": capture.name}
            )
        )
        _write_journals(capture, spool, chosen, codecs, start_ns, progress)
        if progress is not None:
            progress("building", 0, 0)
        manifest = build_recording(spool, options)
        files = []
        for entry in manifest.files:
            name = build_file_name(call_id, entry.role)
            shutil.move(spool.directory / entry.name, out_dir / name)
            files.append(replace(entry, name=name, key=name))
        manifest = replace(manifest, status=CallStatus.STORED, files=tuple(files))
        if agent_stream is None:
            manifest = replace(manifest, notes=(*manifest.notes, "capture has no agent stream"))
        (out_dir / f"conversation_{call_id}_manifest.json").write_text(manifest.to_json())
    return manifest


def _write_journals(
    capture: Path,
    spool: CallSpool,
    chosen: dict[Channel, StreamSummary | None],
    codecs: dict[Channel, Codec],
    start_ns: int,
    progress: Progress | None,
) -> None:
    """The second pass: the chosen streams' packets straight into the channels' journals."""
    with (
        spool.journal_path(Channel.CALLER).open("wb") as caller_file,
        spool.journal_path(Channel.AGENT).open("wb") as agent_file,
    ):
        writers = {
            channel: JournalWriter(
                handle, JournalHeader(channel, codecs[channel], start_ns, start_ns)
            )
            for channel, handle in ((Channel.CALLER, caller_file), (Channel.AGENT, agent_file))
        }
        by_key = {
            stream.key: writers[channel] for channel, stream in chosen.items() if stream is not None
        }
        for key, packet in iter_rtp_packets(capture, progress, "journalling"):
            writer = by_key.get(key)
            if writer is not None:
                writer.append(packet)
