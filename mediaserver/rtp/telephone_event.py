"""RFC 4733 telephone-event payloads (DTMF digits and other events): parsed and built."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from mediaserver.errors import TelephoneEventError

# RFC 4733 §2.3: one event is four octets.
#  0                   1                   2                   3
#  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |     event     |E|R| volume    |          duration             |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
_EVENT = struct.Struct("!BBH")
EVENT_SIZE = _EVENT.size
_END_BIT = 0x80  # §2.3.2: the last packets of an event carry E
_VOLUME_MASK = 0x3F  # §2.3.4; the R bit between E and volume is reserved (§2.3.3): ignored
MAX_VOLUME = _VOLUME_MASK
MAX_DURATION = 0xFFFF  # §2.3.5: in RTP timestamp units; longer events are segmented (§2.5.1.3)
# RFC 4733 §2.5.1.5 lets one packet carry several events; a sender has no use for many, and a
# payload this long would be a forged one.
MAX_EVENTS_PER_PACKET = 16
# RFC 4733 §3.2 table 7: DTMF events 0-15.
DTMF_DIGITS = "0123456789*#ABCD"


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One event block: what, whether it has ended, how loud, and how long so far."""

    event: int  # §2.3.1: 0-255; 0-15 are DTMF digits
    end: bool
    volume: int  # §2.3.4: power level in -dBm0, 0 (loudest) to 63
    duration: int  # §2.3.5: RTP timestamp units since the event's start

    def __post_init__(self) -> None:
        """Reject values no event block can carry."""
        if not 0 <= self.event <= 0xFF:
            raise TelephoneEventError(f"telephone-event code {self.event} is outside 0-255")
        if not 0 <= self.volume <= MAX_VOLUME:
            raise TelephoneEventError(f"telephone-event volume {self.volume} is outside 0-63")
        if not 0 <= self.duration <= MAX_DURATION:
            raise TelephoneEventError(
                f"telephone-event duration {self.duration} is outside 16 bits"
            )

    @property
    def digit(self) -> str | None:
        """The DTMF digit this event is, or None for other events (flash, tones, ...)."""
        return dtmf_digit(self.event)

    def __bytes__(self) -> bytes:
        """The four octets of this event (R sent as 0)."""
        return _EVENT.pack(self.event, (_END_BIT if self.end else 0) | self.volume, self.duration)


def dtmf_digit(event: int) -> str | None:
    """The DTMF digit of an event code (RFC 4733 §3.2), None if it is another event."""
    return DTMF_DIGITS[event] if 0 <= event < len(DTMF_DIGITS) else None


def parse_telephone_events(payload: bytes) -> tuple[TelephoneEvent, ...]:
    """The event blocks of one telephone-event payload, in order."""
    size = len(payload)
    if size == 0 or size % EVENT_SIZE:
        raise TelephoneEventError(
            f"telephone-event payload is {size} bytes, not a whole number of 4-byte events"
        )
    if size > EVENT_SIZE * MAX_EVENTS_PER_PACKET:
        raise TelephoneEventError(
            f"telephone-event payload has {size // EVENT_SIZE} events,"
            f" more than {MAX_EVENTS_PER_PACKET}"
        )
    return tuple(
        TelephoneEvent(event, bool(flags & _END_BIT), flags & _VOLUME_MASK, duration)
        for event, flags, duration in _EVENT.iter_unpack(payload)
    )


def build_telephone_events(events: tuple[TelephoneEvent, ...]) -> bytes:
    """One payload carrying these event blocks."""
    if not 1 <= len(events) <= MAX_EVENTS_PER_PACKET:
        raise TelephoneEventError(
            f"a telephone-event payload carries 1 to {MAX_EVENTS_PER_PACKET} events"
        )
    return b"".join(bytes(event) for event in events)
