"""One live call: its caller leg, its agent leg, and the recording both directions go to."""

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from mediaserver.agent_bridge import (
    DEFAULT_CALLER_BACKLOG_MS,
    DEFAULT_PARTIAL_FRAME_WAIT_MS,
    AgentBridge,
)
from mediaserver.audio.transcoder import DEFAULT_LIVE_COMPLEXITY
from mediaserver.call_record_keeper import CallRecordKeeper
from mediaserver.call_recording import CallRecording, PauseBehavior
from mediaserver.caller_feed import CallerFeed
from mediaserver.clock import Clock, SystemClock
from mediaserver.errors import CallStateError
from mediaserver.latency_histogram import RelayLatency
from mediaserver.recording.call import EndReason
from mediaserver.recording.channel import Channel, Codec
from mediaserver.rtp.dtmf_detector import DtmfDigit
from mediaserver.rtp.media_packet import MediaPacket
from mediaserver.transports.link import AgentLink, CallerLink, Pcm

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class SessionStats:
    """What one call has moved so far."""

    caller_packets: int = 0
    agent_frames_played: int = 0
    dtmf_digits: int = 0
    legs_ended: dict[str, str] = field(default_factory=dict)


class CallSession:
    """Moves audio between a caller leg and an agent leg; its recording owns the legs' state."""

    def __init__(
        self,
        *,
        recording: CallRecording,
        caller_codec: Codec,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        on_closed: Callable[["CallSession"], None] | None = None,
        end_call_on_agent_exit: bool = False,
        agent_complexity: int = DEFAULT_LIVE_COMPLEXITY,
        send_silence: bool = True,
        caller_backlog_ms: float = DEFAULT_CALLER_BACKLOG_MS,
        partial_frame_wait_ms: int = DEFAULT_PARTIAL_FRAME_WAIT_MS,
        latency: RelayLatency | None = None,
        metadata: dict[str, object] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.recording = recording
        self.clock: Clock = clock or SystemClock()
        self.caller_backlog_ms = caller_backlog_ms
        self.partial_frame_wait_ms = partial_frame_wait_ms
        # What the server adds to this call's audio, each way (counted into the node's too).
        self.latency = latency or RelayLatency()
        self.caller_codec = caller_codec
        self.end_call_on_agent_exit = end_call_on_agent_exit
        self.agent_complexity = agent_complexity
        self.metadata = dict(metadata or {})
        self._spawn = spawn  # the owner runs (and at shutdown awaits) transport teardown
        self._on_closed = on_closed
        self.caller: CallerLink | None = None
        self.bridge: AgentBridge | None = None
        self.feed = CallerFeed(
            caller_codec, send_silence=send_silence, latency=self.latency.agent_to_caller
        )
        self._ended_caller_drops: dict[str, int] = {}
        # The call's record of its legs: filled as they connect and end, written at the end.
        self.record = CallRecordKeeper(recording, self.clock)
        self.stats = SessionStats()
        self.log = log.bind(call_id=recording.call_id)

    @property
    def call_id(self) -> str:
        """The call's id."""
        return self.recording.call_id

    @property
    def agent(self) -> AgentLink | None:
        """The connected agent, if any."""
        return None if self.bridge is None else self.bridge.agent

    @property
    def closed(self) -> bool:
        """Whether both legs have ended."""
        return not self.recording.open_channels

    def leg_open(self, channel: Channel) -> bool:
        """Whether a leg is still going."""
        return self.recording.is_open(channel)

    def packet_counts(self) -> dict[str, int]:
        """Caller packets received and agent frames sent to the caller."""
        return {"in": self.stats.caller_packets, "out": self.stats.agent_frames_played}

    def drop_counts(self) -> dict[str, int]:
        """Packets this call dropped, by reason (its transports' counts included)."""
        counts: dict[str, int] = {}
        if self.bridge is not None:
            stats = self.bridge.stats
            counts["late_for_agent"] = stats.caller_late_for_agent
            counts["backlog_for_agent"] = stats.caller_backlog_for_agent
            counts["undecodable_for_agent"] = stats.caller_undecodable
            counts["agent_late_frames"] = stats.agent_frames_late
            playout = self.bridge.playout
            counts["playout_overflow_frames"] = playout.overflow_samples // playout.frame_samples
            # Not lost speech: silence skipped to catch up after the agent's audio came late.
            counts["agent_silence_skipped_frames"] = (
                playout.skipped_samples // playout.frame_samples
            )
        counts["after_end"] = self.recording.packets_after_end
        caller_drops = (
            self.caller.drop_counts() if self.caller is not None else self._ended_caller_drops
        )
        for reason, count in caller_drops.items():
            counts[reason] = counts.get(reason, 0) + count
        return counts

    # -- wiring ---------------------------------------------------------------------------------

    def attach_caller(self, link: CallerLink) -> None:
        """Connect the caller transport."""
        if self.caller is not None or not self.recording.is_open(Channel.CALLER):
            raise CallStateError(f"call {self.call_id} already has a caller")
        if link.codec is not self.caller_codec:
            raise CallStateError(f"call {self.call_id} records {self.caller_codec.value}")
        self.caller = link
        self.record.caller_connected(link.codec)

    def attach_agent(self, link: AgentLink) -> None:
        """Connect the agent; caller audio is decoded at the agent's sample rate from now on."""
        if self.bridge is not None or not self.recording.is_open(Channel.AGENT):
            raise CallStateError(f"call {self.call_id} already has an agent")
        self.bridge = AgentBridge(
            link,
            caller_codec=self.caller_codec,
            complexity=self.agent_complexity,
            caller_backlog_ms=self.caller_backlog_ms,
            partial_frame_wait_ms=self.partial_frame_wait_ms,
        )
        self.record.agent_connected()
        self.log.info("call.agent_attached", sample_rate_hz=link.sample_rate_hz)

    # -- recording control ---------------------------------------------------------------------

    def pause_recording(self, behavior: PauseBehavior) -> None:
        """Stop recording both channels; audio still flows between caller and agent."""
        self.recording.pause(self.clock.monotonic_ns(), behavior)
        self.log.info("call.recording_paused", behavior=behavior.value)

    def resume_recording(self) -> None:
        """Record both channels again."""
        self.recording.resume(self.clock.monotonic_ns())
        self.log.info("call.recording_resumed")

    # -- caller side (CallerMediaSink) ---------------------------------------------------------

    def on_caller_packet(self, packet: MediaPacket) -> None:
        """Journal the packet as received; decode it for the agent if one is listening."""
        if not self.recording.record(Channel.CALLER, packet):
            return
        self.stats.caller_packets += 1
        if self.bridge is not None:
            self.bridge.hear_caller(packet)

    def on_audio_sent(self, packet: MediaPacket) -> None:
        """Journal an agent packet exactly as the transport sent it, when it sent it."""
        if self.feed.is_agent_frame(packet) and self.recording.record(Channel.AGENT, packet):
            self.stats.agent_frames_played += 1

    def on_caller_dtmf(self, digit: DtmfDigit, ssrc: int, arrival_ns: int) -> None:
        """A key the caller pressed: the agent is told, the call's events keep it."""
        if not self.recording.is_open(Channel.CALLER):
            return
        self.stats.dtmf_digits += 1
        agent = self.agent
        if agent is not None and self.recording.is_open(Channel.AGENT):
            agent.send_dtmf(digit.digit)
        # Keys pressed while recording is paused (a card number, say) stay out of the record.
        redacted = self.recording.paused is not None
        self.recording.add_event(
            {
                "type": "dtmf",
                "digit": None if redacted else digit.digit,
                "redacted": redacted,
                "duration_ms": round(digit.duration_ms, 1),
                "rtp_timestamp": digit.start_timestamp,
                "clock_rate_hz": digit.clock_rate_hz,
                "ssrc": ssrc,
                "ended_ns": arrival_ns,
            }
        )
        self.log.info("call.dtmf", digit="*" if redacted else digit.digit)

    def on_caller_ended(self, reason: EndReason) -> None:
        """The caller hung up or vanished: the whole call ends."""
        self.end(reason)

    # -- agent side (AgentMediaSink) -----------------------------------------------------------

    def on_agent_audio(self, pcm: Pcm, arrival_ns: int) -> None:
        """Queue agent speech for playout."""
        if self.bridge is not None and self.recording.is_open(Channel.AGENT):
            self.bridge.queue_audio(pcm, arrival_ns)

    def on_caller_audio_sent(self, arrival_ns: int, sent_ns: int) -> None:
        """Caller audio reached the agent: how long the server held it."""
        self.latency.caller_to_agent.observe(sent_ns - arrival_ns)

    def on_agent_mark(self, name: str) -> None:
        """Queue a mark behind the agent's audio."""
        if self.bridge is not None and self.recording.is_open(Channel.AGENT):
            self.bridge.queue_mark(name)

    def on_agent_clear(self) -> None:
        """Barge-in: drop queued agent audio; its marks are reached now."""
        if self.bridge is not None and self.recording.is_open(Channel.AGENT):
            self.bridge.clear()
            self.feed.restart_schedule()  # what was queued will not play

    def on_agent_ended(self, reason: str) -> None:
        """The agent left: its leg ends; the call goes on unless configured otherwise."""
        self.end_agent_leg(EndReason.AGENT_EXIT, detail=reason)

    def end_agent_leg(self, reason: EndReason, *, detail: str = "") -> None:
        """The agent is gone (or never came): the call goes on unless configured otherwise."""
        if self.end_call_on_agent_exit:
            self.end(reason)
        else:
            self._end_leg(Channel.AGENT, reason, detail=detail)

    # -- pacing (called by the hub's pacer) ----------------------------------------------------

    def tick(self, tick: int) -> None:
        """Send the caller this 20 ms tick's frame: the agent's audio, or silence."""
        caller = self.caller
        if caller is None:
            return
        bridge = self.bridge
        if bridge is not None and not self.recording.is_open(Channel.AGENT):
            bridge = None
        self.feed.tick(tick, caller, bridge)

    def skip(self, ticks: int) -> None:
        """The pacer missed `ticks` ticks: drop their agent audio rather than play it late."""
        if self.bridge is not None and self.caller is not None:
            self.bridge.skip(ticks)

    # -- ending --------------------------------------------------------------------------------

    def end(self, reason: EndReason) -> None:
        """End both legs (idempotent); the recording is finalized once both are closed."""
        self._end_leg(Channel.AGENT, reason)
        self._end_leg(Channel.CALLER, reason)

    def _end_leg(self, channel: Channel, reason: EndReason, *, detail: str = "") -> None:
        """End one leg: close its transport and its channel of the recording."""
        if not self.recording.is_open(channel):
            return
        self.stats.legs_ended[channel.value] = reason.value
        self.log.info("call.leg_ended", channel=channel.value, reason=reason.value, detail=detail)
        if channel is Channel.AGENT:
            bridge = self.bridge
            if bridge is not None:
                bridge.finish()  # pending marks are echoed before `stop`
            self.record.agent_ended(bridge, reason)
            if bridge is not None:
                self._spawn(bridge.agent.close(reason.value))
        else:
            caller, self.caller = self.caller, None
            self.record.caller_ended(caller, reason)
            if caller is not None:
                self._ended_caller_drops = dict(caller.drop_counts())
                self._spawn(caller.close())
        last = self.recording.open_channels == {channel}
        summary = None
        if last:
            summary = {
                **self.record.summary(self.drop_counts()),
                "latency_ms": self.latency.summary_ms(),
            }
        self.recording.end(channel, reason, summary=summary)
        if self.closed and self._on_closed is not None:
            self._on_closed(self)
