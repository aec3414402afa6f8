"""Loopback packets stamped by the kernel: tcpdump, pcap reading, WebSocket frames.

A capture on `lo` stamps every packet once, as the sending process hands it to the kernel, with
one clock for every process. So the time between a datagram reaching the server's port and the
server's answer leaving it is measured outside the server, free of the load's own scheduling.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# pcap file format (libpcap's savefile): the magic tells the timestamp unit.
_PCAP_MAGIC_NS = 0xA1B23C4D
_PCAP_MAGIC_US = 0xA1B2C3D4
_PCAP_HEADER = struct.Struct("<IHHiIII")
_RECORD_HEADER = struct.Struct("<IIII")
# Link types (tcpdump's LINKTYPE_*) and the bytes before the IP header.
_LINK_HEADER_BYTES = {1: 14, 113: 16, 276: 20}
_IPPROTO_TCP = 6
_IPPROTO_UDP = 17
_SEQUENCE_MODULUS = 1 << 32
# RFC 6455 §5.2 opcodes.
WS_TEXT = 0x1
WS_CONTINUATION = 0x0


@dataclass(frozen=True, slots=True)
class Datagram:
    """One UDP datagram as captured."""

    time_ns: int
    src_port: int
    dst_port: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Segment:
    """One TCP segment as captured."""

    time_ns: int
    src_port: int
    dst_port: int
    sequence: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class WebSocketFrame:
    """A whole WebSocket frame (unmasked), stamped with the segment that completed it."""

    time_ns: int
    opcode: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Capture:
    """What a capture holds, split by protocol, in capture order."""

    datagrams: list[Datagram]
    segments: list[Segment]
    kernel_drops: int


class LoopbackCapture:
    """tcpdump on `lo` for a set of ports, writing a pcap file; start, then stop and read."""

    def __init__(self, path: Path, *, udp_ports: Sequence[int], tcp_ports: Sequence[int]) -> None:
        self.path = path
        terms = [f"udp port {port}" for port in udp_ports]
        terms += [f"tcp port {port}" for port in tcp_ports]
        self.filter = " or ".join(terms)
        self._process: asyncio.subprocess.Process | None = None
        self._stderr = b""

    async def start(self) -> None:
        """Start tcpdump and return once it listens."""
        self._process = await asyncio.create_subprocess_exec(
            "tcpdump",
            "-i",
            "lo",
            "-n",
            "-U",  # every packet written as it comes: nothing is lost at stop
            "-s",
            "0",
            "-B",
            "16384",  # KiB of kernel buffer: a loaded machine must not drop packets
            "--time-stamp-precision=nano",
            "-w",
            str(self.path),
            self.filter,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self._process.stderr is not None
        line = await asyncio.wait_for(self._process.stderr.readline(), 10)
        if b"listening on" not in line:
            raise RuntimeError(f"tcpdump did not start: {line!r}")

    async def stop(self) -> Capture:
        """Stop tcpdump (SIGINT, as at a terminal) and read what it captured."""
        process = self._process
        if process is None:
            raise RuntimeError("the capture was not started")
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        assert process.stderr is not None
        self._stderr = await asyncio.wait_for(process.stderr.read(), 30)
        await process.wait()
        datagrams, segments = read_pcap(self.path)
        return Capture(datagrams, segments, _parse_kernel_drops(self._stderr))


def _parse_kernel_drops(stderr: bytes) -> int:
    """tcpdump's "N packets dropped by kernel" line, or 0."""
    for line in stderr.decode(errors="replace").splitlines():
        if line.endswith("packets dropped by kernel"):
            return int(line.split()[0])
    return 0


def read_pcap(path: Path) -> tuple[list[Datagram], list[Segment]]:
    """Every IPv4 UDP datagram and TCP segment of a pcap file, in capture order."""
    data = path.read_bytes()
    magic, _, _, _, _, _, link_type = _PCAP_HEADER.unpack_from(data, 0)
    if magic not in (_PCAP_MAGIC_NS, _PCAP_MAGIC_US):
        raise ValueError(f"{path} is not a little-endian pcap file")
    scale = 1 if magic == _PCAP_MAGIC_NS else 1000
    link_bytes = _LINK_HEADER_BYTES[link_type]
    datagrams: list[Datagram] = []
    segments: list[Segment] = []
    offset = _PCAP_HEADER.size
    while offset + _RECORD_HEADER.size <= len(data):
        seconds, fraction, captured, _ = _RECORD_HEADER.unpack_from(data, offset)
        offset += _RECORD_HEADER.size
        frame = data[offset : offset + captured]
        offset += captured
        time_ns = seconds * 1_000_000_000 + fraction * scale
        ip = frame[link_bytes:]
        if len(ip) < 20 or ip[0] >> 4 != 4:
            continue
        header_bytes = (ip[0] & 0x0F) * 4
        total_bytes = struct.unpack_from("!H", ip, 2)[0]
        protocol = ip[9]
        body = ip[header_bytes:total_bytes]
        if protocol == _IPPROTO_UDP and len(body) >= 8:
            src, dst = struct.unpack_from("!HH", body, 0)
            datagrams.append(Datagram(time_ns, src, dst, body[8:]))
        elif protocol == _IPPROTO_TCP and len(body) >= 20:
            src, dst, sequence = struct.unpack_from("!HHI", body, 0)
            data_offset = (body[12] >> 4) * 4
            payload = body[data_offset:]
            if payload:
                segments.append(Segment(time_ns, src, dst, sequence, payload))
    return datagrams, segments


def read_websocket_frames(
    segments: Sequence[Segment], src_port: int, dst_port: int
) -> list[WebSocketFrame]:
    """The WebSocket frames one direction of a TCP connection carried (RFC 6455 §5.2)."""
    # The capture must begin on a frame boundary: start it while the connection is quiet.
    stream = bytearray()
    stamps: list[tuple[int, int]] = []  # (end offset in the stream, time) per segment
    next_sequence: int | None = None
    for segment in segments:
        if segment.src_port != src_port or segment.dst_port != dst_port:
            continue
        payload = segment.payload
        if next_sequence is not None:
            behind = (next_sequence - segment.sequence) % _SEQUENCE_MODULUS
            if behind and behind < _SEQUENCE_MODULUS // 2:  # a retransmission
                if behind >= len(payload):
                    continue
                payload = payload[behind:]
            elif segment.sequence != next_sequence:
                raise ValueError("the capture lost a TCP segment")
        stream += payload
        next_sequence = (segment.sequence + len(segment.payload)) % _SEQUENCE_MODULUS
        stamps.append((len(stream), segment.time_ns))
    return list(_parse_frames(bytes(stream), stamps))


def _parse_frames(stream: bytes, stamps: list[tuple[int, int]]) -> Iterator[WebSocketFrame]:
    """Split a byte stream into frames; each stamped with the segment holding its last byte."""
    offset = 0
    stamp_index = 0
    while offset + 2 <= len(stream):
        first, second = stream[offset], stream[offset + 1]
        opcode = first & 0x0F
        masked = bool(second & 0x80)
        length = second & 0x7F
        cursor = offset + 2
        if length == 126:
            length = struct.unpack_from("!H", stream, cursor)[0]
            cursor += 2
        elif length == 127:
            length = struct.unpack_from("!Q", stream, cursor)[0]
            cursor += 8
        mask = b""
        if masked:
            mask = stream[cursor : cursor + 4]
            cursor += 4
        end = cursor + length
        if end > len(stream):
            return
        payload = stream[cursor:end]
        if masked:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        while stamps[stamp_index][0] < end:
            stamp_index += 1
        yield WebSocketFrame(stamps[stamp_index][1], opcode, payload)
        offset = end
