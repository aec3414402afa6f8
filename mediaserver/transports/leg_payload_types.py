"""What a plain-RTP leg negotiated, and what it does with each payload type it receives."""

from __future__ import annotations

import structlog

from mediaserver.errors import RtpParseError
from mediaserver.rtp.dtmf_detector import DtmfDetector, DtmfDigit

log = structlog.get_logger(__name__)


class LegPayloadTypes:
    """The leg's audio and telephone-event payload types, its DTMF detector, and what else came."""

    def __init__(self, *, audio: int, dtmf: int | None, clock_rate_hz: int) -> None:
        self.audio = audio
        self.dtmf = dtmf
        self.dtmf_packets_in = 0
        self.malformed_events = 0
        # Payload types received that the leg did not negotiate: how many of each.
        self.unexpected: dict[int, int] = {}
        self._detector = DtmfDetector(clock_rate_hz)

    @property
    def accepted(self) -> tuple[int, int | None]:
        """The payload types a peer's packets may carry."""
        return self.audio, self.dtmf

    def telephone_event(self, timestamp: int, marker: bool, payload: bytes) -> list[DtmfDigit]:
        """Feed an RFC 4733 packet to the detector; the digits it completes."""
        self.dtmf_packets_in += 1
        try:
            return self._detector.add(timestamp, marker, payload)
        except RtpParseError:
            self.malformed_events += 1
            return []

    def flush(self) -> list[DtmfDigit]:
        """Digits whose end packets never came (the leg is over)."""
        return self._detector.flush()

    def note_unexpected(self, payload_type: int, port: int | None) -> None:
        """Count a packet of a payload type the leg did not negotiate; log each type once."""
        if payload_type in self.unexpected:
            self.unexpected[payload_type] += 1
            return
        self.unexpected[payload_type] = 1
        log.warning(
            "rtp.unexpected_payload_type",
            port=port,
            payload_type=payload_type,
            negotiated=self.audio,
            dtmf_payload_type=self.dtmf,
        )
