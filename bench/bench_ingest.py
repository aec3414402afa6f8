"""Packets per second on one core for the live ingest path transports use, datagram to journal."""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from aiortc.rtp import RtpPacket as AiortcRtpPacket
from common import (
    PACKET_DURATION_NS,
    PACKETS_PER_SECOND,
    build_opus_rtp_stream,
    median_rate,
    print_table,
    quiet_logging,
    time_repeats,
)

from mediaserver.call_recording import JOURNAL_BUFFER_BYTES
from mediaserver.calls import CallHub
from mediaserver.recorder import Recorder
from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.journal import (
    HEADER_SIZE,
    RECORD_HEADER_SIZE,
    JournalHeader,
    JournalWriter,
)
from mediaserver.recording.spool import Spool
from mediaserver.rtp.media_packet import MediaPacket
from mediaserver.rtp.packet import parse_rtp_header
from mediaserver.session import CallSession
from mediaserver.transports.port_allocator import PortAllocator
from mediaserver.transports.rtp import RtpCallerTransport

TARGET_PACKETS_PER_S = 150_000
RECORDER_ROW = "transport + session + journal, flush/s"
REFERENCE_ROW = "reference: aiortc parse + list"
# The agent's packets reach the server a little after the caller's in the same 20 ms slot.
_AGENT_ARRIVAL_OFFSET_NS = 300_000

_PEER = ("127.0.0.1", 40000)
# One arriving datagram: (call id, channel, RTP bytes, arrival_ns).
Arrival = tuple[str, Channel, bytes, int]


def build_schedule(calls: int, packets: int) -> list[list[Arrival]]:
    """Arrivals grouped by simulated second: every 20 ms, each call's caller then agent packet."""
    per_stream = max(1, packets // (2 * calls))
    streams = {
        (call_index, channel): build_opus_rtp_stream(
            ssrc=0x10000 + 2 * call_index + side,
            count=per_stream,
            seed=2 * call_index + side,
        )
        for call_index in range(calls)
        for side, channel in enumerate(Channel)
    }
    seconds: list[list[Arrival]] = []
    for tick in range(per_stream):
        if tick % PACKETS_PER_SECOND == 0:
            seconds.append([])
        slot_ns = 1_000_000_000 + tick * PACKET_DURATION_NS
        for call_index in range(calls):
            call_id = f"bench-call-{call_index:04d}"
            caller = streams[call_index, Channel.CALLER][tick]
            agent = streams[call_index, Channel.AGENT][tick]
            seconds[-1].append((call_id, Channel.CALLER, caller, slot_ns))
            seconds[-1].append((call_id, Channel.AGENT, agent, slot_ns + _AGENT_ARRIVAL_OFFSET_NS))
    return seconds


def expected_journal_bytes(seconds: list[list[Arrival]], calls: int) -> int:
    """What the journals must hold on disk: headers plus each record's header and payload."""
    payload_bytes = sum(
        parse_rtp_header(data).payload_end - parse_rtp_header(data).payload_offset
        for batch in seconds
        for _, _, data, _ in batch
    )
    records = sum(len(batch) for batch in seconds)
    return 2 * calls * HEADER_SIZE + records * RECORD_HEADER_SIZE + payload_bytes


class Calls:
    """`calls` live calls as the server holds them: a session each, its RTP leg attached."""

    def __init__(self, calls: int, spool_root: Path) -> None:
        # Never started: no socket, no pacer, no flush loop; the benchmark flushes itself.
        self.recorder = Recorder(spool=Spool(spool_root), on_call_ended=lambda *_: None)
        hub = CallHub(self.recorder, send_silence=False)
        ports = PortAllocator(30000, 30000 + 2 * calls)
        self.sessions: dict[str, CallSession] = {}
        self.legs: dict[str, RtpCallerTransport] = {}
        for call_index in range(calls):
            session = hub.create(f"bench-call-{call_index:04d}", caller_codec=Codec.OPUS)
            leg = RtpCallerTransport(codec=Codec.OPUS, sink=session, host="127.0.0.1", ports=ports)
            session.attach_caller(leg)
            self.sessions[session.call_id] = session
            self.legs[session.call_id] = leg


def feed_calls(calls: Calls, seconds: list[list[Arrival]]) -> None:
    """The measured live path, once per packet, and one flush per simulated second.

    Caller datagrams go through the RTP leg's datagram handler (header parse, source and payload
    type checks, MediaPacket) into the session and its recording's journal, as the socket reader
    hands them over; agent packets go in as the leg reports them sent (`on_audio_sent`).
    """
    legs, sessions = calls.legs, calls.sessions
    for batch in seconds:
        for call_id, channel, data, arrival_ns in batch:
            if channel is Channel.CALLER:
                legs[call_id].handle_datagram(data, _PEER, arrival_ns)
            else:
                header = parse_rtp_header(data)
                sessions[call_id].on_audio_sent(
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
        calls.recorder.flush()


def time_recorder(
    seconds: list[list[Arrival]], calls: int, work_root: Path, repeats: int
) -> list[float]:
    """Time `feed_calls` on fresh calls and spool per repetition; check the first spool."""
    timings: list[float] = []
    for repeat in range(repeats):
        spool_root = work_root / f"spool-{repeat}"
        live = Calls(calls, spool_root)
        gc.collect()
        timings += time_repeats(partial(feed_calls, live, seconds), 1)
        if repeat == 0:
            check_spool(live, seconds, calls)
        del live  # closes the journal files
        gc.collect()
        shutil.rmtree(spool_root)
    return timings


def check_spool(calls: Calls, seconds: list[list[Arrival]], count: int) -> None:
    """Fail loudly unless every packet was recorded and reached the journal files."""
    calls.recorder.flush()
    arrivals = sum(len(batch) for batch in seconds)
    stats = calls.recorder.stats()
    if stats.packets_recorded != arrivals:
        raise RuntimeError(f"recorder counted {stats} for {arrivals} arrivals")
    on_disk = sum(
        recording.spool.journal_path(channel).stat().st_size
        for recording in calls.recorder.live_calls()
        for channel in Channel
    )
    expected = expected_journal_bytes(seconds, count)
    if on_disk != expected:
        raise RuntimeError(f"journals hold {on_disk} bytes, expected {expected}")


def time_parse(packets: list[bytes], repeats: int) -> list[float]:
    """Time parse_rtp_header alone over every packet."""

    def run() -> None:
        parse = parse_rtp_header
        for data in packets:
            parse(data)

    return time_repeats(run, repeats)


def time_journal_append(packets: list[bytes], work_root: Path, repeats: int) -> list[float]:
    """Time JournalWriter.append alone, fields parsed beforehand, into one real buffered file."""
    records = []
    for index, data in enumerate(packets):
        header = parse_rtp_header(data)
        records.append(
            MediaPacket(
                index * PACKET_DURATION_NS,
                header.timestamp,
                header.sequence,
                header.ssrc,
                header.payload_type,
                header.marker,
                data[header.payload_offset : header.payload_end],
            )
        )
    flush_every = PACKETS_PER_SECOND  # one channel's second, as the recorder flushes a journal
    path = work_root / "append.journal"
    timings = []
    for _ in range(repeats):
        with path.open("wb", buffering=JOURNAL_BUFFER_BYTES) as out:
            writer = JournalWriter(out, JournalHeader(Channel.CALLER, Codec.OPUS, 0, 0))
            append = writer.append
            gc.collect()

            def run(append: Callable[..., None] = append, writer: JournalWriter = writer) -> None:
                for index, record in enumerate(records):
                    append(record)
                    if index % flush_every == 0:
                        writer.flush()

            timings += time_repeats(run, 1)
        path.unlink()
    return timings


def time_aiortc_reference(seconds: list[list[Arrival]], repeats: int) -> list[float]:
    """Time the in-memory reference: aiortc's RtpPacket.parse, (timestamp, payload) to a list."""
    timings = []
    for _ in range(repeats):
        cache: dict[str, dict[Channel, list[tuple[int, bytes]]]] = {}
        for batch in seconds:
            for call_id, channel, _, _ in batch:
                cache.setdefault(call_id, {}).setdefault(channel, [])
        gc.collect()

        def run(cache: dict[str, dict[Channel, list[tuple[int, bytes]]]] = cache) -> None:
            parse = AiortcRtpPacket.parse
            for batch in seconds:
                for call_id, channel, data, _ in batch:
                    packet = parse(data)
                    cache[call_id][channel].append((packet.timestamp, packet.payload))

        timings += time_repeats(run, 1)
        del cache
    return timings


def time_harness(seconds: list[list[Arrival]], repeats: int) -> list[float]:
    """Time the loop that hands out arrivals, calling a function that does nothing."""

    def ignore(call_id: str, channel: Channel, data: bytes, arrival_ns: int) -> bool:
        return True

    def run() -> None:
        for batch in seconds:
            for call_id, channel, data, arrival_ns in batch:
                ignore(call_id, channel, data, arrival_ns)

    return time_repeats(run, repeats)


def main() -> None:
    """Build the traffic, time each path, print the table and the target."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--packets", type=int, default=1_000_000, help="packets per repetition")
    parser.add_argument("--calls", type=int, default=200, help="concurrent calls (2 channels each)")
    parser.add_argument("--repeats", type=int, default=5, help="repetitions; the median is shown")
    parser.add_argument("--spool", type=Path, default=None, help="directory for journals")
    args = parser.parse_args()
    quiet_logging()
    seconds = build_schedule(args.calls, args.packets)
    arrivals = sum(len(batch) for batch in seconds)
    packets = [data for batch in seconds for _, _, data, _ in batch]
    print(
        f"Live ingest, one thread: {args.calls} calls x 2 channels, {arrivals:,} packets "
        f"({len(seconds)} simulated s, flush once per s), {args.repeats} repetitions; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    work_root = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=args.spool))
    try:
        timings = {
            "harness loop alone (no-op call)": time_harness(seconds, args.repeats),
            "parse_rtp_header alone": time_parse(packets, args.repeats),
            "JournalWriter.append alone (1 file)": time_journal_append(
                packets, work_root, args.repeats
            ),
            RECORDER_ROW: time_recorder(seconds, args.calls, work_root, args.repeats),
            REFERENCE_ROW: time_aiortc_reference(seconds, args.repeats),
        }
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    rates = {name: median_rate(arrivals, elapsed_s) for name, elapsed_s in timings.items()}
    print_table(
        ["path", "packets/s (median)", "packets/s (best)", "us/packet (median)"],
        [
            (
                name,
                f"{rates[name]:,.0f}",
                f"{arrivals / min(elapsed_s):,.0f}",
                f"{1e6 / rates[name]:.2f}",
            )
            for name, elapsed_s in timings.items()
        ],
    )
    recorder_rate, reference_rate = rates[RECORDER_ROW], rates[REFERENCE_ROW]
    verdict = "met" if recorder_rate >= TARGET_PACKETS_PER_S else "MISSED"
    print(
        f"recorder path: {recorder_rate:,.0f} packets/s (median); "
        f"target >= {TARGET_PACKETS_PER_S:,}: {verdict} "
        f"({recorder_rate / TARGET_PACKETS_PER_S:.2f}x the target); "
        f"{recorder_rate / reference_rate:.2f}x the aiortc in-memory reference"
    )
    print(f"load average after the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
