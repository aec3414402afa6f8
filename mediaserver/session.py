"""One live call: its caller leg, its agent leg, and the recording both directions go to."""

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from mediaserver.agent_bridge import FRAME_MS, AgentBridge
from mediaserver.audio.opus_silence import silence_packet
from mediaserver.audio.transcoder import DEFAULT_LIVE_COMPLEXITY
from mediaserver.call_recording import CallRecording, PauseBehavior
from mediaserver.clock import Clock, SystemClock
from mediaserver.errors import CallStateError
from mediaserver.recording.call import EndReason
from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.manifest import format_utc
from mediaserver.rtp.dtmf_detector import DtmfDigit
from mediaserver.rtp.media_packet import MediaPacket
from mediaserver.rtp.sequencer import RtpSequencer
from mediaserver.transports.agent import compute_close_code
from mediaserver.transports.link import AgentLink, CallerLink, Pcm

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class SessionStats:
    """What one call has moved so far."""

    caller_packets: int = 0
    agent_frames_played: int = 0
    silence_frames_sent: int = 0
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
        metadata: dict[str, object] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.recording = recording
        self.clock: Clock = clock or SystemClock()
        self.caller_codec = caller_codec
        self.end_call_on_agent_exit = end_call_on_agent_exit
        self.agent_complexity = agent_complexity
        self.metadata = dict(metadata or {})
        self._spawn = spawn  # the owner runs (and at shutdown awaits) transport teardown
        self._on_closed = on_closed
        self.caller: CallerLink | None = None
        self.bridge: AgentBridge | None = None
        # The call's one RTP numbering of what it sends the caller, ticked by the hub's pacer.
        self.sequencer = RtpSequencer(caller_codec.clock_rate_hz * FRAME_MS // 1000)
        # While the agent is silent the caller still gets a frame every tick: gateways end legs
        # that go quiet, and jitter buffers (aiortc's among them) hold an utterance's last
        # packets until the next one arrives. Silence frames are not journalled: the recording
        # fills the same silence itself.
        self._silence = _silence_payload(caller_codec) if send_silence else None
        self._ended_caller_drops: dict[str, int] = {}
        # The call's record of its legs: filled as they connect and end, written at the end.
        self._legs: dict[str, dict[str, Any]] = {"caller": {}, "agent": {}}
        self._notes: list[str] = []
        self.agent_url: str | None = None  # what the server dials (or builtin:echo)
        self.agent_error: str | None = None  # why the dial-out failed
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
            counts["undecodable_for_agent"] = stats.caller_undecodable
            counts["agent_late_frames"] = stats.agent_frames_late
            counts["playout_overflow_frames"] = (
                self.bridge.playout.overflow_samples // self.bridge.playout.frame_samples
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
        self._legs["caller"] = {
            "codec": link.codec.value,
            "connected_at": self._utc(self.clock.monotonic_ns()),
        }

    def attach_agent(self, link: AgentLink) -> None:
        """Connect the agent; caller audio is decoded at the agent's sample rate from now on."""
        if self.bridge is not None or not self.recording.is_open(Channel.AGENT):
            raise CallStateError(f"call {self.call_id} already has an agent")
        self.bridge = AgentBridge(
            link, caller_codec=self.caller_codec, complexity=self.agent_complexity
        )
        self._legs["agent"].update(connected_at=self._utc(self.clock.monotonic_ns()))
        self.log.info("call.agent_attached", sample_rate_hz=link.sample_rate_hz)

    def note_agent_dial(self, url: str) -> None:
        """The server dials (or runs) the call's agent at `url`."""
        self.agent_url = url
        self._legs["agent"]["url"] = url

    def note_agent_dial_failed(self, error: str) -> None:
        """The agent could not be dialled: shown by the API and kept in the call's record."""
        self.agent_error = error
        self._legs["agent"]["error"] = error
        self._notes.append(f"the agent could not be dialled: {error}")

    def note(self, text: str) -> None:
        """Add a note to the call's record (shown in its manifest)."""
        self._notes.append(text)

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
        if packet.payload is self._silence:  # the very object tick() sent: not the agent's
            self.stats.silence_frames_sent += 1
        elif self.recording.record(Channel.AGENT, packet):
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

    def on_agent_audio(self, pcm: Pcm) -> None:
        """Queue agent speech for playout."""
        if self.bridge is not None and self.recording.is_open(Channel.AGENT):
            self.bridge.queue_audio(pcm)

    def on_agent_mark(self, name: str) -> None:
        """Queue a mark behind the agent's audio."""
        if self.bridge is not None and self.recording.is_open(Channel.AGENT):
            self.bridge.queue_mark(name)

    def on_agent_clear(self) -> None:
        """Barge-in: drop queued agent audio; its marks are reached now."""
        if self.bridge is not None and self.recording.is_open(Channel.AGENT):
            self.bridge.clear()

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
        payload = None
        if self.bridge is not None and self.recording.is_open(Channel.AGENT):
            payload = self.bridge.next_payload()
        if payload is None:
            payload = self._silence
            if payload is None or not caller.can_send:
                return
        caller.send_audio(self.sequencer.number(tick, payload, caller.payload_type))

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
        now = self._utc(self.clock.monotonic_ns())
        ended = {"end_reason": reason.value, "disconnected_at": now}
        if channel is Channel.AGENT:
            bridge = self.bridge
            leg = self._legs["agent"]
            if bridge is not None:
                bridge.finish()  # pending marks are echoed before `stop`
                leg.update(_describe_agent(bridge.agent, reason), **_bridge_counts(bridge))
                self._spawn(bridge.agent.close(reason.value))
            leg.update(ended)
        else:
            caller, self.caller = self.caller, None
            if caller is not None:
                self._ended_caller_drops = dict(caller.drop_counts())
                self._legs["caller"].update(caller.describe())
                self._spawn(caller.close())
            self._legs["caller"].update(ended)
        last = self.recording.open_channels == {channel}
        summary = self._summary() if last else None
        self.recording.end(channel, reason, summary=summary)
        if self.closed and self._on_closed is not None:
            self._on_closed(self)

    def _summary(self) -> dict[str, Any]:
        """The call's record of itself, as its legs saw it: written when the call ends."""
        notes = list(self._notes)
        unexpected = self._legs["caller"].get("unexpected_payload_types") or {}
        for payload_type, count in unexpected.items():
            notes.append(
                f"{count} caller packets with payload type {payload_type} were dropped:"
                f" the leg negotiated {self._legs['caller'].get('payload_type')}"
                + (
                    f" (telephone-event {dtmf})"
                    if (dtmf := self._legs["caller"].get("dtmf_payload_type")) is not None
                    else ""
                )
            )
        return {
            "legs": {name: dict(leg) for name, leg in self._legs.items()},
            "dropped": {reason: count for reason, count in self.drop_counts().items() if count},
            "notes": notes,
        }

    def describe_agent(self) -> dict[str, Any]:
        """The agent leg's record so far (url, error, times), for the API."""
        return dict(self._legs["agent"])

    def _utc(self, monotonic_ns: int) -> str:
        """A monotonic time of this call as a UTC time people read."""
        recording = self.recording
        return format_utc(recording.wall_start_ns + monotonic_ns - recording.mono_start_ns)


def _describe_agent(agent: AgentLink, reason: EndReason) -> dict[str, Any]:
    """The agent connection as it is when its leg ends; the close the server is about to send."""
    described = agent.describe()
    if "close_code" in described and described.get("closed_by") is None:
        described.update(
            close_code=compute_close_code(reason.value),
            close_reason=reason.value,
            closed_by="server",
        )
    return described


def _bridge_counts(bridge: AgentBridge) -> dict[str, int]:
    """What the bridge moved between the caller and the agent."""
    stats = bridge.stats
    return {
        "caller_frames_sent": stats.caller_frames_to_agent,
        "agent_frames_encoded": stats.agent_frames_encoded,
        "marks_echoed": stats.marks_echoed,
        "clears": stats.clears,
    }


def _silence_payload(codec: Codec) -> bytes:
    """One 20 ms frame of digital silence in the caller's codec."""
    if codec is Codec.OPUS:
        return silence_packet(960)
    # RFC 3551 §4.5.14: the codes of a zero sample, μ-law 0xFF and A-law 0xD5.
    return (b"\xff" if codec is Codec.PCMU else b"\xd5") * 160
