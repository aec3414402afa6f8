"""RFC 4733 telephone-event payloads: hand-assembled bytes, round trips and fuzzing."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediaserver.errors import TelephoneEventError
from mediaserver.rtp.telephone_event import (
    MAX_EVENTS_PER_PACKET,
    TelephoneEvent,
    build_telephone_events,
    dtmf_digit,
    parse_telephone_events,
)

WIRE_CASES = [
    pytest.param(
        bytes.fromhex(
            "05"  # event 5
            "0a"  # E=0 R=0 volume 10 (-10 dBm0)
            "00a0"  # duration 160 (20 ms at 8000 Hz)
        ),
        (TelephoneEvent(5, False, 10, 160),),
        id="digit-5-start",
    ),
    pytest.param(
        bytes.fromhex("0b8a0320"),  # event 11 (#) | E=1 volume 10 | duration 800
        (TelephoneEvent(11, True, 10, 800),),
        id="pound-end",
    ),
    pytest.param(
        bytes.fromhex("103fffff"),  # event 16 (flash) | volume 63 | duration 65535
        (TelephoneEvent(16, False, 63, 0xFFFF),),
        id="flash-longest",
    ),
    pytest.param(
        bytes.fromhex(
            "01"
            "8a"
            "0640"  # 1, ended, 1600 units
            "02"
            "0a"
            "00a0"  # 2, going on, 160 units (RFC 4733 §2.5.1.5: events back to back)
        ),
        (TelephoneEvent(1, True, 10, 1600), TelephoneEvent(2, False, 10, 160)),
        id="two-events",
    ),
]


@pytest.mark.parametrize(("payload", "events"), WIRE_CASES)
def test_parse_and_build(payload: bytes, events: tuple[TelephoneEvent, ...]) -> None:
    """Hand-assembled payloads parse to their events and build back to the same bytes."""
    assert parse_telephone_events(payload) == events
    assert build_telephone_events(events) == payload


def test_reserved_bit_is_ignored() -> None:
    """RFC 4733 §2.3.3: R is ignored on receipt (and sent as 0)."""
    (event,) = parse_telephone_events(bytes.fromhex("07ca0140"))  # E=1 R=1 volume 10
    assert event == TelephoneEvent(7, True, 10, 320)
    assert bytes(event) == bytes.fromhex("078a0140")


@pytest.mark.parametrize(
    ("event", "digit"),
    [(0, "0"), (9, "9"), (10, "*"), (11, "#"), (12, "A"), (15, "D"), (16, None), (255, None)],
)
def test_dtmf_digits(event: int, digit: str | None) -> None:
    """RFC 4733 §3.2: 0-9, then * # A B C D; other events are no digit."""
    assert dtmf_digit(event) == digit


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"", "0 bytes"),
        (b"\x01\x0a\x00", "3 bytes"),
        (b"\x01\x0a\x00\xa0\x02", "5 bytes"),
        (bytes(4 * (MAX_EVENTS_PER_PACKET + 1)), "more than 16"),
    ],
)
def test_malformed_payloads_are_refused(payload: bytes, words: str) -> None:
    """A payload that is not whole 4-byte events (or absurdly many) raises our error."""
    with pytest.raises(TelephoneEventError, match=words):
        parse_telephone_events(payload)


@pytest.mark.parametrize(
    "fields", [(256, False, 0, 0), (-1, False, 0, 0), (1, False, 64, 0), (1, False, 0, 65536)]
)
def test_values_no_payload_can_carry_are_refused(fields: tuple[int, bool, int, int]) -> None:
    """Events, volumes and durations outside their bit fields raise at construction."""
    with pytest.raises(TelephoneEventError):
        TelephoneEvent(*fields)


_events = st.builds(
    TelephoneEvent,
    st.integers(0, 255),
    st.booleans(),
    st.integers(0, 63),
    st.integers(0, 0xFFFF),
)


@given(st.lists(_events, min_size=1, max_size=MAX_EVENTS_PER_PACKET).map(tuple))
def test_events_round_trip(events: tuple[TelephoneEvent, ...]) -> None:
    """parse(build(events)) == events."""
    assert parse_telephone_events(build_telephone_events(events)) == events


@given(st.binary(max_size=80))
def test_any_bytes_parse_or_raise_our_error(payload: bytes) -> None:
    """Random bytes: our error, or events whose bytes are the input with R cleared."""
    try:
        events = parse_telephone_events(payload)
    except TelephoneEventError:
        return
    cleared = bytes(b & ~0x40 if i % 4 == 1 else b for i, b in enumerate(payload))
    assert build_telephone_events(events) == cleared
