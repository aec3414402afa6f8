"""SDP offer/answer for plain-RTP legs (RFC 3264): tables, properties, real ffmpeg at both ends."""

import socket
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediaserver.errors import SdpNegotiationError, SdpParseError
from mediaserver.rtp.offer_answer import (
    AudioOffer,
    Direction,
    Negotiation,
    RtpFormat,
    build_answer,
    negotiate,
    parse_event_list,
    read_audio_offer,
)
from mediaserver.rtp.sdp import (
    Attribute,
    Connection,
    MediaDescription,
    SessionDescription,
    build_sdp,
    parse_sdp,
)

HEAD = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"


def _offer(*media_lines: str, head: str = HEAD) -> SessionDescription:
    """An offer from its m-line and attribute lines."""
    return parse_sdp(head + "".join(f"{line}\r\n" for line in media_lines))


def _negotiate(*media_lines: str, head: str = HEAD) -> Negotiation:
    """Read and negotiate an offer."""
    return negotiate(read_audio_offer(_offer(*media_lines, head=head)))


def test_ffmpeg_style_opus_offer_is_read_whole() -> None:
    """Address, port, payload type 97 as opus/48000/2, default direction and no rtcp-mux."""
    offer = read_audio_offer(
        _offer("m=audio 5004 RTP/AVP 97", "b=AS:64", "a=rtpmap:97 opus/48000/2")
    )
    assert offer == AudioOffer(
        media_index=0,
        proto="RTP/AVP",
        address="192.0.2.10",
        address_type="IP4",
        port=5004,
        formats=(RtpFormat(97, "opus", 48000, 2),),
    )


def test_answer_names_our_address_and_port_and_echoes_the_payload_types() -> None:
    """RFC 3264 §6: our c= and port; the offer's 97 and 101; events at the audio's clock rate."""
    offer = _offer(
        "m=audio 5004 RTP/AVP 97 101 100",
        "a=rtpmap:97 OPUS/48000/2",
        "a=fmtp:97 minptime=10;useinbandfec=1",
        "a=rtpmap:100 telephone-event/8000",
        "a=rtpmap:101 telephone-event/48000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=rtcp-mux",
    )
    negotiation = negotiate(read_audio_offer(offer))
    answer = build_answer(offer, negotiation, address="203.0.113.5", port=40002, session_id=77)
    # Written out by hand from RFC 3264 §6 / RFC 4733 §7.1.1 / RFC 5761 §5.1.1.
    assert build_sdp(answer) == (
        "v=0\r\n"
        "o=mediaserver 77 0 IN IP4 203.0.113.5\r\n"
        "s=-\r\n"
        "c=IN IP4 203.0.113.5\r\n"
        "t=0 0\r\n"
        "m=audio 40002 RTP/AVP 97 101\r\n"
        "a=rtpmap:97 opus/48000/2\r\n"
        "a=rtpmap:101 telephone-event/48000\r\n"
        "a=fmtp:101 0-15\r\n"
        "a=ptime:20\r\n"
        "a=rtcp-mux\r\n"
        "a=sendrecv\r\n"
    )
    assert negotiation.codec == "opus"
    assert negotiation.audio.parameters == "minptime=10;useinbandfec=1"
    assert (negotiation.remote_address, negotiation.remote_port) == ("192.0.2.10", 5004)


def test_pcmu_with_a_dynamic_payload_type_and_its_8000_hz_events() -> None:
    """PCMU at payload type 100 (as ffmpeg -payload_type 100 writes it) pairs with 8 kHz events."""
    negotiation = _negotiate(
        "m=audio 6000 RTP/AVP 100 96 101",
        "a=rtpmap:100 PCMU/8000/1",
        "a=rtpmap:96 telephone-event/48000",
        "a=rtpmap:101 telephone-event/8000",
    )
    assert negotiation.audio == RtpFormat(100, "pcmu", 8000, 1)
    assert negotiation.telephone_event == RtpFormat(101, "telephone-event", 8000)


CHOICES = [
    pytest.param(["m=audio 9 RTP/AVP 0 8"], "pcmu", 0, None, id="static-types-need-no-rtpmap"),
    pytest.param(["m=audio 9 RTP/AVP 8 0"], "pcmu", 0, None, id="our-preference-over-order"),
    pytest.param(
        ["m=audio 9 RTP/AVP 8 111", "a=rtpmap:111 opus/48000/2"], "opus", 111, None, id="opus-first"
    ),
    pytest.param(
        ["m=audio 9 RTP/AVP 8 101", "a=rtpmap:101 telephone-event/8000"],
        "pcma",
        8,
        101,
        id="pcma-with-events",
    ),
    pytest.param(
        ["m=audio 9 RTP/AVP 96 0", "a=rtpmap:96 telephone-event/8000", "a=fmtp:96 32-40"],
        "pcmu",
        0,
        None,
        id="events-without-dtmf-ignored",
    ),
    pytest.param(
        [
            "m=audio 9 RTP/AVP 111 101",
            "a=rtpmap:111 opus/48000/2",
            "a=rtpmap:101 telephone-event/8000",
        ],
        "opus",
        111,
        None,
        id="events-at-another-clock-ignored",
    ),
    pytest.param(
        ["m=audio 9 RTP/AVP 72 0", "a=rtpmap:72 opus/48000/2"],
        "pcmu",
        0,
        None,
        id="rtcp-range-payload-type-passed-over",
    ),
    pytest.param(
        ["m=audio 9 RTP/AVP 0 112 111", "a=rtpmap:112 opus/48000", "a=rtpmap:111 opus/48000/2"],
        "opus",
        112,
        None,
        id="first-opus-in-offer-order",
    ),
    pytest.param(
        ["m=audio 9 RTP/AVP 97 0", "a=rtpmap:97 opus/16000/1"], "pcmu", 0, None, id="opus-not-48k"
    ),
    pytest.param(
        ["m=audio 9 RTP/AVP 96 0", "a=rtpmap:97 opus/48000/2"],
        "pcmu",
        0,
        None,
        id="rtpmap-of-another-type-ignored",
    ),
]


@pytest.mark.parametrize(("lines", "codec", "payload_type", "event_payload_type"), CHOICES)
def test_codec_choice(
    lines: list[str], codec: str, payload_type: int, event_payload_type: int | None
) -> None:
    """Which codec and telephone-event format an offer gets."""
    negotiation = _negotiate(*lines)
    assert (negotiation.codec, negotiation.audio.payload_type) == (codec, payload_type)
    event = negotiation.telephone_event
    assert (event.payload_type if event else None) == event_payload_type


@pytest.mark.parametrize(
    ("attribute", "ours"),
    [
        (None, Direction.SENDRECV),
        ("a=sendrecv", Direction.SENDRECV),
        ("a=sendonly", Direction.RECVONLY),
        ("a=recvonly", Direction.SENDONLY),
        ("a=inactive", Direction.INACTIVE),
    ],
)
def test_direction_is_answered_per_rfc_3264(attribute: str | None, ours: Direction) -> None:
    """RFC 3264 §6.1: sendonly is answered recvonly, recvonly sendonly, the rest in kind."""
    lines = ["m=audio 9 RTP/AVP 0", *([attribute] if attribute else [])]
    assert _negotiate(*lines).direction is ours


def test_session_level_direction_applies_unless_the_media_says_otherwise() -> None:
    """A session-level a=sendonly holds for the audio; a media-level one wins over it."""
    head = HEAD + "a=sendonly\r\n"
    assert _negotiate("m=audio 9 RTP/AVP 0", head=head).direction is Direction.RECVONLY
    assert (
        _negotiate("m=audio 9 RTP/AVP 0", "a=inactive", head=head).direction is Direction.INACTIVE
    )


def test_other_m_lines_are_rejected_in_place() -> None:
    """A video line before the audio keeps its place in the answer, with port 0."""
    offer = _offer(
        "m=video 5006 RTP/AVP 96",
        "a=rtpmap:96 H264/90000",
        "m=audio 5004 RTP/SAVP 0",
        "m=audio 5008 RTP/AVP 0",
        "c=IN IP6 2001:db8::7",
    )
    negotiation = negotiate(read_audio_offer(offer))
    assert negotiation.media_index == 2
    assert (negotiation.remote_address, negotiation.remote_port) == ("2001:db8::7", 5008)
    answer = build_answer(offer, negotiation, address="2001:db8::1", port=40000, session_id=1)
    assert [(m.media, m.port, m.proto, m.formats) for m in answer.media] == [
        ("video", 0, "RTP/AVP", ("96",)),
        ("audio", 0, "RTP/SAVP", ("0",)),
        ("audio", 40000, "RTP/AVP", ("0",)),
    ]
    assert answer.connection == Connection("2001:db8::1", "IP6")
    assert answer.origin.address_type == "IP6"
    # RFC 3605: no rtcp-mux offered, so the answer names the RTCP port (the RTP port itself).
    assert Attribute("rtcp", "40000") in answer.media[2].attributes


def test_offer_rtcp_port_and_packet_times_are_read() -> None:
    """a=rtcp (RFC 3605), a=ptime and a=maxptime; a ptime that is not a number is no hint."""
    offer = read_audio_offer(
        _offer(
            "m=audio 9 RTP/AVP 0", "a=rtcp:53020 IN IP4 192.0.2.11", "a=ptime:30", "a=maxptime:60"
        )
    )
    assert (offer.rtcp_port, offer.ptime_ms, offer.maxptime_ms) == (53020, 30, 60)
    assert negotiate(offer).ptime_ms == 30
    assert read_audio_offer(_offer("m=audio 9 RTP/AVP 0", "a=ptime:soon")).ptime_ms is None
    assert negotiate(read_audio_offer(_offer("m=audio 9 RTP/AVP 0"))).ptime_ms == 20


REFUSALS = [
    pytest.param(
        ["m=video 9 RTP/AVP 96"], SdpNegotiationError, "no plain-RTP audio", id="no-audio"
    ),
    pytest.param(
        ["m=audio 9 UDP/TLS/RTP/SAVPF 111"], SdpNegotiationError, "no plain-RTP", id="webrtc-only"
    ),
    pytest.param(["m=audio 0 RTP/AVP 0"], SdpNegotiationError, "no plain-RTP", id="port-zero"),
    pytest.param(
        ["m=audio 9 RTP/AVP 18 3"],
        SdpNegotiationError,
        "offers g729/8000, gsm/8000; this server takes opus/48000/2, PCMU/8000, PCMA/8000",
        id="no-common-codec",
    ),
    pytest.param(
        ["m=audio 9 RTP/AVP 0", "c=IN IP4 233.252.0.1/127"],
        SdpNegotiationError,
        "multicast",
        id="multicast",
    ),
    pytest.param(["m=audio 9 RTP/AVP x"], SdpParseError, "not 0-127", id="format-not-number"),
    pytest.param(["m=audio 9 RTP/AVP 200"], SdpParseError, "not 0-127", id="format-200"),
    pytest.param(
        ["m=audio 9 RTP/AVP 96", "a=rtpmap:96 opus"], SdpParseError, "a=rtpmap", id="rtpmap-no-rate"
    ),
    pytest.param(
        ["m=audio 9 RTP/AVP 96", "a=rtpmap:96 opus/0"], SdpParseError, "a=rtpmap", id="rate-zero"
    ),
    pytest.param(["m=audio 9 RTP/AVP 0", "a=rtcp:99999"], SdpParseError, "a=rtcp", id="rtcp-port"),
    pytest.param(
        ["m=audio 9 RTP/AVP 0 101", "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-x"],
        SdpParseError,
        "list of events",
        id="event-list",
    ),
]


@pytest.mark.parametrize(("lines", "error", "words"), REFUSALS)
def test_offers_that_cannot_be_answered_say_why(
    lines: list[str], error: type[Exception], words: str
) -> None:
    """Each refusal is our own error with a message that says what is missing or wrong."""
    with pytest.raises(error) as raised:
        _negotiate(*lines)
    assert words in str(raised.value)


def test_audio_without_any_c_line_is_refused() -> None:
    """RFC 8866 §5.7: c= at session level or in the media; neither is malformed."""
    head = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nt=0 0\r\n"
    with pytest.raises(SdpParseError, match="no c= line"):
        _negotiate("m=audio 9 RTP/AVP 0", head=head)


@pytest.mark.parametrize(
    ("text", "events"),
    [
        (None, set(range(16))),
        ("", set(range(16))),
        ("0-15", set(range(16))),
        ("0-16", set(range(17))),
        ("0-11, 16", {*range(12), 16}),
        ("66,70", {66, 70}),
    ],
)
def test_event_lists(text: str | None, events: set[int]) -> None:
    """RFC 4733 §7.1.1 event lists; none given means the DTMF digits 0-15."""
    assert parse_event_list(text) == events


# -- properties ---------------------------------------------------------------------------------

_encodings = st.sampled_from(
    [
        ("opus", 48000, 2),
        ("OPUS", 48000, 2),
        ("opus", 48000, 1),
        ("PCMU", 8000, 1),
        ("pcma", 8000, 1),
        ("telephone-event", 8000, 1),
        ("telephone-event", 48000, 1),
        ("G722", 8000, 1),
        ("opus", 24000, 1),
    ]
)


@st.composite
def _offers(draw: st.DrawFn) -> SessionDescription:
    """An offer: a few m-lines, one or more of them plain-RTP audio with random formats."""
    media = []
    for _ in range(draw(st.integers(1, 4))):
        payload_types = draw(st.lists(st.integers(0, 127), min_size=1, max_size=6, unique=True))
        attributes = []
        for payload_type in payload_types:
            if draw(st.booleans()):
                name, rate, channels = draw(_encodings)
                suffix = f"/{channels}" if channels > 1 or draw(st.booleans()) else ""
                attributes.append(Attribute("rtpmap", f"{payload_type} {name}/{rate}{suffix}"))
        attributes += draw(
            st.lists(
                st.sampled_from(
                    [
                        Attribute("rtcp-mux"),
                        Attribute("sendonly"),
                        Attribute("inactive"),
                        Attribute("ptime", "40"),
                        Attribute("mid", "a"),
                    ]
                ),
                max_size=3,
            )
        )
        media.append(
            MediaDescription(
                draw(st.sampled_from(["audio", "audio", "video"])),
                draw(st.sampled_from([0, 5004, 65535])),
                draw(st.sampled_from(["RTP/AVP", "RTP/AVPF", "RTP/SAVP"])),
                tuple(str(pt) for pt in payload_types),
                attributes=tuple(attributes),
            )
        )
    return SessionDescription(connection=Connection("192.0.2.1"), media=tuple(media))


@given(_offers(), st.integers(1, 65535))
def test_every_answer_fits_its_offer(offer: SessionDescription, port: int) -> None:
    """Refused with our error, or answered with offered payload types at matching clocks."""
    try:
        negotiation = negotiate(read_audio_offer(parse_sdp(build_sdp(offer))))
    except SdpNegotiationError:
        return
    offered = offer.media[negotiation.media_index]
    assert offered.media == "audio"
    assert offered.proto in ("RTP/AVP", "RTP/AVPF")
    assert str(negotiation.audio.payload_type) in offered.formats
    assert not 64 <= negotiation.audio.payload_type <= 95
    if negotiation.telephone_event is not None:
        assert negotiation.telephone_event.clock_rate_hz == negotiation.audio.clock_rate_hz
        assert str(negotiation.telephone_event.payload_type) in offered.formats
    answer = build_answer(offer, negotiation, address="192.0.2.99", port=port, session_id=5)
    assert parse_sdp(build_sdp(answer)) == answer
    assert len(answer.media) == len(offer.media)
    for index, (ours, theirs) in enumerate(zip(answer.media, offer.media, strict=True)):
        assert ours.proto == theirs.proto
        assert set(ours.formats) <= set(theirs.formats)
        assert ours.port == (port if index == negotiation.media_index else 0)


# -- real ffmpeg: its -sdp_file as the offer, our answer as the input of an ffmpeg receiver ------


def _free_udp_port() -> int:
    """A UDP port nobody uses right now (and port + 1, which ffmpeg's RTCP takes)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port % 2 == 0 and port < 65000:
            return port


def _dominant_hz(path: Path) -> float:
    """The loudest frequency of a 16-bit WAV file's first channel."""
    with wave.open(str(path)) as wav:
        rate_hz, channels = wav.getframerate(), wav.getnchannels()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")[::channels]
    assert samples.size > rate_hz // 2, "less than half a second of audio came through"
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum) * rate_hz / samples.size)


@pytest.mark.parametrize(
    ("encoder_args", "codec", "payload_type"),
    [
        pytest.param(["-c:a", "libopus"], "opus", 97, id="opus-ffmpeg-defaults"),
        pytest.param(
            ["-ar", "8000", "-ac", "1", "-c:a", "pcm_mulaw", "-payload_type", "100"],
            "pcmu",
            100,
            id="pcmu-dynamic-100",
        ),
    ],
)
def test_ffmpeg_offer_answered_and_decoded_by_ffmpeg(
    tmp_path: Path, encoder_args: list[str], codec: str, payload_type: int
) -> None:
    """ffmpeg's -sdp_file parses as an offer; ffmpeg reads our answer and decodes the tone sent."""
    tone = ["-f", "lavfi", "-i", "sine=f=440:d=3", *encoder_args, "-f", "rtp"]
    offer_path = tmp_path / "offer.sdp"
    subprocess.run(
        [
            *("ffmpeg", "-hide_banner", "-loglevel", "error", "-t", "0.1", *tone),
            *("-sdp_file", str(offer_path), "rtp://127.0.0.1:9"),
        ],
        check=True,
        timeout=30,
    )
    offer = parse_sdp(offer_path.read_text())
    negotiation = negotiate(read_audio_offer(offer))
    assert (negotiation.codec, negotiation.audio.payload_type) == (codec, payload_type)

    port = _free_udp_port()
    answer_path = tmp_path / "answer.sdp"
    answer_path.write_text(
        build_sdp(build_answer(offer, negotiation, address="127.0.0.1", port=port, session_id=1))
    )
    received = tmp_path / "received.wav"
    receiver = subprocess.Popen(
        [
            *("ffmpeg", "-hide_banner", "-loglevel", "error", "-y"),
            *("-protocol_whitelist", "file,rtp,udp", "-i", str(answer_path)),
            *("-t", "1.5", str(received)),
        ],
        stderr=subprocess.PIPE,
    )
    try:
        # The receiver binds as soon as it has read the SDP; the tone outlasts any start-up delay.
        subprocess.run(
            [
                "ffmpeg",
                "-hide_banner",
                "-loglevel",
                "error",
                "-re",
                *tone,
                f"rtp://127.0.0.1:{port}",
            ],
            check=True,
            timeout=30,
        )
        _, stderr = receiver.communicate(timeout=30)
    finally:
        receiver.kill()
    assert receiver.returncode == 0, stderr
    assert abs(_dominant_hz(received) - 440) < 5
