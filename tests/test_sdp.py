"""SDP text <-> values (RFC 8866): table tests, limits, round trips and fuzzing."""

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediaserver.errors import SdpParseError
from mediaserver.rtp.sdp import (
    MAX_MEDIA_SECTIONS,
    MAX_SDP_CHARS,
    MAX_SDP_LINES,
    Attribute,
    Connection,
    MediaDescription,
    Origin,
    SessionDescription,
    build_sdp,
    parse_sdp,
)

# What `ffmpeg -f rtp -sdp_file` writes for libopus (LF line ends, as ffmpeg writes them).
FFMPEG_OFFER = (
    "v=0\n"
    "o=- 0 0 IN IP4 127.0.0.1\n"
    "s=No Name\n"
    "c=IN IP4 127.0.0.1\n"
    "t=0 0\n"
    "a=tool:libavformat 59.27.100\n"
    "m=audio 5004 RTP/AVP 97\n"
    "b=AS:64\n"
    "a=rtpmap:97 opus/48000/2\n"
)

# A SIP-style offer: CRLF, media-level c=, dropped lines (i=, e=, k=), two m-lines.
SIP_OFFER = (
    "v=0\r\n"
    "o=alice 2890844526 2890844527 IN IP4 198.51.100.1\r\n"
    "s=call\r\n"
    "i=a call with a video line it will not get\r\n"
    "e=alice@example.com\r\n"
    "t=0 0\r\n"
    "a=sendrecv\r\n"
    "m=video 51372/2 RTP/AVP 31\r\n"
    "c=IN IP4 198.51.100.2\r\n"
    "m=audio 49170 RTP/AVP 0 8 101\r\n"
    "c=IN IP6 2001:db8::1\r\n"
    "k=prompt\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-15\r\n"
    "a=ptime:20\r\n"
    "a=rtcp-mux\r\n"
)


def test_ffmpeg_offer_parses_to_its_values() -> None:
    """Every line of ffmpeg's SDP lands in the value it describes."""
    assert parse_sdp(FFMPEG_OFFER) == SessionDescription(
        origin=Origin("-", "0", "0", "IN", "IP4", "127.0.0.1"),
        session_name="No Name",
        connection=Connection("127.0.0.1", "IP4", "IN"),
        times=(("0", "0"),),
        attributes=(Attribute("tool", "libavformat 59.27.100"),),
        media=(
            MediaDescription(
                media="audio",
                port=5004,
                proto="RTP/AVP",
                formats=("97",),
                bandwidths=("AS:64",),
                attributes=(Attribute("rtpmap", "97 opus/48000/2"),),
            ),
        ),
    )


def test_sip_offer_keeps_sections_apart_and_drops_what_it_does_not_model() -> None:
    """Media-level c= and a= stay with their m-line; i=, e=, k= are read and dropped."""
    description = parse_sdp(SIP_OFFER)
    assert description.origin.session_version == "2890844527"
    assert description.attributes == (Attribute("sendrecv"),)
    video, audio = description.media
    assert (video.media, video.port, video.port_count, video.formats) == (
        "video",
        51372,
        2,
        ("31",),
    )
    assert video.connection == Connection("198.51.100.2")
    assert audio.connection == Connection("2001:db8::1", "IP6")
    assert audio.formats == ("0", "8", "101")
    assert audio.attributes == (
        Attribute("rtpmap", "101 telephone-event/8000"),
        Attribute("fmtp", "101 0-15"),
        Attribute("ptime", "20"),
        Attribute("rtcp-mux"),
    )


def test_built_text_is_crlf_in_rfc_order() -> None:
    """build_sdp writes v, o, s, c, b, t, a, then each m with its c, b, a; CRLF after each."""
    text = build_sdp(parse_sdp(SIP_OFFER))
    assert text == (
        "v=0\r\n"
        "o=alice 2890844526 2890844527 IN IP4 198.51.100.1\r\n"
        "s=call\r\n"
        "t=0 0\r\n"
        "a=sendrecv\r\n"
        "m=video 51372/2 RTP/AVP 31\r\n"
        "c=IN IP4 198.51.100.2\r\n"
        "m=audio 49170 RTP/AVP 0 8 101\r\n"
        "c=IN IP6 2001:db8::1\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-15\r\n"
        "a=ptime:20\r\n"
        "a=rtcp-mux\r\n"
    )


BAD_SDP = [
    pytest.param("", "start with v=0", id="empty"),
    pytest.param("v=1\r\no=- 0 0 IN IP4 h\r\n", "start with v=0", id="version-1"),
    pytest.param("o=- 0 0 IN IP4 h\r\nv=0\r\n", "start with v=0", id="v-not-first"),
    pytest.param("v=0\r\ns=-\r\n", "no o= line", id="no-origin"),
    pytest.param("v=0\r\no=- 0 0 IN IP4\r\n", "line 2: o= does not have six", id="origin-5"),
    pytest.param("v=0\r\no=- x 0 IN IP4 h\r\n", "must be numbers", id="origin-id"),
    pytest.param("v=0\r\nx=1\r\n", "line 2 has a type letter", id="unknown-letter"),
    pytest.param("v=0\r\nhello\r\n", "line 2 is not <type>=<value>", id="no-equals"),
    pytest.param("v=0\r\nA=1\r\n", "type letter", id="upper-case-letter"),
    pytest.param("v=0\r\no=- 0 0 IN IP4 h\r\ns=a\x00b\r\n", "CR or NUL", id="nul"),
    pytest.param("v=0\r\no=- 0 0 IN IP4 h\r\ns=a\rb\r\n", "CR or NUL", id="bare-cr"),
    pytest.param("v=0\r\no=- 0 0 IN IP4 h\r\nc=IN IP4\r\n", "c= does not have three", id="c-2"),
    pytest.param("v=0\r\no=- 0 0 IN IP4 h\r\nb=64\r\n", "b= is not", id="b-no-colon"),
    pytest.param("v=0\r\no=- 0 0 IN IP4 h\r\nt=now\r\n", "t= is not", id="t-text"),
    pytest.param("v=0\r\no=- 0 0 IN IP4 h\r\nm=audio 9 RTP/AVP\r\n", "needs media", id="m-3"),
    pytest.param("v=0\r\no=- 0 0 IN IP4 h\r\nm=audio 70000 RTP/AVP 0\r\n", "port", id="port"),
    pytest.param("v=0\r\no=- 0 0 IN IP4 h\r\nm=audio -1 RTP/AVP 0\r\n", "port", id="port-neg"),
    pytest.param("v=0\r\no=- 0 0 IN IP4 h\r\nm=audio 9/0 RTP/AVP 0\r\n", "number of", id="count"),
    pytest.param("v=0\r\no=- 0 0 IN IP4 h\r\nm=audio  9 RTP/AVP 0\r\n", "needs", id="two-spaces"),
    pytest.param("v=0\r\no=- 0 0 IN IP4 h\r\na=:x\r\n", "not a token", id="a-no-name"),
    pytest.param("v=0\r\no=- 0 0 IN IP4 h\r\na=a b\r\n", "not a token", id="a-space"),
    pytest.param(
        "v=0\r\no=- 0 0 IN IP4 h\r\nm=audio 9 RTP/AVP 0\r\ns=-\r\n",
        "before the first m=",
        id="s-late",
    ),
    pytest.param("v=0\r\nv=0\r\no=- 0 0 IN IP4 h\r\n", "v= appears twice", id="v-twice"),
    pytest.param("v=0\r\n" + "a=x\r\n" * MAX_SDP_LINES, "lines, more than", id="too-many-lines"),
    pytest.param("v=0\r\ns=" + "x" * MAX_SDP_CHARS, "characters, more than", id="too-long"),
    pytest.param(
        "v=0\r\no=- 0 0 IN IP4 h\r\n" + "m=audio 9 RTP/AVP 0\r\n" * (MAX_MEDIA_SECTIONS + 1),
        "more than 32 media",
        id="too-many-media",
    ),
    pytest.param(
        "v=0\r\no=- 0 0 IN IP4 h\r\nm=audio 9 RTP/AVP " + " ".join(["0"] * 129) + "\r\n",
        "more than 128 formats",
        id="too-many-formats",
    ),
]


@pytest.mark.parametrize(("text", "words"), BAD_SDP)
def test_malformed_sdp_is_refused_with_a_reason(text: str, words: str) -> None:
    """Each malformed description raises SdpParseError saying what (and which line) is wrong."""
    with pytest.raises(SdpParseError) as raised:
        parse_sdp(text)
    assert words in str(raised.value)
    assert "'" not in str(raised.value)  # the input is never echoed as a repr


def test_a_thousand_candidate_lines_parse() -> None:
    """Up to the line limit, a description full of candidates is read in one pass."""
    candidates = "".join(
        f"a=candidate:{n} 1 udp 2130706431 192.0.2.{n % 250} {10000 + n} typ host\r\n"
        for n in range(MAX_SDP_LINES - 10)
    )
    text = "v=0\r\no=- 0 0 IN IP4 h\r\ns=-\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n" + candidates
    assert len(parse_sdp(text).media[0].attributes) == MAX_SDP_LINES - 10


# -- properties ---------------------------------------------------------------------------------

_field = st.text(
    st.characters(blacklist_characters=" \r\n\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
)
_value = st.text(
    st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)), max_size=20
)
_digits = st.from_regex(r"[0-9]{1,20}", fullmatch=True)
_token = st.from_regex(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]{1,12}", fullmatch=True)
_attributes = st.lists(st.builds(Attribute, _token, st.none() | _value), max_size=5).map(tuple)
_connections = st.none() | st.builds(Connection, _field, _field, _field)
_bandwidths = st.lists(st.tuples(_token, _digits).map(":".join), max_size=2).map(tuple)
_media = st.builds(
    MediaDescription,
    media=_field,
    port=st.integers(0, 65535),
    proto=_field,
    formats=st.lists(_field, min_size=1, max_size=6).map(tuple),
    port_count=st.none() | st.integers(1, 65535),
    connection=_connections,
    bandwidths=_bandwidths,
    attributes=_attributes,
)
_descriptions = st.builds(
    SessionDescription,
    origin=st.builds(Origin, _field, _digits, _digits, _field, _field, _field),
    session_name=_value,
    connection=_connections,
    bandwidths=_bandwidths,
    times=st.lists(st.tuples(_digits, _digits), min_size=1, max_size=2).map(tuple),
    attributes=_attributes,
    media=st.lists(_media, max_size=4).map(tuple),
)


@given(_descriptions)
def test_values_round_trip_through_text(description: SessionDescription) -> None:
    """parse(build(d)) == d for every description the values can hold."""
    assert parse_sdp(build_sdp(description)) == description


_sdp_lines = st.one_of(
    st.sampled_from(FFMPEG_OFFER.splitlines() + SIP_OFFER.splitlines()),
    st.from_regex(r"[a-z]=[^\r\n]{0,30}", fullmatch=True),
    st.text(max_size=30),
)


@given(st.lists(_sdp_lines, max_size=25), st.sampled_from(["\n", "\r\n"]))
def test_any_text_either_fails_cleanly_or_round_trips(lines: list[str], newline: str) -> None:
    """Random lines: SdpParseError, or a value that survives build and parse unchanged."""
    try:
        description = parse_sdp(newline.join(["v=0", *lines]))
    except SdpParseError:
        return
    assert parse_sdp(build_sdp(description)) == description


@given(st.text(max_size=200))
def test_arbitrary_text_never_raises_anything_else(text: str) -> None:
    """Whatever the text, the parser raises nothing but SdpParseError."""
    with contextlib.suppress(SdpParseError):
        parse_sdp(text)
