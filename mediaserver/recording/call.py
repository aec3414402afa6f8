"""A recorded call's state: two channels, a reference count, and when it was last active."""

from dataclasses import dataclass, field
from enum import Enum

from mediaserver.errors import CallStateError
from mediaserver.recording.channel import Channel, Codec


class CallStatus(Enum):
    """Where a call's recording is in its life."""

    RECORDING = "recording"
    FINALIZING = "finalizing"
    STORED = "stored"
    UPLOAD_FAILED = "upload_failed"
    RECOVERED = "recovered"
    FAILED = "failed"


class EndReason(Enum):
    """Why a channel ended."""

    HANGUP = "hangup"
    EXPIRED = "expired"
    SHUTDOWN = "shutdown"
    RECOVERED = "recovered"


@dataclass(slots=True)
class Call:
    """One call: one reference per channel, finalized when the last one is dropped."""

    call_id: str
    wall_start_ns: int
    mono_start_ns: int
    codecs: dict[Channel, Codec]
    last_activity_ns: int
    open_channels: set[Channel] = field(default_factory=lambda: set(Channel))
    status: CallStatus = CallStatus.RECORDING
    end_reason: EndReason | None = None

    @property
    def refcount(self) -> int:
        """Channels still open."""
        return len(self.open_channels)

    def touch(self, now_ns: int) -> None:
        """Note activity on the call (a packet, a message)."""
        self.last_activity_ns = now_ns

    def idle_ns(self, now_ns: int) -> int:
        """How long the call has seen no activity."""
        return now_ns - self.last_activity_ns

    def end_channel(self, channel: Channel, reason: EndReason = EndReason.HANGUP) -> bool:
        """Drop the channel's reference; True exactly once, when the call has no reference left."""
        if channel not in self.open_channels:
            raise CallStateError(f"call {self.call_id}: {channel.value} channel already ended")
        self.open_channels.discard(channel)
        if self.open_channels:
            return False
        self.end_reason = reason
        self.status = CallStatus.FINALIZING
        return True
