"""Peak memory of `import-pcap` as captures get longer, against reading every packet into lists."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import dpkt
import numpy as np
from common import print_table

from mediaserver.pcap_import import import_pcap, read_rtp_streams

RATE_HZ = 48000
# Peak RSS of import-pcap may differ by this much between the shortest and longest capture and
# still count as flat (allocator noise); a build holding ~0.2 KB a packet grows ~30 MB from 5 to
# 30 minutes.
FLAT_SPREAD_MB = 5.0
FRAME_SAMPLES = 960  # 20 ms
CALLER = ("10.0.0.1", 40000)
AGENT = ("10.0.0.2", 40002)


def encode_opus_packets(seconds: float, freq_hz: float) -> list[bytes]:
    """Real libopus packets (PyAV) of a tone that comes and goes, 20 ms each."""
    context = av.CodecContext.create("libopus", "w")
    context.sample_rate = RATE_HZ
    context.layout = "mono"
    context.format = "s16"
    context.bit_rate = 32000
    context.options = {"frame_duration": "20"}
    context.open()
    t = np.arange(int(seconds * RATE_HZ)) / RATE_HZ
    gate = (np.sin(2 * np.pi * 0.5 * t) > 0).astype(np.float64)  # one second on, one off
    pcm = (np.sin(2 * np.pi * freq_hz * t) * gate * 8000).astype(np.int16)
    packets: list[bytes] = []
    for start in range(0, pcm.size - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        frame = av.AudioFrame.from_ndarray(
            pcm[start : start + FRAME_SAMPLES].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE_HZ
        frame.pts = start
        frame.time_base = Fraction(1, RATE_HZ)
        packets += [bytes(packet) for packet in context.encode(frame)]
    return packets


def _frame(source: tuple[str, int], destination: tuple[str, int], rtp: bytes) -> bytes:
    """An Ethernet frame carrying one UDP datagram."""
    udp = dpkt.udp.UDP(sport=source[1], dport=destination[1], data=rtp)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(
        src=socket.inet_aton(source[0]), dst=socket.inet_aton(destination[0]), p=17, data=udp
    )
    ip.len = len(ip)
    return bytes(dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def write_capture(path: Path, minutes: float) -> int:
    """A two-way call of `minutes`, real Opus both ways, as tcpdump would write it; packets."""
    caller_packets = encode_opus_packets(10.0, 500.0)
    agent_packets = encode_opus_packets(10.0, 1300.0)
    count = int(minutes * 60 * 50)
    start_s = 1_790_000_000.0
    with path.open("wb") as handle:
        writer = dpkt.pcap.Writer(handle, linktype=dpkt.pcap.DLT_EN10MB)
        for index in range(count):
            for ssrc, payloads, source, destination, lag_s in (
                (0x11111111, caller_packets, CALLER, AGENT, 0.0),
                (0x22222222, agent_packets, AGENT, CALLER, 0.007),
            ):
                header = dpkt.rtp.RTP(
                    version=2,
                    pt=111,
                    seq=index & 0xFFFF,
                    ts=(index * FRAME_SAMPLES) & 0xFFFFFFFF,
                    ssrc=ssrc,
                    data=payloads[index % len(payloads)],
                )
                writer.writepkt(
                    _frame(source, destination, bytes(header)), start_s + index * 0.02 + lag_s
                )
    return 2 * count


def child(capture: Path, out_dir: Path, how: str) -> None:
    """Run one import in this (fresh) process."""
    if how == "import":
        import_pcap(capture, out_dir, call_id="bench")
    else:  # the old first step: every packet of the capture in lists
        read_rtp_streams(capture)


def measure(capture: Path, out_dir: Path, how: str) -> tuple[float, float]:
    """Peak resident MB and seconds of one import in a child process."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", how, str(capture), str(out_dir)]
    )
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"the import failed with status {status}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def main() -> None:
    """Print peak memory of short and long captures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0, 30.0, 60.0])
    parser.add_argument(
        "--child", nargs=3, metavar=("HOW", "CAPTURE", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[1]), Path(args.child[2]), args.child[0])
        return
    rows = []
    import_peaks_mb: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-import-") as work:
        for minutes in args.minutes:
            capture = Path(work) / f"call-{minutes:g}min.pcap"
            packets = write_capture(capture, minutes)
            size_mb = capture.stat().st_size / 1e6
            for how in ("read all (before)", "import-pcap"):
                key = "import" if how == "import-pcap" else "read"
                peak_mb, elapsed_s = measure(capture, Path(work) / f"out-{minutes:g}-{key}", key)
                if key == "import":
                    import_peaks_mb.append((minutes, peak_mb))
                rows.append(
                    [
                        how,
                        f"{minutes:g}",
                        f"{packets:,}",
                        f"{size_mb:.1f}",
                        f"{peak_mb:.0f}",
                        f"{elapsed_s:.1f}",
                    ]
                )
    print_table(["what", "minutes", "packets", "capture MB", "peak RSS MB", "seconds"], rows)
    print(verdict(import_peaks_mb))


def verdict(peaks_mb: list[tuple[float, float]]) -> str:
    """One line: is import-pcap's peak memory flat in the capture's length?"""
    figures = ", ".join(f"{peak:.1f} MB at {minutes:g} min" for minutes, peak in peaks_mb)
    values = [peak for _, peak in peaks_mb]
    spread = max(values) - min(values)
    flat = spread <= FLAT_SPREAD_MB
    word = "flat" if flat else "NOT flat"
    return (
        f"verdict: import-pcap peak RSS {word} ({figures}; spread {spread:.1f} MB,"
        f" {'within' if flat else 'beyond'} {FLAT_SPREAD_MB:g} MB)"
    )


if __name__ == "__main__":
    main()
