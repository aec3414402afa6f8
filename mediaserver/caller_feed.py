"""What a call sends its caller each 20 ms tick: the agent's frame or silence, numbered once."""

from collections import deque

from mediaserver.agent_bridge import FRAME_MS, AgentBridge
from mediaserver.audio.opus_silence import silence_packet
from mediaserver.latency_histogram import LatencyHistogram
from mediaserver.recording.channel import Codec
from mediaserver.rtp.media_packet import MediaPacket
from mediaserver.rtp.sequencer import RtpSequencer
from mediaserver.transports.link import CallerLink

_FRAME_NS = FRAME_MS * 1_000_000


def silence_payload(codec: Codec) -> bytes:
    """One 20 ms frame of digital silence in the caller's codec."""
    if codec is Codec.OPUS:
        return silence_packet(960)
    # RFC 3551 §4.5.14: the codes of a zero sample, μ-law 0xFF and A-law 0xD5.
    return (b"\xff" if codec is Codec.PCMU else b"\xd5") * 160


class CallerFeed:
    """The caller's side of the pacer: one RTP numbering, silence between utterances, latency."""

    def __init__(self, codec: Codec, *, send_silence: bool, latency: LatencyHistogram) -> None:
        # The call's one RTP numbering of what it sends the caller, ticked by the hub's pacer.
        self.sequencer = RtpSequencer(codec.clock_rate_hz * FRAME_MS // 1000)
        # While the agent is silent the caller still gets a frame every tick: gateways end legs
        # that go quiet, and jitter buffers (aiortc's among them) hold an utterance's last
        # packets until the next one arrives. Silence frames are not journalled: the recording
        # fills the same silence itself.
        self._silence = silence_payload(codec) if send_silence else None
        self._latency = latency  # agent → caller: what the server added to each agent frame
        # Agent frames handed to the caller's transport, not yet reported sent: (sequence,
        # when their audio arrived). A few at most: a transport sends or drops each in order.
        self._in_flight: deque[tuple[int, int]] = deque()
        # When the agent's last sent frame was due on the agent's own clock (see is_agent_frame).
        self._agent_due_ns = -_FRAME_NS
        self.silence_frames_sent = 0

    def tick(self, tick: int, caller: CallerLink, bridge: AgentBridge | None) -> None:
        """Send the caller this tick's frame: the agent's audio (if `bridge`), or silence."""
        played = None if bridge is None else bridge.next_payload()
        if played is None:
            if self._silence is not None and caller.can_send:
                caller.send_audio(self.sequencer.number(tick, self._silence, caller.payload_type))
            return
        payload, arrival_ns = played
        packet = self.sequencer.number(tick, payload, caller.payload_type)
        # Before sending: a plain-RTP leg reports the packet sent from inside send_audio.
        self._in_flight.append((packet.sequence, arrival_ns))
        caller.send_audio(packet)

    def restart_schedule(self) -> None:
        """The agent's queued audio was cleared: its next frame starts a fresh schedule."""
        self._agent_due_ns = -_FRAME_NS

    def is_agent_frame(self, packet: MediaPacket) -> bool:
        """Account for a packet the transport sent: True for the agent's audio, not silence."""
        if packet.payload is self._silence:  # the very object tick() sent: not the agent's
            self.silence_frames_sent += 1
            return False
        in_flight = self._in_flight
        while in_flight:  # the packets a transport dropped unsent are passed over
            sequence, arrival_ns = in_flight.popleft()
            if sequence == packet.sequence:
                # What the server added: from when the frame was due on the agent's own clock
                # (its audio had arrived, and 20 ms had passed since the frame before it was
                # due), so audio the agent sent ahead of real time is not counted as queued, but
                # the wait for the next tick is, for every frame it delays.
                due_ns = max(arrival_ns, self._agent_due_ns + _FRAME_NS)
                self._latency.observe(packet.arrival_ns - due_ns)
                self._agent_due_ns = due_ns
                break
        return True
