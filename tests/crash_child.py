"""A recorder process to be killed: it records one call and reports on stdout how much it has fed.

Run as `python tests/crash_child.py MODE SPOOL_ROOT STORE_ROOT CALL_ID PACKETS`, where MODE is
- `realtime`: the recorder's loops run (flush every 1.0 s); both channels are fed 20 ms Opus
  packets at 50 packets/s through `record_rtp`, and after each slot the number of packets fed
  per channel is printed; the caller carries a tone at CALLER_MARKER_S, the agent at AGENT_MARKER_S;
- `burst`: PACKETS packets per channel are recorded at once with arrival times 20 ms apart, the
  journals flushed, and `flushed PACKETS LAST_CALLER_BYTES LAST_AGENT_BYTES` printed (the sizes of
  the last payloads, so the parent can tear the last record precisely).
Either way the process then waits to be killed; it never ends a call by itself.
"""

import asyncio
import struct
import sys
from pathlib import Path

from mediaserver.log import configure_logging
from mediaserver.recording.channel import Channel
from mediaserver.storage_backends.local import LocalStore

from recorder_rig import RecorderRig
from rtp_sender import TEMPLATE_LEAD_PACKETS, marker_template, silence_payload

CALLER_HZ = 500.0
AGENT_HZ = 1300.0
CALLER_MARKER_S = 1.0
AGENT_MARKER_S = 2.0
FLUSH_INTERVAL_S = 1.0
PACKET_S = 0.02
FRAME_SAMPLES = 960
OPUS_PAYLOAD_TYPE = 111
SSRCS = {Channel.CALLER: 0x0CA11E40, Channel.AGENT: 0x0A6E4700}


def build_rtp(sequence: int, timestamp: int, ssrc: int, payload: bytes) -> bytes:
    """An RTP packet with a 12-byte fixed header (RFC 3550 §5.1): V=2, no padding/extension/CSRC."""
    return struct.pack("!BBHII", 0x80, OPUS_PAYLOAD_TYPE, sequence, timestamp, ssrc) + payload


def build_payloads(count: int, freq_hz: float, marker_s: float) -> list[bytes]:
    """Quiet 20 ms Opus packets with one tone marker starting at `marker_s` of media time."""
    payloads = [silence_payload()] * count
    first = round(marker_s / PACKET_S) - TEMPLATE_LEAD_PACKETS
    template = marker_template(freq_hz)
    payloads[first : first + len(template)] = template
    return payloads[:count]


def build_packet(channel: Channel, index: int, payload: bytes) -> bytes:
    """The RTP packet of slot `index` of a channel."""
    return build_rtp(1000 + index, 90_000 + index * FRAME_SAMPLES, SSRCS[channel], payload)


async def feed_realtime(recorder: RecorderRig, call_id: str, packet_count: int) -> None:
    """Feed both channels one packet per 20 ms slot, on a fixed schedule, reporting each slot."""
    payloads = {
        Channel.CALLER: build_payloads(packet_count, CALLER_HZ, CALLER_MARKER_S),
        Channel.AGENT: build_payloads(packet_count, AGENT_HZ, AGENT_MARKER_S),
    }
    loop = asyncio.get_running_loop()
    started_s = loop.time()
    for index in range(packet_count):
        # A fixed schedule (not a fixed pause) keeps the sender's rate at exactly 50 packets/s.
        await asyncio.sleep(max(0.0, started_s + index * PACKET_S - loop.time()))
        for channel, channel_payloads in payloads.items():
            packet = build_packet(channel, index, channel_payloads[index])
            recorder.record_rtp(call_id, channel, packet)
        print(index + 1, flush=True)


def feed_burst(recorder: RecorderRig, call_id: str, packet_count: int) -> None:
    """Record every packet at once with arrivals 20 ms apart, then flush the journals."""
    payloads = {
        Channel.CALLER: build_payloads(packet_count, CALLER_HZ, CALLER_MARKER_S),
        Channel.AGENT: build_payloads(packet_count, AGENT_HZ, AGENT_MARKER_S),
    }
    start_ns = recorder.clock.monotonic_ns()
    for index in range(packet_count):
        for channel, channel_payloads in payloads.items():
            packet = build_packet(channel, index, channel_payloads[index])
            recorder.record_rtp(call_id, channel, packet, arrival_ns=start_ns + index * 20_000_000)
    recorder.recorder.flush()
    last = [len(payloads[channel][-1]) for channel in (Channel.CALLER, Channel.AGENT)]
    print("flushed", packet_count, *last, flush=True)


async def main(mode: str, spool_root: Path, store_root: Path, call_id: str, count: int) -> None:
    """Record one call in the given mode, then wait to be killed."""
    configure_logging()  # log lines go to stderr: stdout carries only the reports
    recorder = RecorderRig(
        spool_root=spool_root,
        store=LocalStore(store_root),
        executor=None,
        flush_interval_s=FLUSH_INTERVAL_S,
    )
    await recorder.start()
    recorder.open_call(call_id)
    if mode == "realtime":
        await feed_realtime(recorder, call_id, count)
    else:
        feed_burst(recorder, call_id, count)
    await asyncio.Event().wait()


if __name__ == "__main__":
    mode_arg, spool_arg, store_arg, call_arg, count_arg = sys.argv[1:6]
    if mode_arg not in {"realtime", "burst"}:
        raise SystemExit(f"unknown mode {mode_arg!r}")
    asyncio.run(main(mode_arg, Path(spool_arg), Path(store_arg), call_arg, int(count_arg)))
