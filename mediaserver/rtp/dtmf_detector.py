"""DTMF digits from a stream of RFC 4733 telephone-event packets: start, duration, once each."""

# How a sender marks an event (RFC 4733 §2.5.1): every packet of one event carries the event's
# start as its RTP timestamp and the duration so far; the first has the marker bit; the last
# three (§2.5.1.4) are identical copies with the E bit and the final duration. An event longer
# than 0xFFFF timestamp units (1.4 s at Opus's 48000 Hz) goes on in a new segment whose timestamp
# is the old one plus 0xFFFF, without the marker bit (§2.5.1.3). A packet may carry several events
# back to back, each starting where the one before it ended (§2.5.1.5).
#
# The detector reports a digit once: when its first E packet arrives, or, if every E packet was
# lost, when the next event starts or the stream is flushed. Anything that starts at or before
# the last reported event is a repeat or a latecomer and is dropped, so state stays a few ints.

from __future__ import annotations

from dataclasses import dataclass

from mediaserver.rtp.telephone_event import (
    MAX_DURATION,
    TelephoneEvent,
    dtmf_digit,
    parse_telephone_events,
)
from mediaserver.rtp.unwrap import TimestampUnwrapper

_TIMESTAMP_MODULUS = 1 << 32


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    """A detected digit: when it started (RTP timestamp) and how long it lasted."""

    digit: str
    start_timestamp: int  # the event's RTP timestamp, 32 bits as sent
    duration: int  # RTP timestamp units, all segments together
    clock_rate_hz: int
    volume: int  # -dBm0
    ended: bool  # False when the E packets never came and the digit was closed for them

    @property
    def duration_ms(self) -> float:
        """The digit's length in milliseconds."""
        return self.duration * 1000 / self.clock_rate_hz


@dataclass(slots=True)
class _Ongoing:
    """The event being received."""

    event: int
    start: int  # unwrapped timestamp of the first segment
    segment_start: int  # unwrapped timestamp of the current segment
    duration: int  # all segments so far
    volume: int


class DtmfDetector:
    """Turns telephone-event packets of one stream into digits, each reported once."""

    def __init__(self, clock_rate_hz: int) -> None:
        """Detect on a stream whose RTP clock runs at `clock_rate_hz` (the audio's rate)."""
        self.clock_rate_hz = clock_rate_hz
        self._unwrapper = TimestampUnwrapper()
        self._ongoing: _Ongoing | None = None
        self._last_start: int | None = None  # last segment start of the last event closed
        self.other_events = 0  # events that are not DTMF digits (flash, tones), not reported

    def add(self, rtp_timestamp: int, marker: bool, payload: bytes) -> list[DtmfDigit]:
        """Take one packet's timestamp, marker bit and payload; return the digits it completes."""
        events = parse_telephone_events(payload)  # raises before any state changes
        start = self._unwrapper.unwrap(rtp_timestamp)
        digits: list[DtmfDigit] = []
        for index, event in enumerate(events):
            self._add_event(start, marker and index == 0, event, digits)
            start += event.duration  # §2.5.1.5: the next event starts where this one ended
        return digits

    def flush(self) -> list[DtmfDigit]:
        """Close the event in progress (the stream ended, or went quiet for good)."""
        digits: list[DtmfDigit] = []
        self._close(ended=False, digits=digits)
        return digits

    def _add_event(
        self, start: int, marker: bool, event: TelephoneEvent, out: list[DtmfDigit]
    ) -> None:
        """One event block that started at the unwrapped timestamp `start`."""
        if self._last_start is not None and start <= self._last_start:
            return  # a repeated E packet, or a packet of an event already reported
        ongoing = self._ongoing
        if ongoing is not None and start != ongoing.segment_start:
            if start < ongoing.segment_start:
                return  # a late packet of an earlier segment: the later one already counts
            if self._continues(ongoing, start, marker, event):
                ongoing.duration = start - ongoing.start + event.duration
                ongoing.segment_start = start
            else:
                self._close(ended=False, digits=out)  # its E packets were lost
                ongoing = None
        if ongoing is None:
            ongoing = self._ongoing = _Ongoing(
                event.event, start, start, event.duration, event.volume
            )
        else:
            # Packets of one segment may arrive out of order: the longest duration is the latest.
            ongoing.duration = max(ongoing.duration, start - ongoing.start + event.duration)
        if event.end:
            self._close(ended=True, digits=out)

    @staticmethod
    def _continues(ongoing: _Ongoing, start: int, marker: bool, event: TelephoneEvent) -> bool:
        """True if a block at a new timestamp is the next segment of a long event (§2.5.1.3)."""
        # A full segment lasts the 16-bit maximum, so the next one starts exactly that much later;
        # the position alone tells it, even when the segment's last packets were lost.
        return (
            not marker
            and event.event == ongoing.event
            and start - ongoing.segment_start == MAX_DURATION
        )

    def _close(self, *, ended: bool, digits: list[DtmfDigit]) -> None:
        """Report the ongoing event (if a digit) and remember where it started."""
        ongoing = self._ongoing
        if ongoing is None:
            return
        self._ongoing = None
        self._last_start = ongoing.segment_start  # repeats of its last segment come after this
        digit = dtmf_digit(ongoing.event)
        if digit is None:
            self.other_events += 1
            return
        digits.append(
            DtmfDigit(
                digit=digit,
                start_timestamp=ongoing.start % _TIMESTAMP_MODULUS,
                duration=ongoing.duration,
                clock_rate_hz=self.clock_rate_hz,
                volume=ongoing.volume,
                ended=ended,
            )
        )
