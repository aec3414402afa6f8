"""The live calls' recordings: opened here, flushed every second, handed on when they end."""

import asyncio
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from mediaserver.call_recording import CallRecording
from mediaserver.clock import Clock, SystemClock
from mediaserver.encryption.keyring import Keyring
from mediaserver.encryption.sealed_journal import JournalSealing
from mediaserver.errors import CallStateError, UnknownCallError
from mediaserver.recording.call import EndReason
from mediaserver.recording.call_record import CallRecord
from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.spool import CallDescription, CallSpool, Spool

log = structlog.get_logger(__name__)

CALL_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
FLUSH_CALLS_PER_SLICE = 16


def new_call_id() -> str:
    """An unguessable call id (128 random bits)."""
    return secrets.token_urlsafe(16)


@dataclass(frozen=True, slots=True)
class RecorderStats:
    """Counters of the recorder's work since start."""

    live_calls: int
    packets_recorded: int
    packets_after_end: int
    calls_ended: int


class Recorder:
    """Opens call recordings, flushes their journals and hands each one on when it ends."""

    def __init__(
        self,
        *,
        spool: Spool,
        on_call_ended: Callable[[CallSpool, EndReason], object],
        clock: Clock | None = None,
        flush_interval_s: float = 1.0,
        enabled: bool = True,
        keyring: Keyring | None = None,
    ) -> None:
        self.spool = spool
        self.keyring = keyring  # encryption on: each call's journals sealed with its data key
        self.enabled = enabled  # AUDIO_CACHE_ENABLED: calls still run, nothing is kept
        self.flush_interval_s = flush_interval_s
        self.clock: Clock = clock or SystemClock()
        self._on_call_ended = on_call_ended
        self._live: dict[str, CallRecording] = {}
        self._accepting = True
        self._flusher: asyncio.Task[None] | None = None
        self._ended_packets = 0
        self._ended_after_end = 0
        self.calls_ended = 0

    async def start(self) -> None:
        """Create the spool root and start flushing."""
        await asyncio.to_thread(self.spool.ensure)
        self._flusher = asyncio.create_task(self._flush_loop(), name="recorder.flush")

    async def close(self) -> None:
        """Stop flushing and taking calls; what is still live was ended by its owner already."""
        self._accepting = False
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        for recording in list(self._live.values()):
            # Whatever its owner did not end is left journalled for recovery at the next start.
            recording.flush()

    def open_call(
        self,
        call_id: str | None = None,
        *,
        caller_codec: Codec = Codec.OPUS,
        agent_codec: Codec = Codec.OPUS,
        metadata: Mapping[str, Any] | None = None,
        retention_days: int | None = None,
    ) -> CallRecording:
        """Start recording a call: create its spool and open both journals."""
        if not self._accepting:
            raise CallStateError("the recorder is shutting down")
        # Only a missing id is generated: an empty one is a caller's mistake, refused below.
        call_id = new_call_id() if call_id is None else call_id
        if not CALL_ID_PATTERN.fullmatch(call_id):
            raise CallStateError(f"call id must match {CALL_ID_PATTERN.pattern}")
        spool = self.spool.call(call_id)
        if call_id in self._live or spool.exists():
            raise CallStateError(f"call {call_id} already exists")
        description = CallDescription(
            call_id,
            self.clock.wall_ns(),
            self.clock.monotonic_ns(),
            {Channel.CALLER: caller_codec, Channel.AGENT: agent_codec},
            dict(metadata or {}),
            retention_days,
        )
        sealing = None
        if self.keyring is not None and self.enabled:
            data_key, envelope = self.keyring.create(call_id)  # one RSA encryption, ~0.1 ms
            self.keyring.pin(call_id, data_key, envelope)
            sealing = JournalSealing(data_key, envelope.to_json())
        recording = CallRecording(
            spool, description, keep=self.enabled, on_ended=self._ended, sealing=sealing
        )
        self._live[call_id] = recording
        log.info("call.opened", call_id=call_id, caller_codec=caller_codec.value)
        return recording

    def discard(self, recording: CallRecording) -> None:
        """Forget a call that never carried media: no recording is made."""
        recording.discard()
        self._live.pop(recording.call_id, None)
        if self.keyring is not None:
            self.keyring.unpin(recording.call_id)
        log.info("call.discarded", call_id=recording.call_id)

    def get_call(self, call_id: str) -> CallRecording:
        """A live call's recording by id."""
        try:
            return self._live[call_id]
        except KeyError:
            raise UnknownCallError(f"no live call {call_id}") from None

    def live_calls(self) -> list[CallRecording]:
        """Recordings still open."""
        return list(self._live.values())

    def live_ids(self) -> frozenset[str]:
        """Ids of the recordings still open."""
        return frozenset(self._live)

    def idle_calls(self, retention_s: float) -> list[str]:
        """Calls that have seen no activity for longer than `retention_s`."""
        now_ns = self.clock.monotonic_ns()
        limit_ns = int(retention_s * 1e9)
        return [cid for cid, rec in self._live.items() if rec.idle_ns(now_ns) > limit_ns]

    def stats(self) -> RecorderStats:
        """Counters for the API and metrics."""
        live = self._live.values()
        return RecorderStats(
            live_calls=len(self._live),
            packets_recorded=self._ended_packets
            + sum(r.packet_count(c) for r in live for c in Channel),
            packets_after_end=self._ended_after_end + sum(r.packets_after_end for r in live),
            calls_ended=self.calls_ended,
        )

    def flush(self) -> None:
        """Hand every live journal's buffered records to the operating system."""
        for recording in list(self._live.values()):
            recording.flush()

    async def flush_in_slices(self) -> None:
        """Flush like flush(), yielding to the loop between slices of calls."""
        # Each flush is a write syscall: hundreds of them in one callback would stall packets.
        for index, recording in enumerate(list(self._live.values())):
            if index and index % FLUSH_CALLS_PER_SLICE == 0:
                await asyncio.sleep(0)
            recording.flush()

    async def _flush_loop(self) -> None:
        """Flush journals at the configured interval (bounds what a crash can lose)."""
        while True:
            await self.clock.sleep(self.flush_interval_s)
            try:
                await self.flush_in_slices()
            except OSError as exc:  # disk full or gone: keep trying, loudly
                log.error("recorder.flush_failed", error=str(exc))

    def _ended(self, recording: CallRecording, reason: EndReason) -> None:
        """The last channel of a recording ended: release it, or hand it on to be built."""
        self._live.pop(recording.call_id, None)
        self.calls_ended += 1
        self._ended_packets += sum(recording.packet_count(c) for c in Channel)
        self._ended_after_end += recording.packets_after_end
        log.info("call.ended", call_id=recording.call_id, reason=reason.value)
        if recording.keep:
            summary = recording.summary
            notes = list(summary.get("notes", ()))
            if recording.packets_paused:
                notes.append(
                    f"{recording.packets_paused} packets were not recorded while recording"
                    " was paused"
                )
            # A few hundred bytes, like the description: the finalizer reads it next.
            recording.spool.write_record(
                CallRecord(
                    end_reason=reason.value,
                    ended_wall_ns=self.clock.wall_ns(),
                    ended_mono_ns=self.clock.monotonic_ns(),
                    legs=dict(summary.get("legs", {})),
                    dropped=dict(summary.get("dropped", {})),
                    notes=tuple(notes),
                    latency_ms=dict(summary.get("latency_ms", {})),
                )
            )
        else:
            # Removed at once (two empty journals and a small description, well under a
            # millisecond) so the call never shows up as a recording in the API meanwhile.
            recording.spool.remove()
            return
        self._on_call_ended(recording.spool, reason)
