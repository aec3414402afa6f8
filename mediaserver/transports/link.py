"""What the call session and its transports expect of each other."""

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from mediaserver.recording.call import EndReason
from mediaserver.recording.channel import Codec
from mediaserver.rtp.dtmf_detector import DtmfDigit
from mediaserver.rtp.media_packet import MediaPacket

Pcm = npt.NDArray[np.int16]


class CallerMediaSink(Protocol):
    """Where a caller transport delivers what it receives and sends (the call session)."""

    def on_caller_packet(self, packet: MediaPacket) -> None:
        """One RTP packet of caller audio, exactly as received (no decoding, no re-encoding)."""
        ...

    def on_audio_sent(self, packet: MediaPacket) -> None:
        """An agent packet has left toward the caller: its header as sent, `arrival_ns` = when."""
        ...

    def on_caller_dtmf(self, digit: DtmfDigit, ssrc: int, arrival_ns: int) -> None:
        """The caller pressed a key (RFC 4733); `arrival_ns` is when its last packet came."""
        ...

    def on_caller_ended(self, reason: EndReason) -> None:
        """The caller leg is over (hangup, RTCP BYE, media timeout, ICE failure)."""
        ...


class CallerLink(Protocol):
    """A caller transport as the call session sees it (WebRTC or plain RTP)."""

    codec: Codec

    @property
    def payload_type(self) -> int:
        """The payload type the caller expects for the audio we send."""
        ...

    @property
    def can_send(self) -> bool:
        """Whether a packet sent now would reach the caller (a peer is known, media flows)."""
        ...

    def send_audio(self, packet: MediaPacket) -> None:
        """Send one agent packet now (sequence, timestamp, marker and payload as given)."""
        ...

    def describe(self) -> dict[str, Any]:
        """The leg's counters and addresses, for the API."""
        ...

    def drop_counts(self) -> Mapping[str, int]:
        """Packets the transport dropped, by reason."""
        ...

    async def close(self) -> None:
        """Tear the leg down and release its sockets."""
        ...


class AgentMediaSink(Protocol):
    """Where an agent connection delivers what the agent sends (implemented by the call session)."""

    def on_agent_audio(self, pcm: Pcm, arrival_ns: int) -> None:
        """Agent speech (mono int16 PCM at the connection's rate) that reached the server then."""
        ...

    def on_caller_audio_sent(self, arrival_ns: int, sent_ns: int) -> None:
        """Caller audio that reached the server at `arrival_ns` went to the agent at `sent_ns`."""
        ...

    def on_agent_mark(self, name: str) -> None:
        """The agent asks to be told when the audio it sent so far has been played."""
        ...

    def on_agent_clear(self) -> None:
        """The agent drops the audio it queued (barge-in)."""
        ...

    def on_agent_ended(self, reason: str) -> None:
        """The agent connection is over."""
        ...


class AgentLink(Protocol):
    """An agent connection as the call session sees it."""

    sample_rate_hz: int

    def send_caller_audio(self, pcm: Pcm, arrival_ns: int | None = None) -> None:
        """Send caller speech (mono int16 PCM at `sample_rate_hz`) that arrived at `arrival_ns`."""
        ...

    def send_mark(self, name: str) -> None:
        """Tell the agent that the audio before its mark has been played."""
        ...

    def send_dtmf(self, digit: str) -> None:
        """Tell the agent the caller pressed a key (a Twilio `dtmf` message)."""
        ...

    def describe(self) -> dict[str, Any]:
        """The leg's counters and addresses, for the API and the call's record."""
        ...

    async def close(self, reason: str) -> None:
        """End the connection (sending `stop` first)."""
        ...
