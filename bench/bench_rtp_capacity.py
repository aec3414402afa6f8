"""Plain-RTP calls per core: N legs receiving and sending 50 packets/s each, journalled."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import multiprocessing
import os
import resource
import selectors
import shutil
import socket
import statistics
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from common import print_table, quiet_logging

from mediaserver.calls import TICKS_PER_SLICE
from mediaserver.recorder import Recorder
from mediaserver.recording.channel import Channel, Codec
from mediaserver.storage_backends.local import LocalStore
from mediaserver.transports.port_allocator import PortAllocator
from mediaserver.transports.rtp import RtpCallerTransport

HOST = "127.0.0.1"
PACKET_INTERVAL_S = 0.020
PCMU_PAYLOAD_TYPE = 0  # RFC 3551 table 4
PCMU_SAMPLES = 160  # 20 ms at 8 kHz
PCMU_PAYLOAD = b"\xff" * PCMU_SAMPLES  # mu-law silence
SENDER_SLOTS = 20  # the sender spreads its calls over 20 one-millisecond slots per 20 ms
LAG_PROBE_S = 0.010
PORT_RANGE = (30000, 39998)
STOCK_READ_BYTES = 256 * 1024  # CPython's default datagram read size
# RFC 3550 §5.1: V=2, no padding, extension or CSRC | M PT | sequence | timestamp | SSRC.
_RTP_HEADER = struct.Struct("!BBHII")
TARGET_CALLS = 300
TARGET_LAG_P99_MS = 10.0


@dataclass(frozen=True, slots=True)
class LoopKind:
    """An event loop to measure and the largest datagram the legs accept on it."""

    name: str
    factory: Callable[[], asyncio.AbstractEventLoop]
    max_datagram_bytes: int


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one (loop, N) run measured."""

    cpu_percent: float
    sys_percent: float
    wait_percent: float
    us_per_packet: float
    sent: int
    received: int
    dropped: int
    rcvbuf_errors: int
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    packets_out: int
    unsent: int
    replies: int
    journalled: int


class JournalSink:
    """What the call session does cheaply per caller packet: append it to the caller journal."""

    __slots__ = ("_call_id", "_record")

    def __init__(self, recorder: Recorder, call_id: str) -> None:
        self._record = recorder.record
        self._call_id = call_id

    def on_caller_packet(
        self,
        *,
        arrival_ns: int,
        rtp_timestamp: int,
        ssrc: int,
        sequence: int,
        payload_type: int,
        marker: bool,
        payload: bytes,
    ) -> None:
        """Journal the packet."""
        self._record(
            self._call_id,
            Channel.CALLER,
            arrival_ns=arrival_ns,
            rtp_timestamp=rtp_timestamp,
            ssrc=ssrc,
            sequence=sequence,
            payload_type=payload_type,
            marker=marker,
            payload=payload,
        )

    def on_caller_ended(self, reason: str) -> None:
        """A leg ending mid-run would spoil the figures."""
        raise RuntimeError(f"a benchmark leg ended: {reason}")


# -- the sender process -------------------------------------------------------------------------


def run_sender(conn: Connection, ports: list[int], duration_s: float, cpu: int | None) -> None:
    """Send 50 PCMU packets/s to each port from its own socket, count the replies, report."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    selector = selectors.DefaultSelector()
    sockets = []
    for _ in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, 0))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        sockets.append(sock)
    slots: list[list[int]] = [[] for _ in range(SENDER_SLOTS)]
    for index in range(len(ports)):
        slots[index % SENDER_SLOTS].append(index)
    replies = 0

    def drain(until_s: float) -> None:
        nonlocal replies
        while (remaining_s := until_s - time.monotonic()) > 0:
            for key, _ in selector.select(remaining_s):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                while True:
                    try:
                        sock.recv(2048)
                    except BlockingIOError:
                        break
                    replies += 1

    conn.send("ready")
    sent = 0
    slot_s = PACKET_INTERVAL_S / SENDER_SLOTS
    start_s = time.monotonic()
    ticks = int(duration_s / slot_s)
    for tick in range(ticks):
        drain(start_s + tick * slot_s)
        frame = tick // SENDER_SLOTS
        for index in slots[tick % SENDER_SLOTS]:
            header = _RTP_HEADER.pack(
                0x80,
                PCMU_PAYLOAD_TYPE,
                frame & 0xFFFF,
                (frame * PCMU_SAMPLES) & 0xFFFFFFFF,
                0x10000 + index,
            )
            sockets[index].sendto(header + PCMU_PAYLOAD, (HOST, ports[index]))
            sent += 1
    drain(time.monotonic() + 0.5)  # the server's last replies
    conn.send({"sent": sent, "replies": replies})
    for sock in sockets:
        sock.close()


# -- the server side ----------------------------------------------------------------------------


def read_udp_rcvbuf_errors() -> int:
    """The kernel's count of UDP datagrams dropped for a full receive buffer (system-wide)."""
    udp_lines = [
        line.split()
        for line in Path("/proc/net/snmp").read_text().splitlines()
        if line.startswith("Udp:")
    ]
    names, values = udp_lines[0], udp_lines[1]  # a header line, then the counters
    return int(values[names.index("RcvbufErrors")])


def runqueue_wait_s() -> float:
    """Seconds this process was runnable but waiting for a CPU (/proc/self/schedstat)."""
    return int(Path("/proc/self/schedstat").read_text().split()[1]) / 1e9


def cpu_seconds() -> tuple[float, float]:
    """User and system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of the values lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def tick_agent_audio(legs: list[tuple[RtpCallerTransport, str]], recorder: Recorder) -> None:
    """The shared 20 ms pacer: one PCMU frame to every leg, journalled as the agent channel."""
    loop = asyncio.get_running_loop()
    record = recorder.record
    next_s = loop.time()
    frame = 0
    while True:
        next_s += PACKET_INTERVAL_S
        await asyncio.sleep(max(0.0, next_s - loop.time()))
        now_ns = time.monotonic_ns()
        for index, (transport, call_id) in enumerate(legs):
            if index and index % TICKS_PER_SLICE == 0:
                await asyncio.sleep(0)  # as the server's pacer does (mediaserver.calls)
            transport.send_audio(PCMU_PAYLOAD, PCMU_SAMPLES)
            record(
                call_id,
                Channel.AGENT,
                arrival_ns=now_ns,
                rtp_timestamp=(frame * PCMU_SAMPLES) & 0xFFFFFFFF,
                ssrc=1,
                sequence=frame & 0xFFFF,
                payload_type=PCMU_PAYLOAD_TYPE,
                marker=False,
                payload=PCMU_PAYLOAD,
            )
        frame += 1


async def probe_lag(lags_ms: list[float]) -> None:
    """Sleep 10 ms over and over and record how late each wake-up is."""
    while True:
        started_ns = time.perf_counter_ns()
        await asyncio.sleep(LAG_PROBE_S)
        lags_ms.append((time.perf_counter_ns() - started_ns) / 1e6 - LAG_PROBE_S * 1e3)


async def flush_journals(recorder: Recorder) -> None:
    """Flush every second in slices, as the recorder's own loop does."""
    while True:
        await asyncio.sleep(1.0)
        await recorder.flush_in_slices()


async def serve(
    calls: int, kind: LoopKind, warmup_s: float, measure_s: float, sender_cpu: int | None
) -> RunResult:
    """Run N legs against a sender process and measure the measurement window."""
    work_root = Path(tempfile.mkdtemp(prefix="bench-rtp-"))
    recorder = Recorder(
        spool_root=work_root / "spool", store=LocalStore(work_root / "store"), executor=None
    )
    allocator = PortAllocator(*PORT_RANGE)
    legs: list[tuple[RtpCallerTransport, str]] = []
    for index in range(calls):
        call_id = f"bench-rtp-{index:04d}"
        recorder.open_call(call_id, caller_codec=Codec.PCMU, agent_codec=Codec.PCMU)
        transport = RtpCallerTransport(
            codec=Codec.PCMU,
            sink=JournalSink(recorder, call_id),
            host=HOST,
            ports=allocator,
            media_timeout_s=3600.0,
            max_datagram_bytes=kind.max_datagram_bytes,
        )
        await transport.start()
        legs.append((transport, call_id))
    ports = [transport.port for transport, _ in legs]
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    sender = context.Process(
        target=run_sender,
        args=(child_end, ports, warmup_s + measure_s + 1.0, sender_cpu),
        daemon=True,
    )
    sender.start()
    await asyncio.to_thread(parent_end.recv)  # "ready"
    lags_ms: list[float] = []
    tasks = [
        asyncio.create_task(tick_agent_audio(legs, recorder)),
        asyncio.create_task(probe_lag(lags_ms)),
        asyncio.create_task(flush_journals(recorder)),
    ]
    await asyncio.sleep(warmup_s)
    (user_start_s, sys_start_s), wall_start_s = cpu_seconds(), time.perf_counter()
    wait_start_s = runqueue_wait_s()
    handled_start = sum(t.stats.packets_in + t.stats.packets_out for t, _ in legs)
    errors_start = read_udp_rcvbuf_errors()
    lags_ms.clear()
    await asyncio.sleep(measure_s)
    (user_s, sys_s), wall_s = cpu_seconds(), time.perf_counter() - wall_start_s
    user_s, sys_s = user_s - user_start_s, sys_s - sys_start_s
    cpu_s = user_s + sys_s
    wait_s = runqueue_wait_s() - wait_start_s
    handled = sum(t.stats.packets_in + t.stats.packets_out for t, _ in legs) - handled_start
    window_lags_ms = list(lags_ms)
    report: dict[str, int] = await asyncio.to_thread(parent_end.recv)
    errors = read_udp_rcvbuf_errors() - errors_start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.to_thread(sender.join)
    # A server that fell behind still has datagrams queued in its sockets: they are late, not lost.
    received = -1
    while received != (received := sum(t.stats.packets_in for t, _ in legs)):  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    stats = [transport.stats for transport, _ in legs]
    journalled = recorder.stats().packets_recorded
    for transport, _ in legs:
        await transport.close()
    del recorder  # closes the journal files
    shutil.rmtree(work_root, ignore_errors=True)
    return RunResult(
        cpu_percent=100 * cpu_s / wall_s,
        sys_percent=100 * sys_s / wall_s,
        wait_percent=100 * wait_s / wall_s,
        us_per_packet=1e6 * cpu_s / max(handled, 1),
        sent=report["sent"],
        received=sum(s.packets_in for s in stats),
        dropped=sum(sum(s.dropped_in.values()) for s in stats),
        rcvbuf_errors=errors,
        lag_p50_ms=statistics.median(window_lags_ms),
        lag_p99_ms=percentile(window_lags_ms, 0.99),
        lag_max_ms=max(window_lags_ms),
        packets_out=sum(s.packets_out for s in stats),
        unsent=sum(s.unsent for s in stats),
        replies=report["replies"],
        journalled=journalled,
    )


def loop_kinds(names: list[str]) -> list[LoopKind]:
    """The loops asked for; uvloop only if it can be imported."""
    kinds = []
    for name in names:
        if name == "asyncio":
            kinds.append(LoopKind(name, asyncio.new_event_loop, 2048))
        elif name == "asyncio-stock":
            kinds.append(LoopKind(name, asyncio.new_event_loop, STOCK_READ_BYTES - 1))
        elif name == "uvloop":
            if importlib.util.find_spec("uvloop") is None:
                print("uvloop is not installed: skipped")
                continue
            uvloop = importlib.import_module("uvloop")  # optional: measured only when present
            kinds.append(LoopKind(name, uvloop.new_event_loop, 2048))
        else:
            raise SystemExit(f"unknown loop {name}")
    return kinds


def main() -> None:
    """Measure each loop at each N and print one table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", default="100,200,300,400", help="comma-separated N")
    parser.add_argument("--loops", default="asyncio,asyncio-stock,uvloop")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--sender-cpu", type=int, default=1)
    parser.add_argument(
        "--nice", type=int, default=0, help="niceness increment (negative needs root)"
    )
    args = parser.parse_args()
    quiet_logging()
    if args.nice:
        os.nice(args.nice)
    cpus = os.sched_getaffinity(0)
    server_cpu = args.server_cpu if args.server_cpu in cpus else None
    sender_cpu = args.sender_cpu if args.sender_cpu in cpus else None
    if server_cpu is not None:
        os.sched_setaffinity(0, {server_cpu})
    print(
        f"Plain-RTP capacity: PCMU 50 packets/s in and 50 out per call, caller and agent "
        f"journalled; server on CPU {server_cpu} (nice {os.nice(0)}), sender process on "
        f"CPU {sender_cpu}; "
        f"{args.warmup:g} s warm-up, {args.seconds:g} s measured; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    rows: list[list[Any]] = []
    verdicts = []
    kinds = loop_kinds(args.loops.split(","))
    # Loops alternate at each N so that a noisy neighbour spoils all of them alike.
    for calls in (int(n) for n in args.calls.split(",")):
        for kind in kinds:
            with asyncio.Runner(loop_factory=kind.factory) as runner:
                result = runner.run(serve(calls, kind, args.warmup, args.seconds, sender_cpu))
            lost = result.sent - result.received - result.dropped
            rows.append(
                [
                    kind.name,
                    calls,
                    f"{result.cpu_percent:.1f}",
                    f"{result.sys_percent:.1f}",
                    f"{result.us_per_packet:.1f}",
                    f"{result.wait_percent:.1f}",
                    f"{result.sent:,}",
                    f"{lost:,}",
                    result.dropped,
                    result.rcvbuf_errors,
                    f"{result.lag_p50_ms:.2f}",
                    f"{result.lag_p99_ms:.2f}",
                    f"{result.lag_max_ms:.1f}",
                    f"{result.packets_out:,}",
                    f"{result.replies:,}",
                ]
            )
            ok = lost == 0 and result.lag_p99_ms < TARGET_LAG_P99_MS
            verdicts.append((kind.name, calls, ok))
            expected_journal = result.received + result.packets_out + result.unsent
            if result.journalled != expected_journal:
                print(
                    f"note: {kind.name} N={calls}: journalled {result.journalled:,}, "
                    f"expected {expected_journal:,}"
                )
    print_table(
        [
            "loop",
            "calls",
            "server CPU %",
            "of which kernel %",
            "CPU us/packet",
            "waiting for CPU %",
            "sent to server",
            "lost in server",
            "dropped",
            "kernel RcvbufErrors",
            "lag p50 ms",
            "lag p99 ms",
            "lag max ms",
            "sent by server",
            "replies received",
        ],
        rows,
    )
    rows.sort(key=lambda row: [kind.name for kind in kinds].index(row[0]))
    for name in dict.fromkeys(name for name, _, _ in verdicts):
        passing = [calls for kind, calls, ok in verdicts if kind == name and ok]
        best = max(passing, default=0)
        verdict = "met" if best >= TARGET_CALLS else "MISSED"
        print(
            f"{name}: largest N with 0 loss and lag p99 < {TARGET_LAG_P99_MS:g} ms: {best}; "
            f"target >= {TARGET_CALLS} calls per core: {verdict}"
        )
    print(f"load average after the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
