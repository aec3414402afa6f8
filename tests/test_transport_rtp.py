"""The plain-RTP caller transport on real UDP sockets: receive, symmetric RTP, send, BYE, expiry."""

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
from aiortc import rtp as aiortc_rtp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mediaserver.errors import CallStateError, SettingsError
from mediaserver.recording.channel import Codec
from mediaserver.rtp.media_packet import MediaPacket
from mediaserver.transports.port_allocator import (
    PortAllocator,
    PortNotAllocatedError,
    PortRangeExhaustedError,
)
from mediaserver.transports.rtp import DropReason, RtpCallerTransport

from caller_sink import CollectingSink

LOCALHOST = "127.0.0.1"
WAIT_S = 5.0
OPUS_PT = 111
PCMU_PT = 0
# One-frame Opus TOC bytes (RFC 6716 §3.1) followed by arbitrary frame bytes.
OPUS_PAYLOADS = [bytes((0x78,)) + bytes(range(index, index + 60)) for index in range(20)]
PCMU_SILENCE = b"\xff" * 160  # 20 ms of G.711 mu-law silence (RFC 3551 §4.5.14)
OUR_SSRC = 0x0DDBA11


def outgoing(sequence: int, timestamp: int, payload: bytes, *, marker: bool = False) -> MediaPacket:
    """An agent packet as the call's sequencer numbers it (payload type filled by the leg)."""
    return MediaPacket(0, timestamp, sequence, OUR_SSRC, 0, marker, payload)


class Peer:
    """The far end of the call: a UDP socket on 127.0.0.1."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCALHOST, 0))
        self.sock.setblocking(False)
        self.address: tuple[str, int] = self.sock.getsockname()

    def send(self, data: bytes, port: int) -> None:
        """Send one datagram to the transport (loopback delivers it before this returns)."""
        self.sock.sendto(data, (LOCALHOST, port))

    async def recv(self) -> bytes:
        """The next datagram the transport sent here."""
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.sock_recv(self.sock, 4096), WAIT_S)

    def has_nothing_queued(self) -> bool:
        """Whether no datagram waits in this socket's receive queue."""
        try:
            self.sock.recv(4096, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        return False

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def build_rtp(
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload: bytes,
    *,
    payload_type: int = OPUS_PT,
    marker: bool = False,
) -> bytes:
    """An RTP packet built by aiortc, an implementation independent of ours."""
    packet = aiortc_rtp.RtpPacket(
        payload_type=payload_type,
        marker=int(marker),
        sequence_number=sequence & 0xFFFF,
        timestamp=timestamp & 0xFFFFFFFF,
        ssrc=ssrc,
        payload=payload,
    )
    return bytes(packet.serialize())


def build_bye(*ssrcs: int) -> bytes:
    """An RTCP BYE built by aiortc."""
    return bytes(aiortc_rtp.RtcpByePacket(sources=list(ssrcs)))


def find_free_even_ports(count: int) -> list[int]:
    """`count` consecutive even ports nobody on 127.0.0.1 holds right now."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((LOCALHOST, 0))
            base = probe.getsockname()[1] & ~1
        candidates = [base + 2 * index for index in range(count)]
        if candidates[-1] <= 65534 and all(can_bind(port) for port in candidates):
            return candidates
    raise RuntimeError("no free even UDP ports found")


def can_bind(port: int) -> bool:
    """Whether a UDP socket can bind 127.0.0.1:port now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((LOCALHOST, port))
        except OSError:
            return False
    return True


@contextmanager
def peers(count: int) -> Iterator[list[Peer]]:
    """Peer sockets, closed afterwards."""
    made = [Peer() for _ in range(count)]
    try:
        yield made
    finally:
        for peer in made:
            peer.close()


@asynccontextmanager
async def started(
    sink: CollectingSink, ports: PortAllocator | None = None, **options: object
) -> AsyncIterator[tuple[RtpCallerTransport, int]]:
    """A started transport (Opus unless told otherwise), closed afterwards."""
    if ports is None:
        free = find_free_even_ports(4)
        ports = PortAllocator(free[0], free[-1])
    options.setdefault("codec", Codec.OPUS)
    transport = RtpCallerTransport(sink=sink, host=LOCALHOST, ports=ports, **options)  # type: ignore[arg-type]
    port = await transport.start()
    try:
        yield transport, port
    finally:
        await transport.close()


# -- port allocator -----------------------------------------------------------------------------


def test_allocator_hands_out_each_even_port_once() -> None:
    """Only even ports of the range are handed out, none twice while in use."""
    allocator = PortAllocator(5001, 5010)
    assert [allocator.allocate() for _ in range(5)] == [5002, 5004, 5006, 5008, 5010]
    assert allocator.in_use == allocator.capacity == 5


def test_allocator_exhausted_raises() -> None:
    """Asking for more ports than the range holds raises PortRangeExhaustedError."""
    allocator = PortAllocator(6000, 6002)
    allocator.allocate()
    allocator.allocate()
    with pytest.raises(PortRangeExhaustedError, match="all 2 RTP ports of 6000-6002 are in use"):
        allocator.allocate()


def test_allocator_reuses_released_ports_last() -> None:
    """A released port comes back, after the ports that were free longer."""
    allocator = PortAllocator(7000, 7004)
    first = allocator.allocate()
    allocator.release(first)
    assert [allocator.allocate() for _ in range(3)] == [7002, 7004, 7000]
    assert allocator.in_use == 3


def test_allocator_rejects_bad_ranges_and_releases() -> None:
    """Ranges without an even port, inverted ranges and unknown releases are refused."""
    with pytest.raises(SettingsError, match="holds no even port"):
        PortAllocator(7001, 7001)
    with pytest.raises(SettingsError, match="must satisfy"):
        PortAllocator(7002, 7000)
    with pytest.raises(SettingsError, match="must satisfy"):
        PortAllocator(0, 70000)
    allocator = PortAllocator(7000, 7002)
    with pytest.raises(PortNotAllocatedError, match="7000 is not allocated"):
        allocator.release(7000)


# -- receive ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "payload_type", "payloads", "step"),
    [
        (Codec.OPUS, OPUS_PT, OPUS_PAYLOADS, 960),
        (Codec.PCMU, PCMU_PT, [bytes([index]) * 160 for index in range(20)], 160),
        (Codec.PCMA, 8, [bytes([0xD5 ^ index]) * 160 for index in range(20)], 160),
    ],
)
async def test_packets_reach_sink_in_order_with_exact_fields(
    codec: Codec, payload_type: int, payloads: list[bytes], step: int
) -> None:
    """Each packet reaches the sink once, in order, with its header fields, payload and arrival."""
    sink = CollectingSink()
    sent = [
        build_rtp(
            65530 + index,  # the sequence number wraps on the way
            0xFFFFF000 + index * step,
            0xCAFE0001,
            payload,
            payload_type=payload_type,
            marker=index == 0,
        )
        for index, payload in enumerate(payloads)
    ]
    with peers(1) as (peer,):
        async with started(sink, codec=codec) as (_, port):
            before_ns = time.monotonic_ns()
            for data in sent:
                peer.send(data, port)
            await sink.wait_for_packets(len(sent))
            after_ns = time.monotonic_ns()
    assert [(p.sequence, p.rtp_timestamp, p.marker, p.payload) for p in sink.packets] == [
        (
            (65530 + index) & 0xFFFF,
            (0xFFFFF000 + index * step) & 0xFFFFFFFF,
            index == 0,
            payload,
        )
        for index, payload in enumerate(payloads)
    ]
    assert {(p.ssrc, p.payload_type) for p in sink.packets} == {(0xCAFE0001, payload_type)}
    arrivals = [p.arrival_ns for p in sink.packets]
    assert arrivals == sorted(arrivals)
    assert before_ns <= arrivals[0]
    assert arrivals[-1] <= after_ns


async def test_malformed_rtcp_and_wrong_payload_type_are_counted_not_delivered() -> None:
    """Truncated packets, RTCP reports and other payload types are counted by reason only."""
    sink = CollectingSink()
    receiver_report = bytes.fromhex("80c9000100000001")  # RTCP RR, reporter SSRC 1
    with peers(1) as (peer,):
        async with started(sink) as (transport, port):
            peer.send(build_rtp(1, 0, 7, b"\x78", payload_type=101), port)  # telephone-event PT
            peer.send(b"\x80\x6f\x00", port)  # 3 bytes: no room for a header
            peer.send(bytes([0x8F]) + bytes(15), port)  # claims 15 CSRCs, carries one
            peer.send(receiver_report, port)
            peer.send(build_rtp(2, 960, 7, OPUS_PAYLOADS[0]), port)
            await sink.wait_for_packets(1)
            stats = transport.describe()
    assert [p.sequence for p in sink.packets] == [2]
    assert stats["dropped_in"] == {
        DropReason.MALFORMED: 2,
        DropReason.WRONG_SOURCE: 0,
        DropReason.WRONG_PAYLOAD_TYPE: 1,
        DropReason.AFTER_END: 0,
        DropReason.KERNEL_RECEIVE_BUFFER: 0,
    }
    assert stats["rtcp_in"] == 1
    assert (stats["packets_in"], stats["bytes_in"]) == (1, 12 + len(OPUS_PAYLOADS[0]))
    assert transport.peer == peer.address


async def test_datagram_longer_than_the_limit_is_dropped() -> None:
    """A datagram beyond max_datagram_bytes is dropped as malformed; one at the limit arrives."""
    sink = CollectingSink()
    with peers(1) as (peer,):
        async with started(sink, max_datagram_bytes=1000) as (transport, port):
            peer.send(build_rtp(1, 0, 7, bytes(1001 - 12)), port)
            peer.send(build_rtp(2, 960, 7, bytes(1000 - 12)), port)
            await sink.wait_for_packets(1)
            assert transport.drop_counts() == {DropReason.MALFORMED: 1}
    assert [(p.sequence, len(p.payload)) for p in sink.packets] == [(2, 988)]


async def test_arrival_times_come_from_the_kernel_not_the_loop() -> None:
    """Packets received while the event loop is stalled keep the times they really arrived."""
    # A stalled loop reads a backlog all at once; stamped by the kernel (SO_TIMESTAMPNS), their
    # arrival times stay 20 ms apart instead of bunching at the moment the loop woke.
    sink = CollectingSink()
    with peers(1) as (peer,):
        async with started(sink) as (transport, port):
            assert transport.describe()["kernel_timestamps"] is True
            sent_ns = []
            for index in range(10):
                sent_ns.append(time.monotonic_ns())
                peer.send(build_rtp(index, index * 960, 0xA, OPUS_PAYLOADS[index]), port)
                time.sleep(0.020)  # noqa: ASYNC251 - the loop must be blocked: nothing is read
            await sink.wait_for_packets(10)
    errors_ms = [(p.arrival_ns - sent) / 1e6 for p, sent in zip(sink.packets, sent_ns, strict=True)]
    assert all(0 <= error < 5 for error in errors_ms), errors_ms


# -- symmetric RTP ------------------------------------------------------------------------------


async def test_symmetric_rtp_hears_and_answers_only_the_first_source() -> None:
    """The first valid source is the peer: others are ignored and counted, replies go to it."""
    sink = CollectingSink()
    with peers(2) as (first, second):
        async with started(sink) as (transport, port):
            second.send(build_rtp(9, 0, 0xBAD, b"\x78", payload_type=0), port)  # wrong PT: no latch
            first.send(build_rtp(1, 0, 0xA, OPUS_PAYLOADS[0]), port)
            second.send(build_rtp(2, 960, 0xBAD, OPUS_PAYLOADS[1]), port)
            second.send(build_bye(0xA), port)
            first.send(build_rtp(3, 1920, 0xA, OPUS_PAYLOADS[2]), port)
            await sink.wait_for_packets(2)
            transport.send_audio(outgoing(7, 0, OPUS_PAYLOADS[3]))
            reply = aiortc_rtp.RtpPacket.parse(await first.recv())
            drops = transport.drop_counts()
            peer_address = transport.peer
        bye = aiortc_rtp.RtcpPacket.parse(await first.recv())
        assert second.has_nothing_queued()
    assert [(p.ssrc, p.sequence) for p in sink.packets] == [(0xA, 1), (0xA, 3)]
    assert sink.ended == []
    assert peer_address == first.address
    assert drops == {DropReason.WRONG_SOURCE: 2, DropReason.WRONG_PAYLOAD_TYPE: 1}
    assert reply.payload == OPUS_PAYLOADS[3]
    assert bye == [aiortc_rtp.RtcpByePacket(sources=[OUR_SSRC])]


async def test_expected_remote_is_the_only_source_heard_and_gets_audio_first() -> None:
    """With an expected remote, strangers are never latched and audio goes there from the start."""
    sink = CollectingSink()
    with peers(2) as (expected, stranger):
        async with started(sink, expected_remote=expected.address) as (transport, port):
            transport.send_audio(outgoing(1, 0, OPUS_PAYLOADS[0]))
            early = aiortc_rtp.RtpPacket.parse(await expected.recv())
            stranger.send(build_rtp(1, 0, 0xBAD, OPUS_PAYLOADS[1]), port)
            expected.send(build_rtp(5, 0, 0xA, OPUS_PAYLOADS[2]), port)
            await sink.wait_for_packets(1)
            drops = transport.drop_counts()
            peer_address = transport.peer
    assert early.payload == OPUS_PAYLOADS[0]
    assert [(p.ssrc, p.sequence) for p in sink.packets] == [(0xA, 5)]
    assert drops == {DropReason.WRONG_SOURCE: 1}
    assert peer_address == expected.address


# -- send ---------------------------------------------------------------------------------------


async def test_send_audio_sends_the_given_header_and_reports_it() -> None:
    """A packet leaves with its own numbers and SSRC and the leg's PT; it is reported as sent."""
    sink = CollectingSink()
    with peers(1) as (peer,):
        async with started(sink, codec=Codec.PCMU) as (transport, port):
            transport.send_audio(outgoing(1, 0, PCMU_SILENCE))  # no peer yet: counted as unsent
            peer.send(build_rtp(1, 0, 0xA, PCMU_SILENCE, payload_type=PCMU_PT), port)
            await sink.wait_for_packets(1)
            payloads = [bytes([index]) * 160 for index in range(40)]
            before_ns = time.monotonic_ns()
            for index, payload in enumerate(payloads):
                transport.send_audio(
                    outgoing(65530 + index & 0xFFFF, 160 * index, payload, marker=index == 5)
                )
            after_ns = time.monotonic_ns()
            received = [aiortc_rtp.RtpPacket.parse(await peer.recv()) for _ in payloads]
            stats = transport.describe()
    assert [
        (p.sequence_number, p.timestamp, p.marker, p.payload_type, p.ssrc, p.payload)
        for p in received
    ] == [
        ((65530 + index) & 0xFFFF, 160 * index, int(index == 5), PCMU_PT, OUR_SSRC, payload)
        for index, payload in enumerate(payloads)
    ]
    assert (stats["packets_out"], stats["bytes_out"], stats["unsent"]) == (40, 40 * 172, 1)
    assert [(p.sequence, p.rtp_timestamp, p.payload_type, p.payload) for p in sink.sent] == [
        ((65530 + index) & 0xFFFF, 160 * index, PCMU_PT, payload)
        for index, payload in enumerate(payloads)
    ]
    assert all(before_ns <= p.arrival_ns <= after_ns for p in sink.sent)


# -- end of the leg -----------------------------------------------------------------------------


async def test_rtcp_bye_from_the_peer_ends_the_leg_once() -> None:
    """A BYE for the source being heard ends the leg once; later packets are only counted."""
    sink = CollectingSink()
    with peers(1) as (peer,):
        async with started(sink) as (transport, port):
            peer.send(build_rtp(1, 0, 0xA, OPUS_PAYLOADS[0]), port)
            peer.send(build_bye(0xB), port)  # another source leaving: the leg goes on
            peer.send(build_rtp(2, 960, 0xA, OPUS_PAYLOADS[1]), port)
            await sink.wait_for_packets(2)
            assert sink.ended == []
            # A compound packet (RFC 3550 §6.1): receiver report first, then the BYE.
            peer.send(bytes.fromhex("80c9000100000001") + build_bye(0xA), port)
            await sink.wait_for_end()
            peer.send(build_bye(0xA), port)
            peer.send(build_rtp(3, 1920, 0xA, OPUS_PAYLOADS[2]), port)
            await _wait_until(lambda: transport.drop_counts().get(DropReason.AFTER_END) == 2)
    assert sink.ended == ["rtcp_bye"]
    assert [p.sequence for p in sink.packets] == [1, 2]


async def test_media_timeout_ends_the_leg_once() -> None:
    """Without valid packets for media_timeout_s the leg ends once with media_timeout."""
    sink = CollectingSink()
    with peers(1) as (peer,):
        async with started(sink, media_timeout_s=0.2) as (transport, port):
            for index in range(3):
                peer.send(build_rtp(index, index * 960, 0xA, OPUS_PAYLOADS[index]), port)
            await sink.wait_for_packets(3)
            await sink.wait_for_end()
            peer.send(build_rtp(9, 9 * 960, 0xA, OPUS_PAYLOADS[9]), port)
            await _wait_until(lambda: transport.drop_counts().get(DropReason.AFTER_END) == 1)
    assert sink.ended == ["media_timeout"]
    assert len(sink.packets) == 3


async def test_media_timeout_without_any_packet() -> None:
    """A leg that never hears from its caller ends with media_timeout too."""
    sink = CollectingSink()
    async with started(sink, media_timeout_s=0.2):
        await sink.wait_for_end()
    assert sink.ended == ["media_timeout"]


async def test_close_says_bye_releases_the_port_and_is_idempotent() -> None:
    """close() sends BYE, frees the port for the allocator and the OS, and can be repeated."""
    sink = CollectingSink()
    (port,) = find_free_even_ports(1)
    allocator = PortAllocator(port, port)
    with peers(1) as (peer,):
        transport = RtpCallerTransport(codec=Codec.OPUS, sink=sink, host=LOCALHOST, ports=allocator)
        assert await transport.start() == port
        with pytest.raises(PortRangeExhaustedError):
            allocator.allocate()
        with pytest.raises(CallStateError, match="already started"):
            await transport.start()
        peer.send(build_rtp(1, 0, 0xA, OPUS_PAYLOADS[0]), port)
        await sink.wait_for_packets(1)
        transport.send_audio(outgoing(1, 0, OPUS_PAYLOADS[1]))
        await peer.recv()
        await transport.close()
        await transport.close()
        bye = aiortc_rtp.RtcpPacket.parse(await peer.recv())
        assert peer.has_nothing_queued()  # the second close sent nothing
    assert bye == [aiortc_rtp.RtcpByePacket(sources=[OUR_SSRC])]
    assert sink.ended == []
    assert can_bind(port)
    assert allocator.allocate() == port
    transport.send_audio(outgoing(2, 960, OPUS_PAYLOADS[1]))
    assert transport.describe()["unsent"] == 1


async def test_start_skips_ports_held_by_another_process() -> None:
    """A port someone else holds is skipped; when none can be bound the range is exhausted."""
    busy, free = find_free_even_ports(2)
    allocator = PortAllocator(busy, free)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind((LOCALHOST, busy))
        async with started(CollectingSink(), allocator) as (_, port):
            assert port == free
            assert allocator.in_use == 1
            blocked = RtpCallerTransport(
                codec=Codec.OPUS, sink=CollectingSink(), host=LOCALHOST, ports=allocator
            )
            with pytest.raises(PortRangeExhaustedError):
                await blocked.start()
            assert allocator.in_use == 1
    assert allocator.in_use == 0


async def _wait_until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    """Wait, with a deadline, for a counter that no sink callback announces."""

    async def poll() -> None:
        while not predicate():  # noqa: ASYNC110 - the transport's counters announce no event
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout_s)


# -- fuzzing ------------------------------------------------------------------------------------

FUZZ_SSRC = 0x5EED
FUZZ_PAYLOAD_TYPE = OPUS_PT


@st.composite
def mutated_rtp(draw: st.DrawFn) -> bytes:
    """A valid RTP packet (built by aiortc) with bytes flipped, cut off or appended."""
    data = bytearray(
        build_rtp(
            draw(st.integers(0, 0xFFFF)),
            draw(st.integers(0, 0xFFFFFFFF)),
            draw(st.sampled_from([FUZZ_SSRC, draw(st.integers(0, 0xFFFFFFFF))])),
            draw(st.binary(max_size=40)),
            payload_type=draw(st.sampled_from([FUZZ_PAYLOAD_TYPE, 0, 72, 127])),
            marker=draw(st.booleans()),
        )
    )
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=8))


def oracle_fields(data: bytes) -> tuple[int, int, int, int, bool, bytes] | None:
    """What the sink must receive for a datagram of the peer, by aiortc's parser, or None."""
    # RFC 5761 §4: these second octets are RTCP; 127.0.0.1 datagrams here are far below the limit.
    if len(data) >= 2 and 192 <= data[1] <= 223:
        return None
    probe = bytearray(data)
    if len(probe) >= 16 and probe[0] & 0x10:
        # aiortc also decodes RFC 8285 extension elements, which an audio leg does not read:
        # zero the profile so only the framing is judged.
        offset = 12 + 4 * (probe[0] & 0x0F)
        probe[offset : offset + 2] = b"\x00\x00"
    try:
        packet = aiortc_rtp.RtpPacket.parse(bytes(probe))
    except ValueError:
        return None
    if packet.payload_type != FUZZ_PAYLOAD_TYPE:
        return None
    return (
        packet.timestamp,
        packet.ssrc,
        packet.sequence_number,
        packet.payload_type,
        bool(packet.marker),
        packet.payload,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datagrams=st.lists(st.one_of(st.binary(max_size=120), mutated_rtp()), max_size=25))
async def test_fuzzed_datagrams_never_disturb_valid_traffic(datagrams: list[bytes]) -> None:
    """Garbage from the peer reaches the sink only if valid RTP; real packets arrive intact."""
    sink = CollectingSink()
    with peers(1) as (peer,):
        async with started(sink) as (transport, port):
            valid = [
                build_rtp(index, index * 960, FUZZ_SSRC, OPUS_PAYLOADS[index % 20], marker=True)
                for index in range(len(datagrams) + 1)
            ]
            peer.send(valid[0], port)  # latches this peer
            expected = [oracle_fields(valid[0])]
            for garbage, follower in zip(datagrams, valid[1:], strict=True):
                peer.send(garbage, port)
                peer.send(follower, port)
                expected += [oracle_fields(garbage), oracle_fields(follower)]
            wanted = [fields for fields in expected if fields is not None]
            await sink.wait_for(lambda: len(sink.packets) >= len(wanted) or bool(sink.ended))
            stats = transport.describe()
    delivered = [
        (p.rtp_timestamp, p.ssrc, p.sequence, p.payload_type, p.marker, p.payload)
        for p in sink.packets
    ]
    if sink.ended:
        # Only an RTCP BYE of the peer may end the leg, and nothing after it is delivered.
        assert sink.ended == ["rtcp_bye"]
        assert any(len(data) >= 2 and 192 <= data[1] <= 223 for data in datagrams)
        assert delivered == wanted[: len(delivered)]
        return
    assert delivered == wanted
    counted = stats["packets_in"] + stats["rtcp_in"] + sum(stats["dropped_in"].values())
    assert counted == 2 * len(datagrams) + 1


@pytest.mark.parametrize("any_source", [False, True])
async def test_a_new_source_with_another_ssrc_takes_over_only_by_setting(any_source: bool) -> None:
    """After the peer falls silent, a new SSRC from a new source is heard only with any_source."""
    sink = CollectingSink()
    with peers(2) as (first, second):
        async with started(sink, relatch_after_s=0.2, relatch_any_source=any_source) as (
            transport,
            port,
        ):
            first.send(build_rtp(1, 0, 0xA, OPUS_PAYLOADS[0]), port)
            await sink.wait_for_packets(1)
            await asyncio.sleep(0.3)  # the peer has been silent longer than relatch_after_s
            second.send(build_rtp(1, 0, 0xB, OPUS_PAYLOADS[1]), port)
            first.send(build_rtp(2, 960, 0xA, OPUS_PAYLOADS[2]), port)
            await sink.wait_for_packets(2)
            relatches, peer_address = transport.describe()["relatches"], transport.peer
    assert relatches == (1 if any_source else 0)
    assert peer_address == (second.address if any_source else first.address)
    expected = [(0xA, 1), (0xB, 1)] if any_source else [(0xA, 1), (0xA, 2)]
    assert [(p.ssrc, p.sequence) for p in sink.packets][:2] == expected
