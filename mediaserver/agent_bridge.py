"""The bridge to a call's agent: caller audio decoded for it, its speech queued and encoded."""

from dataclasses import dataclass

import structlog

from mediaserver.audio.transcoder import (
    DEFAULT_LIVE_COMPLEXITY,
    AgentAudioEncoder,
    CallerAudioDecoder,
)
from mediaserver.errors import OpusPacketError
from mediaserver.playout import Playout
from mediaserver.realtime_gate import RealTimeGate
from mediaserver.recording.channel import Codec
from mediaserver.rtp.media_packet import MediaPacket
from mediaserver.transports.link import AgentLink, Pcm

log = structlog.get_logger(__name__)

_HALF_SEQUENCE = 1 << 15
_NS_PER_S = 1_000_000_000
FRAME_MS = 20
# Caller audio that arrives faster than real time reaches the agent up to this far ahead of
# the clock (setting caller_backlog_ms): three frames of a caller's jitter; beyond, the burst is
# recorded but not sent to the agent (see RealTimeGate).
DEFAULT_CALLER_BACKLOG_MS = 60.0
# An agent's chunk that ends inside a frame waits this long for the next chunk to complete the
# frame before it plays padded with silence (setting partial_frame_wait_ms): one tick, so odd-sized
# chunks streamed in real time play without silence inside them.
DEFAULT_PARTIAL_FRAME_WAIT_MS = 20


@dataclass(slots=True)
class BridgeStats:
    """What the bridge moved and dropped."""

    caller_frames_to_agent: int = 0
    caller_late_for_agent: int = 0
    caller_backlog_for_agent: int = 0  # arrived in a burst beyond the allowance: not sent
    caller_undecodable: int = 0
    agent_frames_encoded: int = 0
    agent_frames_late: int = 0  # played out of time after a stall: dropped, never sent
    marks_echoed: int = 0
    clears: int = 0


class AgentBridge:
    """Between one call's caller and its agent: owns the decoder, playout, encoder and sequencer."""

    def __init__(
        self,
        agent: AgentLink,
        *,
        caller_codec: Codec,
        complexity: int = DEFAULT_LIVE_COMPLEXITY,
        max_buffered_s: float = 300.0,
        caller_backlog_ms: float = DEFAULT_CALLER_BACKLOG_MS,
        partial_frame_wait_ms: int = DEFAULT_PARTIAL_FRAME_WAIT_MS,
    ) -> None:
        self.agent = agent
        rate_hz = agent.sample_rate_hz
        self._ns_per_sample = _NS_PER_S // rate_hz
        self._gate = RealTimeGate(caller_backlog_ms)
        self.playout = Playout(
            rate_hz,
            frame_ms=FRAME_MS,
            max_buffered_s=max_buffered_s,
            partial_hold_ticks=partial_frame_wait_ms // FRAME_MS,
        )
        self._decoder = CallerAudioDecoder(caller_codec, rate_hz)
        self._encoder = AgentAudioEncoder(caller_codec, rate_hz, complexity=complexity)
        self._last_sequence: dict[int, int] = {}
        self._speaking = False  # the last tick played the agent's audio
        self.stats = BridgeStats()

    # -- caller to agent -----------------------------------------------------------------------

    def hear_caller(self, packet: MediaPacket) -> None:
        """Decode a caller packet for the agent; a late or broken one is counted and skipped."""
        ssrc, sequence = packet.ssrc, packet.sequence
        last = self._last_sequence.get(ssrc)
        if last is not None and (sequence - last) % 65536 >= _HALF_SEQUENCE:
            # The agent hears audio once, in order: a late packet is already history for it.
            self.stats.caller_late_for_agent += 1
            return
        self._last_sequence[ssrc] = sequence
        try:
            pcm = self._decoder.decode(packet.payload)
        except OpusPacketError:
            self.stats.caller_undecodable += 1
            return
        # Decoded even when refused: the decoder's state follows the whole stream.
        if not self._gate.admit(packet.arrival_ns, pcm.size * self._ns_per_sample):
            self.stats.caller_backlog_for_agent += 1
            return
        self.stats.caller_frames_to_agent += 1
        self.agent.send_caller_audio(pcm, packet.arrival_ns)

    # -- agent to caller -----------------------------------------------------------------------

    def queue_audio(self, pcm: Pcm, arrival_ns: int) -> None:
        """Queue agent speech (that reached the server at `arrival_ns`) for playout."""
        self.playout.push_audio(pcm, arrival_ns)

    def queue_mark(self, name: str) -> None:
        """Queue a mark behind the agent's audio."""
        self.playout.push_mark(name)

    def clear(self) -> None:
        """Barge-in: drop queued agent audio; its marks are reached now."""
        self.stats.clears += 1
        self._speaking = False
        for name in self.playout.clear():
            self._echo_mark(name)

    def finish(self) -> None:
        """The agent leg ends: queued audio will not play, but its marks are answered first."""
        for name in self.playout.clear():
            self._echo_mark(name)

    def next_payload(self) -> tuple[bytes, int] | None:
        """Play one 20 ms frame: its payload and when its audio arrived; None if none is due."""
        frame = self.playout.next_frame()
        played = None
        if frame.pcm is not None:
            if not self._speaking:
                self._encoder.start_utterance()
            played = self._encoder.encode_frame(frame.pcm), frame.arrival_ns
            self.stats.agent_frames_encoded += 1
        self._speaking = frame.pcm is not None
        for name in frame.marks:
            self._echo_mark(name)
        return played

    def skip(self, ticks: int) -> None:
        """Ticks the pacer missed (a stalled loop): their audio is dropped, its marks reached."""
        # Sending them late would put a standing delay between the agent and the caller's ear.
        self._speaking = False
        for _ in range(ticks):
            frame = self.playout.next_frame()
            if frame.pcm is not None:
                self.stats.agent_frames_late += 1
            for name in frame.marks:
                self._echo_mark(name)

    @property
    def buffered_ms(self) -> float:
        """Agent audio queued and not yet played."""
        return self.playout.buffered_ms

    def _echo_mark(self, name: str) -> None:
        """Tell the agent its mark was reached."""
        self.agent.send_mark(name)
        self.stats.marks_echoed += 1
