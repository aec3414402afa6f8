"""One live call's recording: its journals and which of its channels are still open."""

from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, BinaryIO

from mediaserver.encryption.sealed_journal import JournalSealing, open_sealed_journal_file
from mediaserver.errors import CallStateError
from mediaserver.recording.call import CallStatus, EndReason
from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.journal import JournalHeader, JournalWriter
from mediaserver.recording.spool import CallDescription, CallSpool
from mediaserver.rtp.media_packet import MediaPacket


class PauseBehavior(Enum):
    """What the recording's time line does with a paused span (Twilio's pauseBehavior)."""

    SILENCE = "silence"  # the span stays, silent on both channels
    SKIP = "skip"  # the span is cut from all three files: what follows moves up


# One second of a channel (~4.6 KB) fits, so a flush a second is still one write per journal;
# larger buffers only raise resident memory when flushing falls behind (bench_memory.py).
JOURNAL_BUFFER_BYTES = 8 * 1024


class CallRecording:
    """The handle a call records through; the one owner of its legs' open/ended state."""

    __slots__ = (
        "_files",
        "_journalling",
        "_on_ended",
        "_open",
        "_writers",
        "description",
        "end_reasons",
        "keep",
        "last_activity_ns",
        "packets_after_end",
        "packets_paused",
        "paused",
        "spool",
        "summary",
    )

    def __init__(
        self,
        spool: CallSpool,
        description: CallDescription,
        *,
        keep: bool = True,
        on_ended: Callable[["CallRecording", EndReason], None] | None = None,
        sealing: JournalSealing | None = None,
    ) -> None:
        """Create the spool and open both journals; `keep=False` journals nothing.

        With `sealing` (encryption on) the journals are sealed with the call's data key, whose
        envelope is written beside them.
        """
        self.spool = spool
        self.description = description
        self.keep = keep  # AUDIO_CACHE_ENABLED: the call runs, nothing is kept
        self.paused: PauseBehavior | None = None  # set while recording is paused
        self._journalling = keep  # kept and not paused: the one flag the packet path reads
        self.packets_paused = 0
        self.summary: dict[str, Any] = {}  # the call's own account of itself, given at its end
        self._on_ended = on_ended
        self._open = set(Channel)
        self.end_reasons: dict[Channel, EndReason] = {}
        self.last_activity_ns = description.mono_start_ns
        self.packets_after_end = 0
        self._files: dict[Channel, BinaryIO] = {}
        self._writers: dict[Channel, JournalWriter] = {}
        # A few hundred bytes and two opens: small enough for the loop, like a journal append.
        spool.create(description)
        if sealing is not None:
            spool.write_envelope(sealing.envelope_json)
        for channel, codec in description.codecs.items():
            path = spool.journal_path(channel)
            handle = (
                path.open("wb", buffering=JOURNAL_BUFFER_BYTES)
                if sealing is None
                else open_sealed_journal_file(
                    path, sealing.data_key, spool.journal_identity(channel)
                )
            )
            self._files[channel] = handle
            self._writers[channel] = JournalWriter(
                handle,
                JournalHeader(channel, codec, description.wall_start_ns, description.mono_start_ns),
            )

    @property
    def call_id(self) -> str:
        """The call's id."""
        return self.description.call_id

    @property
    def wall_start_ns(self) -> int:
        """When the call opened (UTC epoch ns)."""
        return self.description.wall_start_ns

    @property
    def mono_start_ns(self) -> int:
        """When the call opened (monotonic ns)."""
        return self.description.mono_start_ns

    @property
    def codecs(self) -> dict[Channel, Codec]:
        """Each channel's codec."""
        return self.description.codecs

    @property
    def status(self) -> CallStatus:
        """`recording` while a channel is open, then `finalizing`."""
        return CallStatus.RECORDING if self._open else CallStatus.FINALIZING

    @property
    def open_channels(self) -> frozenset[Channel]:
        """Channels still being recorded."""
        return frozenset(self._open)

    def is_open(self, channel: Channel) -> bool:
        """Whether a channel is still being recorded."""
        return channel in self._open

    def packet_count(self, channel: Channel) -> int:
        """Packets journalled on a channel."""
        return self._writers[channel].packet_count

    @property
    def has_media(self) -> bool:
        """Whether any packet was journalled."""
        return any(writer.packet_count for writer in self._writers.values())

    def record(self, channel: Channel, packet: MediaPacket) -> bool:
        """Journal one packet, O(1); False (and counted) when the channel has ended."""
        if channel not in self._open:
            self.packets_after_end += 1
            return False
        self.last_activity_ns = packet.arrival_ns
        if self._journalling:
            self._writers[channel].append(packet)
        elif self.paused is not None:
            self.packets_paused += 1
        return True

    def pause(self, now_ns: int, behavior: PauseBehavior) -> None:
        """Stop journalling both channels (the call goes on); the span is noted in the events."""
        if self.paused is not None or not self._open:
            return
        self.paused = behavior
        self._journalling = False
        self.add_event({"type": "pause", "at_ns": now_ns, "behavior": behavior.value})

    def resume(self, now_ns: int) -> None:
        """Journal both channels again."""
        if self.paused is None or not self._open:
            return
        self.paused = None
        self._journalling = self.keep
        self.add_event({"type": "resume", "at_ns": now_ns})

    def add_event(self, event: Mapping[str, Any]) -> None:
        """Note something that happened in the call (a key pressed, a pause) in its spool."""
        if self.keep and self._open:
            self.spool.append_event(dict(event))

    def touch(self, now_ns: int) -> None:
        """Note activity that carries no packet (an agent message, say)."""
        self.last_activity_ns = now_ns

    def idle_ns(self, now_ns: int) -> int:
        """How long the call has seen no activity."""
        return now_ns - self.last_activity_ns

    def flush(self) -> None:
        """Hand buffered records of the open channels to the operating system."""
        for channel in self._open:
            self._writers[channel].flush()

    def end(
        self, channel: Channel, reason: EndReason, *, summary: Mapping[str, Any] | None = None
    ) -> bool:
        """Close a channel's journal; True exactly once, when it was the last open channel."""
        if channel not in self._open:
            return False
        if summary is not None:
            self.summary = dict(summary)
        self._open.discard(channel)
        self.end_reasons[channel] = reason
        self._files[channel].close()  # flushes the buffer: a few KiB at most
        if self._open:
            return False
        if self._on_ended is not None:
            self._on_ended(self, reason)
        return True

    def discard(self) -> None:
        """Forget a call that never carried media (its setup failed): nothing is kept."""
        if self.has_media:
            raise CallStateError(f"call {self.call_id} has media and must be ended, not discarded")
        for handle in self._files.values():
            handle.close()
        self._open.clear()
        self.spool.remove()  # two empty journals and a small description
