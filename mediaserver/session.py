"""One live call: the caller leg, the agent leg, the playout between them, and the recording."""

import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from mediaserver.audio.transcoder import AgentAudioEncoder, CallerAudioDecoder
from mediaserver.errors import CallStateError, OpusPacketError
from mediaserver.playout import Playout
from mediaserver.recorder import Recorder
from mediaserver.recording.call import EndReason
from mediaserver.recording.channel import Channel, Codec
from mediaserver.transports.link import AgentLink, CallerLink, Pcm

log = structlog.get_logger(__name__)

OPUS_PAYLOAD_TYPE = 111
_PAYLOAD_TYPES = {Codec.OPUS: OPUS_PAYLOAD_TYPE, Codec.PCMU: 0, Codec.PCMA: 8}
_HALF_SEQUENCE = 1 << 15


@dataclass(slots=True)
class SessionStats:
    """What one call has moved so far."""

    caller_packets: int = 0
    caller_undecodable: int = 0
    caller_late_for_agent: int = 0
    agent_frames_played: int = 0
    agent_marks_echoed: int = 0
    agent_clears: int = 0
    legs_ended: dict[str, str] = field(default_factory=dict)


class CallSession:
    """Moves audio between a caller leg and an agent leg and records both directions."""

    def __init__(
        self,
        *,
        call_id: str,
        recorder: Recorder,
        caller_codec: Codec,
        end_call_on_agent_exit: bool = False,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        on_closed: Callable[["CallSession"], None] | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        metadata: dict[str, object] | None = None,
    ) -> None:
        self.call_id = call_id
        self.recorder = recorder
        self.caller_codec = caller_codec
        self.end_call_on_agent_exit = end_call_on_agent_exit
        self.metadata = dict(metadata or {})
        self._spawn = spawn  # the owner runs (and at shutdown awaits) transport teardown
        self._on_closed = on_closed
        self._clock_ns = clock_ns
        self.call = recorder.open_call(
            call_id, caller_codec=caller_codec, agent_codec=caller_codec, metadata=self.metadata
        )
        self.caller: CallerLink | None = None
        self.agent: AgentLink | None = None
        self.playout: Playout | None = None
        self._decoder: CallerAudioDecoder | None = None
        self._encoder: AgentAudioEncoder | None = None
        self._last_sequence: dict[int, int] = {}
        self._agent_ssrc = secrets.randbits(32)
        self._agent_sequence = secrets.randbits(16)
        self._agent_timestamp = secrets.randbits(32)
        self._open_legs = {Channel.CALLER, Channel.AGENT}
        self._caller_drops: dict[str, int] = {}
        self.stats = SessionStats()
        self.log = log.bind(call_id=call_id)

    def packet_counts(self) -> dict[str, int]:
        """Caller packets received and agent frames sent to the caller."""
        return {"in": self.stats.caller_packets, "out": self.stats.agent_frames_played}

    def drop_counts(self) -> dict[str, int]:
        """Packets this call dropped, by reason (its transports' counts included)."""
        counts = {
            "undecodable_for_agent": self.stats.caller_undecodable,
            "late_for_agent": self.stats.caller_late_for_agent,
        }
        counts.update(self._caller_drops or _transport_drops(self.caller))
        return counts

    @property
    def closed(self) -> bool:
        """Whether both legs have ended."""
        return not self._open_legs

    def leg_open(self, channel: Channel) -> bool:
        """Whether a leg is still going."""
        return channel in self._open_legs

    # -- wiring ---------------------------------------------------------------------------------

    def attach_caller(self, link: CallerLink) -> None:
        """Connect the caller transport."""
        if self.caller is not None or Channel.CALLER not in self._open_legs:
            raise CallStateError(f"call {self.call_id} already has a caller")
        if link.codec is not self.caller_codec:
            raise CallStateError(f"call {self.call_id} records {self.caller_codec.value}")
        self.caller = link

    def attach_agent(self, link: AgentLink) -> None:
        """Connect the agent; caller audio is decoded at the agent's sample rate from now on."""
        if self.agent is not None or Channel.AGENT not in self._open_legs:
            raise CallStateError(f"call {self.call_id} already has an agent")
        self.agent = link
        self.playout = Playout(link.sample_rate_hz)
        self._decoder = CallerAudioDecoder(self.caller_codec, link.sample_rate_hz)
        self._encoder = AgentAudioEncoder(self.caller_codec, link.sample_rate_hz)
        self.log.info("call.agent_attached", sample_rate_hz=link.sample_rate_hz)

    # -- caller side (CallerMediaSink) ---------------------------------------------------------

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
        """Journal the packet as received; decode it for the agent if one is listening."""
        if Channel.CALLER not in self._open_legs:
            return
        self.recorder.record(
            self.call_id,
            Channel.CALLER,
            arrival_ns=arrival_ns,
            rtp_timestamp=rtp_timestamp,
            ssrc=ssrc,
            sequence=sequence,
            payload_type=payload_type,
            marker=marker,
            payload=payload,
        )
        self.stats.caller_packets += 1
        if self.agent is None or self._decoder is None:
            return
        last = self._last_sequence.get(ssrc)
        if last is not None and (sequence - last) % 65536 >= _HALF_SEQUENCE:
            # The agent hears audio once, in order: a late packet is already history for it.
            self.stats.caller_late_for_agent += 1
            return
        self._last_sequence[ssrc] = sequence
        try:
            pcm = self._decoder.decode(payload)
        except OpusPacketError:
            self.stats.caller_undecodable += 1
            return
        self.agent.send_caller_audio(pcm)

    def on_caller_ended(self, reason: str) -> None:
        """The caller hung up or vanished: the whole call ends."""
        self.end(reason)

    # -- agent side (AgentMediaSink) -----------------------------------------------------------

    def on_agent_audio(self, pcm: Pcm) -> None:
        """Queue agent speech for playout."""
        if self.playout is not None and Channel.AGENT in self._open_legs:
            self.playout.push_audio(pcm)

    def on_agent_mark(self, name: str) -> None:
        """Queue a mark behind the agent's audio."""
        if self.playout is not None:
            self.playout.push_mark(name)

    def on_agent_clear(self) -> None:
        """Barge-in: drop queued agent audio; its marks are reached now."""
        if self.playout is None or self.agent is None:
            return
        self.stats.agent_clears += 1
        for name in self.playout.clear():
            self._echo_mark(name)

    def on_agent_ended(self, reason: str) -> None:
        """The agent left: its leg ends; the call goes on unless configured otherwise."""
        if self.end_call_on_agent_exit:
            self.end(reason)
        else:
            self._end_leg(Channel.AGENT, reason, EndReason.HANGUP)

    # -- pacing --------------------------------------------------------------------------------

    def tick(self, now_ns: int) -> None:
        """Play one 20 ms frame of agent audio to the caller and record exactly what was sent."""
        if self.playout is None or self.caller is None or self._encoder is None:
            return
        frame = self.playout.next_frame()
        if frame.pcm is not None and Channel.AGENT in self._open_legs:
            payload = self._encoder.encode_frame(frame.pcm)
            self.caller.send_audio(payload, self._encoder.duration)
            self.recorder.record(
                self.call_id,
                Channel.AGENT,
                arrival_ns=now_ns,
                rtp_timestamp=self._agent_timestamp,
                ssrc=self._agent_ssrc,
                sequence=self._agent_sequence,
                payload_type=_PAYLOAD_TYPES[self.caller_codec],
                marker=False,
                payload=payload,
            )
            self._agent_timestamp = (self._agent_timestamp + self._encoder.duration) % 2**32
            self._agent_sequence = (self._agent_sequence + 1) % 65536
            self.stats.agent_frames_played += 1
        for name in frame.marks:
            self._echo_mark(name)

    def _echo_mark(self, name: str) -> None:
        """Tell the agent its mark was reached."""
        if self.agent is not None and Channel.AGENT in self._open_legs:
            self.agent.send_mark(name)
            self.stats.agent_marks_echoed += 1

    # -- ending --------------------------------------------------------------------------------

    def end(self, reason: str, end_reason: EndReason = EndReason.HANGUP) -> None:
        """End both legs (idempotent); the recording is finalized once both are closed."""
        for channel in (Channel.AGENT, Channel.CALLER):
            self._end_leg(channel, reason, end_reason)

    def _end_leg(self, channel: Channel, reason: str, end_reason: EndReason) -> None:
        """End one leg: drop its recording reference and close its transport."""
        if channel not in self._open_legs:
            return
        self._open_legs.discard(channel)
        self.stats.legs_ended[channel.value] = reason
        self.log.info("call.leg_ended", channel=channel.value, reason=reason)
        if channel is Channel.AGENT:
            agent, self.agent = self.agent, None
            if self.playout is not None:
                self.playout.clear()
            if agent is not None:
                self._spawn(agent.close(reason))
        else:
            caller, self.caller = self.caller, None
            self._caller_drops = _transport_drops(caller)
            if caller is not None:
                self._spawn(caller.close())
        self.recorder.end_channel(self.call_id, channel, end_reason)
        if self.closed and self._on_closed is not None:
            self._on_closed(self)


def _transport_drops(link: CallerLink | None) -> dict[str, int]:
    """A caller transport's dropped-packet counts by reason, if it keeps them."""
    dropped = getattr(getattr(link, "stats", None), "dropped_in", None) or {}
    return {str(reason): int(count) for reason, count in dropped.items()}
