"""Resident memory per open call as calls get longer: the recorder's journals against lists."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aiortc.rtp import RtpPacket as AiortcRtpPacket
from common import (
    PACKET_DURATION_NS,
    PACKET_DURATION_SAMPLES,
    PACKETS_PER_SECOND,
    PAYLOAD_BYTES_RANGE,
    build_opus_payloads,
    build_opus_rtp_datagram,
    check_fast_builder,
    print_table,
    quiet_logging,
    read_mem_available_kb,
    read_rss_kb,
)

import mediaserver.call_recording
from mediaserver.call_recording import CallRecording
from mediaserver.recorder import Recorder
from mediaserver.recording.call import EndReason
from mediaserver.recording.channel import Channel
from mediaserver.recording.journal import HEADER_SIZE, RECORD_HEADER_SIZE
from mediaserver.recording.spool import CallSpool, Spool
from mediaserver.rtp.media_packet import MediaPacket
from mediaserver.rtp.packet import parse_rtp_header

TARGET_KB_PER_CALL = 200
CHECKPOINT_MINUTES = (1, 5, 10)
SHIPPED_BUFFER_BYTES = mediaserver.call_recording.JOURNAL_BUFFER_BYTES
PAYLOAD_POOL_SIZE = 4096
MEAN_PAYLOAD_BYTES = 70
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
# The list variant stops before it can push the machine into swapping or the OOM killer.
MIN_AVAILABLE_KB = 2 * 1024 * 1024
_SECONDS_PER_MINUTE = 60


@dataclass
class VariantResult:
    """What one variant's subprocess measured, sent to the parent as one JSON line."""

    variant: str
    calls: int
    buffer_bytes: int | None
    baseline_kb: int
    opened_kb: int
    rss_kb_by_minute: dict[int, int] = field(default_factory=dict)
    packets: int = 0
    elapsed_s: float = 0.0
    stopped_early: str = ""

    def kb_per_call(self, rss_kb: int) -> float:
        """RSS growth since before the calls opened, per call."""
        return (rss_kb - self.baseline_kb) / self.calls


# Hands one datagram to a variant: (call id, channel, RTP bytes, arrival_ns).
RecordRtp = Callable[[str, Channel, bytes, int], bool]
Flush = Callable[[], None]


def open_recorder_calls(work_root: Path, call_ids: list[str]) -> tuple[RecordRtp, Flush]:
    """The recorder variant: each datagram parsed as the RTP leg does, then journalled."""
    recorder = Recorder(spool=Spool(work_root / "spool"), on_call_ended=refuse_ended_call)
    recordings: dict[str, CallRecording] = {
        call_id: recorder.open_call(call_id) for call_id in call_ids
    }

    def record_rtp(call_id: str, channel: Channel, data: bytes, arrival_ns: int) -> bool:
        # What transports/rtp.py hands its sink for one datagram.
        header = parse_rtp_header(data)
        packet = MediaPacket(
            arrival_ns,
            header.timestamp,
            header.sequence,
            header.ssrc,
            header.payload_type,
            header.marker,
            data[header.payload_offset : header.payload_end],
        )
        return recordings[call_id].record(channel, packet)

    return record_rtp, recorder.flush


def refuse_ended_call(spool: CallSpool, reason: EndReason) -> None:
    """No call ends while the memory is measured: one that does would spoil the figures."""
    raise RuntimeError(f"call {spool.call_id} ended during the benchmark: {reason.value}")


def open_list_calls(call_ids: list[str]) -> tuple[RecordRtp, Flush]:
    """The in-memory variant: aiortc parses, (timestamp, payload) goes to the call's list."""
    cache: dict[str, dict[Channel, list[tuple[int, bytes]]]] = {
        call_id: {channel: [] for channel in Channel} for call_id in call_ids
    }
    parse = AiortcRtpPacket.parse

    def record_rtp(call_id: str, channel: Channel, data: bytes, arrival_ns: int) -> bool:
        packet = parse(data)
        cache[call_id][channel].append((packet.timestamp, packet.payload))
        return True

    def flush() -> None:
        """Nothing to flush: the packets are in memory."""

    return record_rtp, flush


def run_variant(args: argparse.Namespace) -> VariantResult:
    """Simulate the calls in this process as fast as possible and sample RSS at the checkpoints."""
    quiet_logging()
    check_fast_builder()
    payloads = build_opus_payloads(PAYLOAD_POOL_SIZE)
    if args.buffer_bytes is not None:
        # Bench-only experiment: a recording reads this module constant when it opens a journal.
        mediaserver.call_recording.JOURNAL_BUFFER_BYTES = args.buffer_bytes
    work_root = Path(tempfile.mkdtemp(prefix="bench-memory-", dir=args.spool))
    try:
        call_ids = [f"mem-call-{index:04d}" for index in range(args.calls)]
        # (call id, channel, ssrc, first sequence, first timestamp) of each of the 2 x calls streams
        streams = [
            (call_id, channel, 0x20000 + 2 * index + side, 7 * index, 1000 * index)
            for index, call_id in enumerate(call_ids)
            for side, channel in enumerate(Channel)
        ]
        result = VariantResult(args.variant, args.calls, args.buffer_bytes, read_rss_kb(), 0)
        if args.variant == "recorder":
            record_rtp, flush = open_recorder_calls(work_root, call_ids)
        else:
            record_rtp, flush = open_list_calls(call_ids)
        result.opened_kb = read_rss_kb()
        started_s = time.perf_counter()
        tick = 0
        for second in range(args.minutes * _SECONDS_PER_MINUTE):
            for _ in range(PACKETS_PER_SECOND):
                arrival_ns = 1_000_000_000 + tick * PACKET_DURATION_NS
                payload = payloads[tick % PAYLOAD_POOL_SIZE]
                for call_id, channel, ssrc, first_sequence, first_timestamp in streams:
                    data = build_opus_rtp_datagram(
                        first_sequence + tick,
                        first_timestamp + tick * PACKET_DURATION_SAMPLES,
                        ssrc,
                        payload,
                    )
                    record_rtp(call_id, channel, data, arrival_ns)
                tick += 1
            if (second + 1) % args.flush_every_s == 0:
                flush()
            minute, into_minute = divmod(second + 1, _SECONDS_PER_MINUTE)
            if into_minute == 0 and minute in args.checkpoints:
                result.rss_kb_by_minute[minute] = read_rss_kb()
                elapsed_s = time.perf_counter() - started_s
                print(
                    f"  {args.variant}: minute {minute}/{args.minutes}, "
                    f"RSS {result.rss_kb_by_minute[minute] / 1024:,.0f} MiB, {elapsed_s:.0f} s",
                    file=sys.stderr,
                )
            if second % 10 == 0 and read_mem_available_kb() < MIN_AVAILABLE_KB:
                result.stopped_early = f"stopped at {second} s: under 2 GiB of memory left"
                break
        flush()
        result.packets = tick * len(streams)
        result.elapsed_s = time.perf_counter() - started_s
        if args.variant == "recorder":
            check_journal_sizes(work_root / "spool", result.packets, len(streams))
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    return result


def check_journal_sizes(spool_root: Path, packets: int, streams: int) -> None:
    """Fail loudly unless the journals on disk hold every packet (headers plus records)."""
    on_disk = sum(path.stat().st_size for path in spool_root.glob("*/*.journal"))
    record_headers = packets * RECORD_HEADER_SIZE + streams * HEADER_SIZE
    # Payloads come from a pool whose sizes vary: bound the total rather than replay the pool.
    low, high = PAYLOAD_BYTES_RANGE
    if not record_headers + packets * low <= on_disk <= record_headers + packets * high:
        raise RuntimeError(f"journals hold {on_disk} bytes for {packets} packets")


def run_child(
    variant: str, args: argparse.Namespace, buffer_bytes: int | None = None
) -> VariantResult:
    """Run one variant in its own interpreter, so that no memory is shared with another."""
    sys.stdout.flush()  # keep this process's lines ahead of the child's progress lines
    command = [sys.executable, __file__, "--variant", variant, "--calls", str(args.calls)]
    command += ["--minutes", str(args.minutes), "--flush-every-s", str(args.flush_every_s)]
    if args.spool is not None:
        command += ["--spool", str(args.spool)]
    if buffer_bytes is not None:
        command += ["--buffer-bytes", str(buffer_bytes)]
    completed = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    data = json.loads(completed.stdout.strip().splitlines()[-1])
    data["rss_kb_by_minute"] = {int(k): v for k, v in data["rss_kb_by_minute"].items()}
    return VariantResult(**data)


def check_disk(args: argparse.Namespace) -> None:
    """Refuse to start if the spool's file system cannot take the journals."""
    spool = args.spool or Path(tempfile.gettempdir())
    packets = args.calls * 2 * PACKETS_PER_SECOND * _SECONDS_PER_MINUTE * args.minutes
    runs = 1 + len(args.alt_buffer_bytes)  # each recorder run deletes its spool when it ends
    needed = packets * (RECORD_HEADER_SIZE + MEAN_PAYLOAD_BYTES)
    free = shutil.disk_usage(spool).free
    print(
        f"spool {spool}: {free / 1e9:.1f} GB free, each recorder run writes "
        f"{needed / 1e9:.1f} GB ({runs} run(s), one at a time)"
    )
    if free < 1.5 * needed:
        sys.exit(f"not enough disk under {spool}: pass --spool DIR on a larger file system")


def buffer_label(buffer_bytes: int | None) -> str:
    """How a journal buffer size reads in the table: "64 KiB buffers", "unbuffered"."""
    if buffer_bytes is None:
        buffer_bytes = SHIPPED_BUFFER_BYTES
    if buffer_bytes == 0:
        return "unbuffered"
    if buffer_bytes % 1024 == 0:
        return f"{buffer_bytes // 1024} KiB buffers"
    return f"{buffer_bytes} B buffers"


def format_kb(value: float) -> str:
    """KB with no decimals."""
    return f"{value:,.0f}"


def print_buffer_estimate(flush_every_s: int) -> None:
    """Explain how much of each journal's buffer is resident: the pages written between flushes."""
    written = flush_every_s * PACKETS_PER_SECOND * (RECORD_HEADER_SIZE + MEAN_PAYLOAD_BYTES)
    touched = min(SHIPPED_BUFFER_BYTES, written)
    # The buffer starts anywhere in a page, so `touched` bytes span 1 + touched / page pages on
    # average.
    resident_kb = 2 * (PAGE_BYTES + touched) / 1024
    if written >= SHIPPED_BUFFER_BYTES:
        refill = "fills each buffer completely between flushes"
    else:
        refill = f"refills only the first ~{written:,} B of each"
    print(
        f"journal buffers: 2 x {SHIPPED_BUFFER_BYTES // 1024} KiB allocated per call; a flush "
        f"every {flush_every_s} s {refill}, so about {resident_kb:.0f} KiB per call of them "
        "is resident (estimate)"
    )


def print_report(results: list[VariantResult], checkpoints: list[int], flush_every_s: int) -> None:
    """Print minutes against KB per call for every variant, then the verdict on the target."""
    recorder, _, *alternatives = results
    headers = ["minutes", "recorder KB/call", "list KB/call"]
    headers += [f"recorder {buffer_label(alt.buffer_bytes)} KB/call" for alt in alternatives]
    rows = []
    for minute in [0, *checkpoints]:
        row = [str(minute)]
        for result in results:
            rss_kb = result.opened_kb if minute == 0 else result.rss_kb_by_minute.get(minute)
            row.append("-" if rss_kb is None else format_kb(result.kb_per_call(rss_kb)))
        rows.append(row)
    print_table(headers, rows)
    for result in results:
        label = result.variant
        if result.buffer_bytes is not None:
            label += f" {buffer_label(result.buffer_bytes)} (bench-only monkeypatch)"
        print(
            f"{label}: {result.packets:,} packets built and fed in {result.elapsed_s:.0f} s "
            f"({result.packets / result.elapsed_s:,.0f} packets/s), "
            f"RSS before the calls {result.baseline_kb / 1024:,.0f} MiB"
            + (f"; {result.stopped_early}" if result.stopped_early else "")
        )
    last = max(recorder.rss_kb_by_minute)
    recorder_kb = recorder.kb_per_call(recorder.rss_kb_by_minute[last])
    first = min(recorder.rss_kb_by_minute)
    first_kb = recorder.kb_per_call(recorder.rss_kb_by_minute[first])
    verdict = "met" if recorder_kb <= TARGET_KB_PER_CALL else "MISSED"
    growth = f"; growth from minute {first} to {last}: {recorder_kb - first_kb:+,.1f} KB/call"
    print(
        f"recorder: {recorder_kb:,.0f} KB/call at {last} min (target <= {TARGET_KB_PER_CALL}: "
        f"{verdict}){growth if last > first else ''}"
    )
    print_buffer_estimate(flush_every_s)
    for alt in alternatives:
        alt_kb = alt.kb_per_call(alt.rss_kb_by_minute[max(alt.rss_kb_by_minute)])
        print(
            f"{buffer_label(SHIPPED_BUFFER_BYTES)} -> {buffer_label(alt.buffer_bytes)} "
            f"(bench-only monkeypatch): {recorder_kb:,.0f} -> {alt_kb:,.0f} KB/call at {last} min"
        )


def main() -> None:
    """Parent: run each variant in a subprocess and compare; child: run one variant."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", choices=["recorder", "list"], default=None)
    parser.add_argument("--calls", type=int, default=500, help="concurrent calls")
    parser.add_argument("--minutes", type=int, default=10, help="simulated call length")
    parser.add_argument("--spool", type=Path, default=None, help="directory for the journals")
    parser.add_argument(
        "--buffer-bytes",
        type=int,
        default=None,
        help="child only: journal buffer size, monkeypatched into the recorder for this bench",
    )
    parser.add_argument(
        "--flush-every-s",
        type=int,
        default=1,
        help="simulated seconds between recorder flushes (the server flushes every second)",
    )
    parser.add_argument(
        "--alt-buffer-bytes",
        type=int,
        action="append",
        default=[],
        help="parent: also run the recorder with this journal buffer size (repeatable)",
    )
    args = parser.parse_args()
    args.checkpoints = sorted({m for m in CHECKPOINT_MINUTES if m <= args.minutes} | {args.minutes})
    if args.variant is not None:
        result = run_variant(args)
        print(json.dumps(asdict(result)))
        return
    if args.spool is not None:
        args.spool.mkdir(parents=True, exist_ok=True)
    print(
        f"RSS per call: {args.calls} concurrent calls x 2 channels x "
        f"{PACKETS_PER_SECOND} packets/s, "
        f"{args.minutes} simulated minutes, each variant in its own process; "
        f"KB/call = (RSS - RSS before the calls opened) / calls, KB = 1024 bytes"
    )
    check_disk(args)
    results = [run_child("recorder", args), run_child("list", args)]
    results += [run_child("recorder", args, buffer_bytes) for buffer_bytes in args.alt_buffer_bytes]
    print_report(results, args.checkpoints, args.flush_every_s)


if __name__ == "__main__":
    main()
