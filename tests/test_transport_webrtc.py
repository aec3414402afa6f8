"""The WebRTC caller transport against a real aiortc client peer on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import inspect
import itertools
import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aioice
import aioice.ice
import av
import numpy as np
import numpy.typing as npt
import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver
from hypothesis import given
from hypothesis import strategies as st

from mediaserver.audio.opus_encoder import OpusEncoder
from mediaserver.errors import (
    MalformedSdpError,
    SdpError,
    SettingsError,
    UnsupportedSdpError,
    WebRtcSetupError,
)
from mediaserver.rtp.media_packet import MediaPacket
from mediaserver.rtp.sequencer import RtpSequencer
from mediaserver.transports.rtp_tap import HANDLE_DISCONNECT, HANDLE_RTP_PACKET
from mediaserver.transports.webrtc import (
    MAX_ICE_CANDIDATES,
    IceServer,
    OfferedAudio,
    WebRtcCallerTransport,
    build_passive_answer,
    parse_offered_audio,
    use_ice_host_addresses,
)

from caller_sink import CollectingSink
from webrtc_peer import ClientPeer, ToneTrack

RATE_HZ = 48000
TIMEOUT_S = 10.0
LOOPBACK = ["127.0.0.1"]


@dataclass
class Call:
    """A connected client peer and the server transport that answered it."""

    client: ClientPeer
    transport: WebRtcCallerTransport
    sink: CollectingSink
    offer_sdp: str
    answer_sdp: str


async def connect(client: ClientPeer, max_queued_packets: int = 3) -> Call:
    """Offer from the client, answer on the server, apply the answer."""
    sink = CollectingSink()
    offer_sdp = await client.create_offer()
    transport, answer_sdp = await WebRtcCallerTransport.answer(
        offer_sdp,
        sink=sink,
        ice_servers=[],
        ice_host_addresses=LOOPBACK,
        max_queued_packets=max_queued_packets,
    )
    await client.accept_answer(answer_sdp)
    return Call(client, transport, sink, offer_sdp, answer_sdp)


@pytest.fixture
async def tone_call() -> AsyncIterator[Call]:
    """A call whose client sends a 440 Hz tone."""
    call = await connect(ClientPeer(ToneTrack(440.0)))
    yield call
    await call.transport.close()
    await call.client.close()


@pytest.fixture
async def client_offer() -> AsyncIterator[str]:
    """A real aiortc offer (the client is closed afterwards)."""
    client = ClientPeer()
    yield await client.create_offer()
    await client.close()


def open_peer_connections() -> list[RTCPeerConnection]:
    """Every peer connection in the process that has not been closed."""
    gc.collect()
    return [
        o
        for o in gc.get_objects()
        if isinstance(o, RTCPeerConnection) and o.connectionState != "closed"
    ]


def decode_opus(payloads: list[bytes]) -> npt.NDArray[np.float32]:
    """Decode Opus packets with PyAV's libopus to mono float samples."""
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate = RATE_HZ
    decoder.layout = "mono"
    chunks = [
        frame.to_ndarray().reshape(-1)
        for payload in payloads
        for frame in decoder.decode(av.Packet(payload))
    ]
    return np.concatenate(chunks).astype(np.float32)


def peak_frequency_hz(signal: npt.NDArray[np.float32]) -> float:
    """The strongest frequency of a signal (Hann-windowed FFT)."""
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(signal.size)))
    return float(np.argmax(spectrum) * RATE_HZ / signal.size)


def encode_tone(freq_hz: float, duration_s: float) -> list[bytes]:
    """A tone as 20 ms Opus packets, encoded with libopus."""
    t = np.arange(int(duration_s * RATE_HZ)) / RATE_HZ
    pcm = (0.5 * 32767 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)
    encoder = OpusEncoder(input_rate_hz=RATE_HZ)
    return [packet.payload for packet in encoder.encode(pcm) + encoder.flush()]


def candidate_lines(sdp: str) -> list[str]:
    """The a=candidate lines of an SDP."""
    return [line for line in sdp.splitlines() if line.startswith("a=candidate:")]


# --- aiortc and aioice internals this transport depends on ---------------------------------


def test_aiortc_private_receive_path_is_unchanged() -> None:
    """The private receiver methods the tap wraps keep their aiortc 1.16 signatures."""
    handle = getattr(RTCRtpReceiver, HANDLE_RTP_PACKET)
    assert inspect.iscoroutinefunction(handle)
    assert list(inspect.signature(handle).parameters) == ["self", "packet", "arrival_time_ms"]
    disconnect = getattr(RTCRtpReceiver, HANDLE_DISCONNECT)
    assert not inspect.iscoroutinefunction(disconnect)
    assert list(inspect.signature(disconnect).parameters) == ["self"]


def test_aioice_host_address_lookup_is_unchanged() -> None:
    """aioice still finds host addresses through one module function taking these flags."""
    assert list(inspect.signature(aioice.ice.get_host_addresses).parameters) == [
        "use_ipv4",
        "use_ipv6",
    ]


async def test_configured_host_addresses_are_the_only_candidates() -> None:
    """ICE gathering inside the block binds host candidates to the given addresses only."""
    connection = aioice.Connection(ice_controlling=True)
    try:
        with use_ice_host_addresses(LOOPBACK):
            await connection.gather_candidates()
        assert [(c.type, c.host) for c in connection.local_candidates] == [("host", "127.0.0.1")]
    finally:
        await connection.close()


async def test_gathering_outside_the_block_keeps_aioice_behaviour() -> None:
    """Without configured addresses aioice leaves loopback out, as it always did."""
    with use_ice_host_addresses(LOOPBACK):
        pass
    connection = aioice.Connection(ice_controlling=True)
    try:
        await connection.gather_candidates()
        assert "127.0.0.1" not in {c.host for c in connection.local_candidates}
    finally:
        await connection.close()


# --- the offer and the answer -----------------------------------------------------------------


AUDIO_OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=fingerprint:sha-256 00\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=mid:a0\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
)


@pytest.mark.parametrize(
    ("sdp", "expected"),
    [
        (AUDIO_OFFER, OfferedAudio(mid="a0", opus_payload_type=111)),
        # Video first: the audio section still wins; Opus is matched case-insensitively.
        (
            "v=0\nm=video 9 UDP/TLS/RTP/SAVPF 96\na=rtpmap:96 VP8/90000\n"
            "m=audio 9 UDP/TLS/RTP/SAVPF 109\na=rtpmap:109 OPUS/48000/2\na=fingerprint:x\n",
            OfferedAudio(mid=None, opus_payload_type=109),
        ),
    ],
)
def test_offered_audio_is_found(sdp: str, expected: OfferedAudio) -> None:
    """The first audio m-line's mid and Opus payload type are read from the offer."""
    assert parse_offered_audio(sdp) == expected


@pytest.mark.parametrize(
    ("sdp", "error"),
    [
        ("", MalformedSdpError),
        ("hello", MalformedSdpError),
        ("v=0\r\nm=audio 9\r\n", MalformedSdpError),  # m-line without proto and formats
        ("v=0\r\nm=audio 9 RTP/AVP 111\r\na=rtpmap:x opus/48000/2\r\n", MalformedSdpError),
        ("v=0\r\nm=video 9 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n", UnsupportedSdpError),
        ("v=0\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n", UnsupportedSdpError),
        (AUDIO_OFFER.replace("a=fingerprint:sha-256 00\r\n", ""), MalformedSdpError),
        # Opus offered only in a second audio m-line: the first one is the caller's voice.
        (
            "v=0\nm=audio 9 RTP/AVP 0\na=rtpmap:0 PCMU/8000\n"
            "m=audio 9 RTP/AVP 111\na=rtpmap:111 opus/48000/2\n",
            UnsupportedSdpError,
        ),
    ],
)
def test_unusable_offers_are_rejected(sdp: str, error: type[SdpError]) -> None:
    """Malformed offers and offers without Opus audio raise the matching SdpError."""
    with pytest.raises(error):
        parse_offered_audio(sdp)


@given(st.text(max_size=300))
def test_offer_parser_raises_only_sdp_errors(text: str) -> None:
    """Any text is either rejected with an SdpError or yields an Opus payload type."""
    try:
        offered = parse_offered_audio("v=0\n" + text)
    except SdpError:
        return
    assert offered.opus_payload_type >= 0


def test_answer_to_an_actpass_offer_becomes_passive() -> None:
    """An active answer to an actpass offer is turned into a passive one; others are kept."""
    answer = "v=0\r\na=setup:active\r\n"
    assert (
        build_passive_answer(answer, "v=0\r\na=setup:actpass\r\n") == "v=0\r\na=setup:passive\r\n"
    )
    assert build_passive_answer(answer, "v=0\r\na=setup:passive\r\n") == answer


async def test_answer_is_passive_opus_only_with_loopback_candidates() -> None:
    """The answer takes the DTLS server role, offers Opus only and announces only 127.0.0.1."""
    client = ClientPeer(ToneTrack(440.0))
    offer_sdp = await client.create_offer()
    try:
        transport, answer_sdp = await WebRtcCallerTransport.answer(
            offer_sdp, sink=CollectingSink(), ice_servers=[], ice_host_addresses=LOOPBACK
        )
        await transport.close()
    finally:
        await client.close()
    assert "a=setup:passive" in answer_sdp.splitlines()
    assert "a=sendrecv" in answer_sdp.splitlines()
    rtpmaps = [line for line in answer_sdp.splitlines() if line.startswith("a=rtpmap:")]
    assert len(rtpmaps) == 1
    assert rtpmaps[0].lower().endswith(" opus/48000/2")
    candidates = candidate_lines(answer_sdp)
    assert candidates
    for line in candidates:
        # RFC 8839 §5.1: foundation component transport priority address port "typ" type
        fields = line.split()
        assert (fields[4], fields[6], fields[7]) == ("127.0.0.1", "typ", "host")


async def test_offers_without_opus_audio_leave_nothing_open(client_offer: str) -> None:
    """Offers without audio or without Opus raise UnsupportedSdpError and open nothing."""
    before = len(open_peer_connections())
    no_opus = re.sub(r"a=rtpmap:\d+ opus/48000/2\r\n", "", client_offer)
    no_audio = client_offer.replace("m=audio", "m=video")
    for offer in (no_opus, no_audio):
        with pytest.raises(UnsupportedSdpError):
            await WebRtcCallerTransport.answer(
                offer, sink=CollectingSink(), ice_servers=[], ice_host_addresses=LOOPBACK
            )
    assert len(open_peer_connections()) == before


@pytest.mark.parametrize("dropped", ["a=ice-ufrag:", "a=fingerprint:"])
async def test_offer_without_credentials_is_malformed(client_offer: str, dropped: str) -> None:
    """An offer without ICE credentials or DTLS fingerprint is malformed and leaves nothing open."""
    before = len(open_peer_connections())
    offer = "".join(line for line in client_offer.splitlines(keepends=True) if dropped not in line)
    with pytest.raises(MalformedSdpError):
        await WebRtcCallerTransport.answer(
            offer, sink=CollectingSink(), ice_servers=[], ice_host_addresses=LOOPBACK
        )
    assert len(open_peer_connections()) == before


async def test_unbindable_host_address_fails_setup(client_offer: str) -> None:
    """A host address the machine lacks gives no candidates: a setup error, nothing left open."""
    before = len(open_peer_connections())
    with pytest.raises(WebRtcSetupError):
        await WebRtcCallerTransport.answer(
            client_offer,
            sink=CollectingSink(),
            ice_servers=[],
            # RFC 5737 TEST-NET-1: never assigned to a host.
            ice_host_addresses=["192.0.2.1"],
        )
    assert len(open_peer_connections()) == before


def test_offers_with_too_many_candidates_are_refused_fast() -> None:
    """An offer with thousands of candidates is refused before aiortc sees it, in linear time."""
    candidates = "".join(
        f"a=candidate:{i} 1 udp 2122260223 10.0.{i // 250}.{i % 250} {1024 + i} typ host\r\n"
        for i in range(8000)
    )
    offer = AUDIO_OFFER + candidates
    started = time.perf_counter()
    with pytest.raises(MalformedSdpError, match=f"at most {MAX_ICE_CANDIDATES}"):
        parse_offered_audio(offer)
    elapsed_s = time.perf_counter() - started
    print(f"8,000-candidate offer refused in {elapsed_s * 1000:.1f} ms")
    parse_offered_audio(AUDIO_OFFER + candidates[: candidates.index("a=candidate:64 ")])


def test_bad_ice_settings_are_rejected() -> None:
    """ICE server URLs and host addresses are checked, naming the bad value."""
    with pytest.raises(SettingsError, match="ftp://x"):
        IceServer("ftp://x")
    with pytest.raises(SettingsError, match="localhost"), use_ice_host_addresses(["localhost"]):
        pass
    assert IceServer("stun:stun.example.org:3478").url == "stun:stun.example.org:3478"


async def test_bare_ice_server_urls_are_checked(client_offer: str) -> None:
    """ICE servers given as bare URLs are checked like IceServers, before anything is opened."""
    before = len(open_peer_connections())
    with pytest.raises(SettingsError, match="turnx:"):
        await WebRtcCallerTransport.answer(
            client_offer,
            sink=CollectingSink(),
            ice_servers=["turnx:turn.example.org"],
            ice_host_addresses=LOOPBACK,
        )
    assert len(open_peer_connections()) == before


# --- media ------------------------------------------------------------------------------------


async def test_caller_tone_reaches_the_sink_undecoded(tone_call: Call) -> None:
    """The caller's RTP reaches the sink in order, as Opus that decodes to the 440 Hz tone."""
    await asyncio.wait_for(tone_call.sink.wait_for_packets(60), TIMEOUT_S)
    packets = tone_call.sink.packets[:60]
    offered = parse_offered_audio(tone_call.offer_sdp)
    assert {p.payload_type for p in packets} == {offered.opus_payload_type}
    assert len({p.ssrc for p in packets}) == 1
    # Loopback loses nothing: each sequence number and 20 ms timestamp follows the last.
    assert all((b.sequence - a.sequence) % 2**16 == 1 for a, b in itertools.pairwise(packets))
    assert all(
        (b.rtp_timestamp - a.rtp_timestamp) % 2**32 == 960 for a, b in itertools.pairwise(packets)
    )
    assert all(b.arrival_ns >= a.arrival_ns for a, b in itertools.pairwise(packets))
    audio = decode_opus([p.payload for p in packets])
    steady = audio[RATE_HZ // 10 :]
    assert abs(peak_frequency_hz(steady) - 440.0) < 2.0
    assert np.abs(steady).max() > 0.2
    assert tone_call.transport.describe()["packets_in"] >= 60


async def test_aiortc_decodes_nothing_on_the_server(tone_call: Call) -> None:
    """Once caller packets flow, the only aiortc audio decoder left is the client's."""
    await asyncio.wait_for(tone_call.sink.wait_for_packets(5), TIMEOUT_S)
    decoders = [t for t in threading.enumerate() if t.name == "audio-decoder"]
    assert len(decoders) == 1


async def test_caller_still_gets_receiver_reports(tone_call: Call) -> None:
    """aiortc keeps its RTCP statistics: the caller gets receiver reports about its stream."""

    async def remote_inbound_stats() -> list[object]:
        while True:
            report = await tone_call.client.pc.getSenders()[0].getStats()
            found = [s for s in report.values() if s.type == "remote-inbound-rtp"]
            if found:
                return found
            # RTCP reports go out every 0.5 to 1.5 s (aiortc's interval); look again shortly.
            await asyncio.sleep(0.1)

    stats = await asyncio.wait_for(remote_inbound_stats(), TIMEOUT_S)
    assert stats[0].packetsLost == 0  # type: ignore[attr-defined]


def numbered(payloads: list[bytes]) -> list[MediaPacket]:
    """Agent packets numbered as the call's sequencer numbers them, one per 20 ms tick."""
    sequencer = RtpSequencer(960)
    return [sequencer.number(tick, payload, 111) for tick, payload in enumerate(payloads)]


async def test_agent_packets_reach_the_caller_as_sent() -> None:
    """Packets given to send_audio play out at the caller as the tone, and are reported sent."""
    packets = numbered(encode_tone(1000.0, 1.0))
    call = await connect(ClientPeer(), max_queued_packets=len(packets))
    try:
        for packet in packets:
            call.transport.send_audio(packet)
        await asyncio.wait_for(call.client.wait_for_samples(RATE_HZ * 9 // 10), TIMEOUT_S)
        audio = call.client.audio()
        assert abs(peak_frequency_hz(audio) - 1000.0) < 2.0
        # The whole second came through: about 1 s of audio at the tone's amplitude.
        assert np.count_nonzero(np.abs(audio) > 0.1) > RATE_HZ // 2
        stats = call.transport.describe()
        assert (stats["queue_drops"], stats["packets_out"]) == (0, len(packets))
        assert [p.sequence for p in call.sink.sent] == [p.sequence for p in packets]
        assert {p.payload_type for p in call.sink.sent} == {call.transport.payload_type}
    finally:
        await call.transport.close()
        await call.client.close()


async def test_nothing_is_sent_while_the_agent_is_silent() -> None:
    """The pacer is the only clock: with no agent audio no packet goes out (as with DTX)."""
    call = await connect(ClientPeer())
    try:
        await asyncio.sleep(0.5)
        assert call.transport.describe()["packets_out"] == 0
        assert call.sink.sent == []
    finally:
        await call.transport.close()
        await call.client.close()


async def test_full_queue_drops_the_oldest_packets_unrecorded() -> None:
    """Packets the sender has not taken beyond the limit are dropped, counted, never reported."""
    call = await connect(ClientPeer(), max_queued_packets=3)
    try:
        packets = numbered(encode_tone(1000.0, 0.2))
        for packet in packets:
            call.transport.send_audio(packet)
        drops = call.transport.describe()["queue_drops"]
        assert drops == len(packets) - 3
        await asyncio.sleep(0.2)
        assert [p.sequence for p in call.sink.sent] == [p.sequence for p in packets[-3:]]
    finally:
        await call.transport.close()
        await call.client.close()


# --- signalling and lifecycle -----------------------------------------------------------------


def without_candidates(sdp: str) -> str:
    """An SDP with its candidate and end-of-candidates lines left out."""
    return "".join(
        line
        for line in sdp.splitlines(keepends=True)
        if not line.startswith(("a=candidate:", "a=end-of-candidates"))
    )


async def test_trickled_candidates_connect_the_call() -> None:
    """Caller candidates sent only as an RFC 8840 fragment let the server reach the caller."""
    client = ClientPeer(ToneTrack(440.0))
    sink = CollectingSink()
    offer_sdp = await client.create_offer()
    transport, answer_sdp = await WebRtcCallerTransport.answer(
        without_candidates(offer_sdp), sink=sink, ice_servers=[], ice_host_addresses=LOOPBACK
    )
    try:
        # Neither side learns the other's address from the SDP, so connectivity checks can
        # only start from the server, towards the trickled candidates.
        await client.accept_answer(without_candidates(answer_sdp))
        mid = parse_offered_audio(offer_sdp).mid
        fragment = f"a=mid:{mid}\r\n" + "".join(
            line + "\r\n" for line in candidate_lines(offer_sdp)
        )
        await transport.add_ice_candidates(fragment + "a=end-of-candidates\r\n")
        await asyncio.wait_for(sink.wait_for_packets(5), TIMEOUT_S)
    finally:
        await transport.close()
        await client.close()


async def test_bad_trickled_candidate_is_malformed(tone_call: Call) -> None:
    """A candidate line that cannot be parsed raises MalformedSdpError."""
    with pytest.raises(MalformedSdpError):
        await tone_call.transport.add_ice_candidates("a=mid:0\r\na=candidate:1 1 udp\r\n")


async def test_ice_restart_is_unsupported(tone_call: Call) -> None:
    """A fragment with new ICE credentials (an ICE restart) raises UnsupportedSdpError."""
    with pytest.raises(UnsupportedSdpError):
        await tone_call.transport.add_ice_candidates(
            "a=ice-ufrag:newU\r\na=ice-pwd:newpasswordnewpassword12\r\nm=audio 9 RTP/AVP 0\r\n"
        )


async def test_remote_close_reports_the_end_once(tone_call: Call) -> None:
    """The caller hanging up reports the leg ended once, and closing afterwards adds nothing."""
    await asyncio.wait_for(tone_call.sink.wait_for_packets(1), TIMEOUT_S)
    await tone_call.client.close()
    await asyncio.wait_for(tone_call.sink.wait_for_end(), TIMEOUT_S)
    await tone_call.transport.close()
    assert tone_call.sink.ended == ["caller_hangup"]


async def test_failed_connection_reports_the_end_once() -> None:
    """A DTLS fingerprint mismatch fails the connection and is reported once."""
    client = ClientPeer(ToneTrack(440.0))
    offer_sdp = await client.create_offer()
    wrong = re.sub(
        r"(a=fingerprint:sha-256 )[0-9A-F:]+", r"\g<1>" + ":".join(["00"] * 32), offer_sdp
    )
    wrong = "".join(
        line
        for line in wrong.splitlines(keepends=True)
        if not line.startswith("a=fingerprint:") or line.startswith("a=fingerprint:sha-256")
    )
    sink = CollectingSink()
    transport, answer_sdp = await WebRtcCallerTransport.answer(
        wrong, sink=sink, ice_servers=[], ice_host_addresses=LOOPBACK
    )
    try:
        await client.accept_answer(answer_sdp)
        await asyncio.wait_for(sink.wait_for_end(), TIMEOUT_S)
    finally:
        await transport.close()
        await client.close()
    assert sink.ended == ["caller_hangup"]


async def test_close_is_idempotent_and_not_reported(tone_call: Call) -> None:
    """Closing twice is harmless, and a close the server asked for is not reported as an end."""
    await asyncio.wait_for(tone_call.sink.wait_for_packets(1), TIMEOUT_S)
    await tone_call.transport.close()
    await tone_call.transport.close()
    assert tone_call.sink.ended == []
    assert all(pc is tone_call.client.pc for pc in open_peer_connections())
