"""Shared pieces of the benchmarks: realistic Opus RTP streams, RSS readings and a table printer."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import statistics
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from mediaserver.audio.opus_toc import compute_packet_samples
from mediaserver.rtp.packet import RtpPacket, build_rtp_packet

# RFC 6716 §3.1, Table 2: config 15 is hybrid fullband 20 ms; stereo bit 0 and frame count
# code 0 (one frame) give the TOC byte a WebRTC voice encoder sends in every packet.
OPUS_TOC_HYBRID_FB_20MS_MONO = 15 << 3
OPUS_PAYLOAD_TYPE = 111  # the dynamic payload type browsers offer for Opus
OPUS_CLOCK_RATE_HZ = 48_000  # RFC 7587 §4.1
PACKET_DURATION_NS = 20_000_000
PACKET_DURATION_SAMPLES = 960
PACKETS_PER_SECOND = 50
PAYLOAD_BYTES_RANGE = (60, 80)  # 24-32 kbit/s speech at 20 ms per packet
_RTP_FIXED_HEADER = struct.Struct("!BBHII")
_RTP_VERSION_2_FIRST_OCTET = 0x80  # RFC 3550 §5.1: V=2, no padding, extension or CSRC


def quiet_logging() -> None:
    """Keep the recorder's per-call info lines out of the benchmark output."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def build_opus_payloads(count: int, seed: int = 1) -> list[bytes]:
    """Opus packets of 60-80 bytes: a real one-frame TOC byte, then pseudo-random frame bytes."""
    rng = random.Random(seed)
    low, high = PAYLOAD_BYTES_RANGE
    payloads = [
        bytes((OPUS_TOC_HYBRID_FB_20MS_MONO,)) + rng.randbytes(rng.randint(low, high) - 1)
        for _ in range(count)
    ]
    # The project's Opus TOC parser confirms the TOC byte really says "one 20 ms frame".
    if compute_packet_samples(payloads[0]) != PACKET_DURATION_SAMPLES:
        raise RuntimeError("the benchmark's Opus TOC byte does not describe a 20 ms packet")
    return payloads


def build_opus_rtp_stream(ssrc: int, count: int, seed: int = 1) -> list[bytes]:
    """`count` consecutive 20 ms Opus RTP packets of one stream, built with `build_rtp_packet`."""
    rng = random.Random(seed)
    first_sequence = rng.randrange(1 << 16)
    first_timestamp = rng.randrange(1 << 32)
    return [
        build_rtp_packet(
            RtpPacket(
                marker=index == 0,
                payload_type=OPUS_PAYLOAD_TYPE,
                sequence=(first_sequence + index) & 0xFFFF,
                timestamp=(first_timestamp + index * PACKET_DURATION_SAMPLES) & 0xFFFFFFFF,
                ssrc=ssrc,
                payload=payload,
            )
        )
        for index, payload in enumerate(build_opus_payloads(count, seed))
    ]


def build_opus_rtp_datagram(sequence: int, timestamp: int, ssrc: int, payload: bytes) -> bytes:
    """A plain Opus RTP packet in one struct call: for loops that make millions of them."""
    header = _RTP_FIXED_HEADER.pack(
        _RTP_VERSION_2_FIRST_OCTET,
        OPUS_PAYLOAD_TYPE,
        sequence & 0xFFFF,
        timestamp & 0xFFFFFFFF,
        ssrc,
    )
    return header + payload


def check_fast_builder() -> None:
    """Fail early if the fast datagram builder ever disagrees with `build_rtp_packet`."""
    payload = build_opus_payloads(1)[0]
    packet = RtpPacket(False, OPUS_PAYLOAD_TYPE, 65535, 0xFFFFFFFF, 0x1234ABCD, payload=payload)
    fast = build_opus_rtp_datagram(65535, 0xFFFFFFFF, 0x1234ABCD, payload)
    if fast != build_rtp_packet(packet):
        raise RuntimeError("build_opus_rtp_datagram disagrees with build_rtp_packet")


def read_status_kb(field: str) -> int:
    """A kB figure of this process from /proc/self/status (e.g. VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def read_rss_kb() -> int:
    """Resident set size of this process in KiB."""
    return read_status_kb("VmRSS")


def read_mem_available_kb() -> int:
    """Memory the kernel could still give processes, in KiB (/proc/meminfo MemAvailable)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/meminfo has no MemAvailable line")


def time_repeats(run: Callable[[], None], repeats: int) -> list[float]:
    """Wall seconds of each of `repeats` calls of `run`, timed with perf_counter."""
    elapsed_s = []
    for _ in range(repeats):
        started_s = time.perf_counter()
        run()
        elapsed_s.append(time.perf_counter() - started_s)
    return elapsed_s


def median_rate(count: int, elapsed_s: Sequence[float]) -> float:
    """Items per second at the median of several timings."""
    return count / statistics.median(elapsed_s)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print rows under headers, the first column left-aligned and the others right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    print(line(cells[0]))
    print("  ".join("-" * width for width in widths))
    for row in cells[1:]:
        print(line(row))


def set_autogroup_nice(pid: int, nice: int) -> None:
    """Give a process's session the niceness too: with autogroups, nice only ranks inside one."""
    # Linux's sched_autogroup shares the CPU fairly between sessions first: a process niced to
    # -15 in a session of its own still gets only that session's share against a busy shell's.
    # Without autogroups on this kernel, or without the right, plain nice is all there is.
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def renice(nice: int) -> None:
    """Change this process's niceness by `nice`; a session leader's autogroup changes with it."""
    os.nice(nice)
    if os.getsid(0) == os.getpid():
        # Only a process that leads its own session owns its autogroup: renicing the autogroup
        # of a shell's session would change every command that shell runs afterwards.
        set_autogroup_nice(os.getpid(), os.nice(0))
