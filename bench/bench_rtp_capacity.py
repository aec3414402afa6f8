"""Plain-RTP calls per core: N legs receiving and sending 50 packets/s each, journalled."""

# The shipped leg (transports/rtp.py) reads its own socket with recvmsg and kernel arrival
# stamps. The reference, measured in the same run against the same traffic, is a leg built on
# asyncio's own datagram endpoint (loop.create_datagram_endpoint) doing the same work per packet:
# its transport reads each datagram into a fresh 256 KiB buffer ("endpoint"); "endpoint-2k"
# lowers that read size to 2 KiB, as the server's leg did before it read the socket itself.

from __future__ import annotations

import argparse
import asyncio
import errno
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from common import print_table, quiet_logging, renice

from mediaserver.call_recording import CallRecording
from mediaserver.calls import SLICE_NS
from mediaserver.errors import RtpParseError
from mediaserver.recorder import Recorder
from mediaserver.recording.call import EndReason
from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.spool import CallSpool, Spool
from mediaserver.rtp.dtmf_detector import DtmfDigit
from mediaserver.rtp.media_packet import MediaPacket
from mediaserver.rtp.packet import is_rtcp, parse_rtp_header
from mediaserver.rtp.sequencer import RtpSequencer
from mediaserver.transports.port_allocator import PortAllocator
from mediaserver.transports.rtp import RtpCallerTransport
from mediaserver.transports.udp_port import RECEIVE_BUFFER_BYTES

HOST = "127.0.0.1"
PACKET_INTERVAL_S = 0.020
PCMU_PAYLOAD_TYPE = 0  # RFC 3551 table 4
PCMU_SAMPLES = 160  # 20 ms at 8 kHz
PCMU_PAYLOAD = b"\xff" * PCMU_SAMPLES  # mu-law silence
SENDER_SLOTS = 20  # the sender spreads its calls over 20 one-millisecond slots per 20 ms
LAG_PROBE_S = 0.010
PORT_RANGE = (30000, 39998)
SMALL_READ_BYTES = 2048  # the read size of "endpoint-2k", and the shipped leg's largest datagram
# RFC 3550 §5.1: V=2, no padding, extension or CSRC | M PT | sequence | timestamp | SSRC.
_RTP_HEADER = struct.Struct("!BBHII")
_FIRST_OCTET = 0x80
_MARKER_BIT = 0x80
TARGET_CALLS = 300
TARGET_LAG_P99_MS = 10.0
RECVMSG = "recvmsg"
ENDPOINT = "endpoint"
ENDPOINT_2K = "endpoint-2k"
PATHS = (RECVMSG, ENDPOINT, ENDPOINT_2K)


@dataclass(frozen=True, slots=True)
class LoopKind:
    """An event loop to measure."""

    name: str
    factory: Callable[[], asyncio.AbstractEventLoop]


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one (loop, receive path, N) run measured."""

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
    """What the call session does per packet when no agent listens: journal it (CallerMediaSink)."""

    __slots__ = ("_record",)

    def __init__(self, recording: CallRecording) -> None:
        self._record = recording.record

    def on_caller_packet(self, packet: MediaPacket) -> None:
        """Journal the caller's packet as received."""
        self._record(Channel.CALLER, packet)

    def on_audio_sent(self, packet: MediaPacket) -> None:
        """Journal the packet the leg sent, as sent, on the agent channel."""
        self._record(Channel.AGENT, packet)

    def on_caller_dtmf(self, digit: DtmfDigit, ssrc: int, arrival_ns: int) -> None:
        """The bench's callers press no keys (the legs negotiate no telephone-event type)."""
        raise RuntimeError(f"a benchmark caller pressed {digit}")

    def on_caller_ended(self, reason: EndReason) -> None:
        """A leg ending mid-run would spoil the figures."""
        raise RuntimeError(f"a benchmark leg ended: {reason.value}")


class BenchLeg(Protocol):
    """What the benchmark asks of a caller leg: the shipped transport or the reference."""

    packets_in: int
    packets_out: int
    unsent: int

    @property
    def payload_type(self) -> int:
        """The payload type the leg sends."""
        ...

    async def start(self) -> int:
        """Bind a port and start reading; returns the port."""
        ...

    def send_audio(self, packet: MediaPacket) -> None:
        """Send one packet to the caller now and report it to the sink."""
        ...

    def drop_counts(self) -> Mapping[str, int]:
        """Datagrams that did not reach the sink, by reason."""
        ...

    async def close(self) -> None:
        """Stop reading and release the port."""
        ...


class EndpointLeg(asyncio.DatagramProtocol):
    """The reference leg: asyncio's datagram endpoint, the same checks and sink calls per packet."""

    def __init__(
        self,
        *,
        sink: JournalSink,
        ports: PortAllocator,
        read_bytes: int | None,
        payload_type: int = PCMU_PAYLOAD_TYPE,
    ) -> None:
        self.payload_type = payload_type
        self._sink = sink
        self._ports = ports
        self._read_bytes = read_bytes  # None: the loop's own read size
        self._transport: asyncio.DatagramTransport | None = None
        self._peer: tuple[Any, ...] | None = None
        self.port: int | None = None
        self.packets_in = 0
        self.packets_out = 0
        self.unsent = 0
        self._dropped: dict[str, int] = {}

    async def start(self) -> int:
        """Bind a port of the range on the running loop's own datagram endpoint."""
        loop = asyncio.get_running_loop()
        taken_elsewhere: list[int] = []
        try:
            while True:
                port = self._ports.allocate()
                try:
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: self, local_addr=(HOST, port)
                    )
                    break
                except OSError as error:
                    if error.errno != errno.EADDRINUSE:
                        raise
                    taken_elsewhere.append(port)  # held until the search ends, as the leg does
        finally:
            for busy_port in taken_elsewhere:
                self._ports.release(busy_port)
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        if self._read_bytes is not None:
            # `max_size` is the per-recvfrom read size of asyncio.selector_events' datagram
            # transport, a class attribute (256 KiB) that an instance may shadow.
            if not isinstance(getattr(type(transport), "max_size", None), int):
                raise RuntimeError(f"{type(transport).__name__} has no read size to lower")
            setattr(transport, "max_size", self._read_bytes + 1)  # noqa: B010 - not in stubs
        self._transport = transport
        self.port = port
        return port

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """Deliver one RTP packet of the peer to the sink, as transports/rtp.py does."""
        arrival_ns = time.monotonic_ns()
        if addr != self._peer and self._peer is not None:
            self._drop("wrong_source")
            return
        if len(data) > SMALL_READ_BYTES or is_rtcp(data):
            self._drop("malformed")  # the traffic has neither: counted, never expected
            return
        try:
            header = parse_rtp_header(data)
        except RtpParseError:
            self._drop("malformed")
            return
        if header.payload_type != self.payload_type:
            self._drop("wrong_payload_type")
            return
        self._peer = addr
        self.packets_in += 1
        self._sink.on_caller_packet(
            MediaPacket(
                arrival_ns,
                header.timestamp,
                header.sequence,
                header.ssrc,
                header.payload_type,
                header.marker,
                data[header.payload_offset : header.payload_end],
            )
        )

    def send_audio(self, packet: MediaPacket) -> None:
        """Send one packet through the endpoint and report it with its send time."""
        transport, peer = self._transport, self._peer
        if transport is None or peer is None or transport.is_closing():
            self.unsent += 1
            return
        second_octet = self.payload_type | (_MARKER_BIT if packet.marker else 0)
        header = _RTP_HEADER.pack(
            _FIRST_OCTET, second_octet, packet.sequence, packet.rtp_timestamp, packet.ssrc
        )
        transport.sendto(header + packet.payload, peer)
        self.packets_out += 1
        self._sink.on_audio_sent(
            packet._replace(arrival_ns=time.monotonic_ns(), payload_type=self.payload_type)
        )

    def drop_counts(self) -> Mapping[str, int]:
        """Datagrams dropped before the sink, by reason."""
        return dict(self._dropped)

    async def close(self) -> None:
        """Close the endpoint and give the port back."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self.port is not None:
            self._ports.release(self.port)
            self.port = None

    def _drop(self, reason: str) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + 1


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


@dataclass(slots=True)
class BenchCall:
    """One call of the run: its leg, its recording and the numbering of what it sends."""

    leg: BenchLeg
    recording: CallRecording
    sequencer: RtpSequencer


async def tick_agent_audio(calls: list[BenchCall]) -> None:
    """The shared 20 ms pacer: one PCMU frame to every leg, numbered by the call's sequencer."""
    # As mediaserver.calls paces: an absolute schedule, and a yield between slices of calls.
    loop = asyncio.get_running_loop()
    started_s = loop.time()
    tick = 0
    while True:
        tick += 1
        await asyncio.sleep(max(0.0, started_s + tick * PACKET_INTERVAL_S - loop.time()))
        slice_ends_ns = time.monotonic_ns() + SLICE_NS
        for call in calls:
            if time.monotonic_ns() >= slice_ends_ns:
                await asyncio.sleep(0)
                slice_ends_ns = time.monotonic_ns() + SLICE_NS
            leg = call.leg
            leg.send_audio(call.sequencer.number(tick, PCMU_PAYLOAD, leg.payload_type))


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


def forget_ended_call(spool: CallSpool, reason: EndReason) -> None:
    """Ended recordings are not built: the run's spool is deleted as a whole."""


def make_leg(path: str, sink: JournalSink, ports: PortAllocator) -> BenchLeg:
    """A caller leg on the receive path asked for."""
    if path == RECVMSG:
        return RtpCallerTransport(
            codec=Codec.PCMU, sink=sink, host=HOST, ports=ports, media_timeout_s=3600.0
        )
    read_bytes = SMALL_READ_BYTES if path == ENDPOINT_2K else None
    return EndpointLeg(sink=sink, ports=ports, read_bytes=read_bytes)


def count(calls: list[BenchCall], what: Callable[[BenchLeg], int]) -> int:
    """A counter summed over every call's leg."""
    return sum(what(call.leg) for call in calls)


async def serve(
    calls_n: int, path: str, warmup_s: float, measure_s: float, sender_cpu: int | None
) -> RunResult:
    """Run N legs against a sender process and measure the measurement window."""
    work_root = Path(tempfile.mkdtemp(prefix="bench-rtp-"))
    recorder = Recorder(spool=Spool(work_root / "spool"), on_call_ended=forget_ended_call)
    allocator = PortAllocator(*PORT_RANGE)
    calls: list[BenchCall] = []
    ports: list[int] = []
    for index in range(calls_n):
        recording = recorder.open_call(
            f"bench-rtp-{index:04d}", caller_codec=Codec.PCMU, agent_codec=Codec.PCMU
        )
        leg = make_leg(path, JournalSink(recording), allocator)
        ports.append(await leg.start())
        calls.append(BenchCall(leg, recording, RtpSequencer(PCMU_SAMPLES)))
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
        asyncio.create_task(tick_agent_audio(calls)),
        asyncio.create_task(probe_lag(lags_ms)),
        asyncio.create_task(flush_journals(recorder)),
    ]
    await asyncio.sleep(warmup_s)
    (user_start_s, sys_start_s), wall_start_s = cpu_seconds(), time.perf_counter()
    wait_start_s = runqueue_wait_s()
    handled_start = count(calls, lambda leg: leg.packets_in + leg.packets_out)
    errors_start = read_udp_rcvbuf_errors()
    lags_ms.clear()
    await asyncio.sleep(measure_s)
    (user_s, sys_s), wall_s = cpu_seconds(), time.perf_counter() - wall_start_s
    user_s, sys_s = user_s - user_start_s, sys_s - sys_start_s
    cpu_s = user_s + sys_s
    wait_s = runqueue_wait_s() - wait_start_s
    handled = count(calls, lambda leg: leg.packets_in + leg.packets_out) - handled_start
    window_lags_ms = list(lags_ms)
    report: dict[str, int] = await asyncio.to_thread(parent_end.recv)
    errors = read_udp_rcvbuf_errors() - errors_start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.to_thread(sender.join)
    # A server that fell behind still has datagrams queued in its sockets: they are late, not lost.
    received = -1
    while received != (received := count(calls, lambda leg: leg.packets_in)):  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    journalled = recorder.stats().packets_recorded
    result = RunResult(
        cpu_percent=100 * cpu_s / wall_s,
        sys_percent=100 * sys_s / wall_s,
        wait_percent=100 * wait_s / wall_s,
        us_per_packet=1e6 * cpu_s / max(handled, 1),
        sent=report["sent"],
        received=received,
        dropped=count(calls, lambda leg: sum(leg.drop_counts().values())),
        rcvbuf_errors=errors,
        lag_p50_ms=statistics.median(window_lags_ms),
        lag_p99_ms=percentile(window_lags_ms, 0.99),
        lag_max_ms=max(window_lags_ms),
        packets_out=count(calls, lambda leg: leg.packets_out),
        unsent=count(calls, lambda leg: leg.unsent),
        replies=report["replies"],
        journalled=journalled,
    )
    for call in calls:
        await call.leg.close()
        for channel in Channel:
            call.recording.end(channel, EndReason.SHUTDOWN)  # closes the journal files
    shutil.rmtree(work_root, ignore_errors=True)
    return result


def loop_kinds(names: list[str]) -> list[LoopKind]:
    """The loops asked for; uvloop only if it can be imported."""
    kinds = []
    for name in names:
        if name == "asyncio":
            kinds.append(LoopKind(name, asyncio.new_event_loop))
        elif name == "uvloop":
            if importlib.util.find_spec("uvloop") is None:
                print("uvloop is not installed: skipped")
                continue
            uvloop = importlib.import_module("uvloop")  # optional: measured only when present
            kinds.append(LoopKind(name, uvloop.new_event_loop))
        else:
            raise SystemExit(f"unknown loop {name}")
    return kinds


def main() -> None:
    """Measure each receive path on each loop at each N and print one table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", default="100,200,300,400", help="comma-separated N")
    parser.add_argument("--loops", default="asyncio,uvloop", help="event loops: asyncio,uvloop")
    parser.add_argument(
        "--paths",
        default=",".join(PATHS),
        help=f"receive paths: {RECVMSG} (the shipped leg), {ENDPOINT}, {ENDPOINT_2K} (references)",
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--sender-cpu", type=int, default=1)
    parser.add_argument(
        "--nice", type=int, default=0, help="niceness increment (negative needs root)"
    )
    args = parser.parse_args()
    paths = args.paths.split(",")
    if unknown := sorted(set(paths) - set(PATHS)):
        raise SystemExit(f"unknown receive path(s): {', '.join(unknown)}")
    quiet_logging()
    if args.nice:
        renice(args.nice)
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
    variants: list[tuple[LoopKind, str]] = []
    for kind in loop_kinds(args.loops.split(",")):
        for path in paths:
            if kind.name == "uvloop" and path == ENDPOINT_2K:
                print(f"uvloop's datagram transport has no read size to lower: {path} skipped")
                continue
            variants.append((kind, path))
    rows: list[list[Any]] = []
    verdicts = []
    # The variants alternate at each N so that a noisy neighbour spoils all of them alike.
    for calls in (int(n) for n in args.calls.split(",")):
        for kind, path in variants:
            name = f"{path} ({kind.name})"
            with asyncio.Runner(loop_factory=kind.factory) as runner:
                result = runner.run(serve(calls, path, args.warmup, args.seconds, sender_cpu))
            # Every datagram the sender sends is valid RTP of the leg's peer: whatever did not
            # reach the sink is lost, whether the leg or the kernel dropped it.
            lost = result.sent - result.received
            rows.append(
                [
                    name,
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
            verdicts.append((name, calls, ok))
            expected_journal = result.received + result.packets_out
            if result.journalled != expected_journal:
                print(
                    f"note: {name} N={calls}: journalled {result.journalled:,}, "
                    f"expected {expected_journal:,}"
                )
            if result.unsent:
                print(f"note: {name} N={calls}: {result.unsent:,} packets not sent (no peer yet)")
    print_table(
        [
            "receive path (loop)",
            "calls",
            "server CPU %",
            "of which kernel %",
            "CPU us/packet",
            "waiting for CPU %",
            "sent to server",
            "lost in server",
            "dropped (counted)",
            "kernel RcvbufErrors",
            "lag p50 ms",
            "lag p99 ms",
            "lag max ms",
            "sent by server",
            "replies received",
        ],
        rows,
    )
    for name in dict.fromkeys(name for name, _, _ in verdicts):
        passing = [calls for variant, calls, ok in verdicts if variant == name and ok]
        best = max(passing, default=0)
        verdict = "met" if best >= TARGET_CALLS else "MISSED"
        reference = "" if name.startswith(RECVMSG) else " (reference)"
        print(
            f"{name}{reference}: largest N with 0 loss and lag p99 < {TARGET_LAG_P99_MS:g} ms: "
            f"{best}; target >= {TARGET_CALLS} calls per core: {verdict}"
        )
    print(f"load average after the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
