"""What the call session and its transports expect of each other."""

from typing import Protocol

import numpy as np
import numpy.typing as npt

from mediaserver.recording.channel import Codec

Pcm = npt.NDArray[np.int16]


class CallerMediaSink(Protocol):
    """Where a caller transport delivers what it receives (implemented by the call session)."""

    def on_caller_packet(
        self,
        *,
        arrival_ns: int,
        rtp_timestamp: int,
        ssrc: int,
        sequence: int,
        payload_type: int,
        marker: bool,
        payload: bytes,
    ) -> None:
        """One RTP packet of caller audio, exactly as received (no decoding, no re-encoding)."""
        ...

    def on_caller_ended(self, reason: str) -> None:
        """The caller leg is over (hangup, RTCP BYE, media timeout, ICE failure)."""
        ...


class CallerLink(Protocol):
    """A caller transport as the call session sees it (WebRTC or plain RTP)."""

    codec: Codec

    def send_audio(self, payload: bytes, duration: int) -> None:
        """Send one encoded agent frame now; `duration` is in the codec's RTP clock units."""
        ...

    async def close(self) -> None:
        """Tear the leg down and release its sockets."""
        ...


class AgentMediaSink(Protocol):
    """Where an agent connection delivers what the agent sends (implemented by the call session)."""

    def on_agent_audio(self, pcm: Pcm) -> None:
        """Agent speech as mono int16 PCM at the connection's sample rate, to be played out."""
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

    def send_caller_audio(self, pcm: Pcm) -> None:
        """Send caller speech (mono int16 PCM at `sample_rate_hz`) to the agent."""
        ...

    def send_mark(self, name: str) -> None:
        """Tell the agent that the audio before its mark has been played."""
        ...

    async def close(self, reason: str) -> None:
        """End the connection (sending `stop` first)."""
        ...
