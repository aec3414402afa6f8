"""The two channels of a recorded call and the codecs they may carry."""

from enum import Enum


class Channel(Enum):
    """A direction of the call: the caller is always left, the agent always right."""

    CALLER = "caller"
    AGENT = "agent"

    # Enum.__hash__ is Python code; members are singletons, so identity hashing is equivalent
    # and several times faster for the per-packet dict and set lookups.
    __hash__ = object.__hash__

    @property
    def side(self) -> str:
        """Stereo side of this channel in every output file."""
        return "left" if self is Channel.CALLER else "right"


class Codec(Enum):
    """Audio codec of a channel's RTP payloads."""

    OPUS = "opus"
    PCMU = "pcmu"
    PCMA = "pcma"

    @property
    def clock_rate_hz(self) -> int:
        """RTP clock rate: 48 kHz for Opus (RFC 7587 §4.1), 8 kHz for G.711 (RFC 3551 §4.5.14)."""
        return 48000 if self is Codec.OPUS else 8000

    @property
    def static_payload_type(self) -> int | None:
        """Static RTP payload type (RFC 3551 table 4), None for dynamic ones."""
        return {Codec.PCMU: 0, Codec.PCMA: 8}.get(self)
