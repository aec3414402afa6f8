"""Turn a capture of a call's two RTP streams into the same files and manifest as a live call."""

import ipaddress
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import dpkt

from mediaserver.audio.opus_toc import compute_packet_samples
from mediaserver.errors import OpusPacketError, PcapImportError, RtpParseError
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
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"

Address = tuple[str, int]


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


def parse_address(text: str) -> Address:
    """Parse `IP:PORT` (IPv6 as `[addr]:port`)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise PcapImportError(f"address {text!r} is not IP:PORT") from None
    if not sep or not 0 < number < 65536:
        raise PcapImportError(f"address {text!r} is not IP:PORT")
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


def read_rtp_streams(path: Path) -> list[RtpStream]:
    """Group a capture's RTP packets by source and destination, in order of first appearance."""
    streams: dict[tuple[Address, Address], RtpStream] = {}
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise PcapImportError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        reader = _open_reader(handle, str(path))
        link_type = reader.datalink()  # type: ignore[attr-defined]
        try:
            for timestamp, frame in reader:
                _add_frame(streams, link_type, timestamp, frame)
        except (dpkt.dpkt.NeedData, dpkt.dpkt.UnpackError, ValueError) as exc:
            raise PcapImportError(f"{path} is truncated or corrupt ({exc})") from None
    return [s for s in streams.values() if len(s.packets) >= MIN_STREAM_PACKETS]


def _add_frame(
    streams: dict[tuple[Address, Address], RtpStream],
    link_type: int,
    timestamp: float,
    frame: bytes,
) -> None:
    """Add one captured frame to its stream if it is a valid RTP packet over UDP."""
    try:
        ip = _ip_layer(link_type, frame)
    except (dpkt.dpkt.UnpackError, dpkt.dpkt.NeedData, ValueError):
        return
    if ip is None or not isinstance(ip.data, dpkt.udp.UDP):
        return
    udp = ip.data
    data = bytes(udp.data)
    if is_rtcp(data):
        return
    try:
        header = parse_rtp_header(data)
    except RtpParseError:
        return
    source = (str(ipaddress.ip_address(ip.src)), udp.sport)
    destination = (str(ipaddress.ip_address(ip.dst)), udp.dport)
    stream = streams.setdefault((source, destination), RtpStream(source, destination))
    stream.packets.append(
        MediaPacket(
            round(timestamp * 1e9),
            header.timestamp,
            header.sequence,
            header.ssrc,
            header.payload_type,
            header.marker,
            data[header.payload_offset : header.payload_end],
        )
    )


def detect_codec(stream: RtpStream) -> Codec:
    """The stream's codec: G.711 by static payload type, else Opus if its payloads parse."""
    payload_type = stream.payload_type
    for codec in Codec:
        if codec.static_payload_type == payload_type:
            return codec
    if 96 <= payload_type <= 127:  # dynamic (RFC 3551 §6); Opus is always dynamic (RFC 7587 §6.1)
        try:
            for packet in stream.packets[:20]:
                compute_packet_samples(packet.payload)
        except OpusPacketError:
            pass
        else:
            return Codec.OPUS
    raise PcapImportError(
        f"stream from {stream.source[0]}:{stream.source[1]} has payload type {payload_type},"
        " which is neither G.711 nor Opus"
    )


def select_streams(
    streams: list[RtpStream], caller: Address | None, agent: Address | None
) -> tuple[RtpStream, RtpStream | None]:
    """Pick the caller's and the agent's stream: by source address, else by order of appearance."""

    def by_source(address: Address, role: str) -> RtpStream:
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
) -> Manifest:
    """Build a recording from a capture into `out_dir`, with the seed's file names."""
    caller_stream, agent_stream = select_streams(read_rtp_streams(capture), caller, agent)
    chosen = {Channel.CALLER: caller_stream, Channel.AGENT: agent_stream}
    caller_codec = detect_codec(caller_stream)
    codecs = {
        Channel.CALLER: caller_codec,
        Channel.AGENT: detect_codec(agent_stream) if agent_stream else caller_codec,
    }
    start_ns = min(s.packets[0].arrival_ns for s in chosen.values() if s is not None)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".import-", dir=out_dir) as work_name:
        spool = CallSpool(Path(work_name) / call_id)
        # Capture times are wall-clock times, so the call's two start clocks coincide.
        spool.create(
            CallDescription(
                call_id, start_ns, start_ns, codecs, {"source": "pcap", "capture": capture.name}
            )
        )
        for channel, stream in chosen.items():
            with spool.journal_path(channel).open("wb") as handle:
                writer = JournalWriter(
                    handle, JournalHeader(channel, codecs[channel], start_ns, start_ns)
                )
                for packet in stream.packets if stream else ():
                    writer.append(packet)
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
