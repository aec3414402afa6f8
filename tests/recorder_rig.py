"""The recording pipeline as the server wires it (recorder, finalizer, sweeper), driven by id."""

import asyncio
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mediaserver.call_recording import CallRecording
from mediaserver.calls import CallHub
from mediaserver.clock import Clock, SystemClock
from mediaserver.errors import RtpParseError
from mediaserver.finalize import DEFAULT_OPTIONS, FinalizeOptions
from mediaserver.finalizer import Finalizer
from mediaserver.recorder import Recorder
from mediaserver.recording.call import EndReason
from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.manifest import Manifest
from mediaserver.recording.spool import CallSpool, Spool
from mediaserver.rtp.media_packet import MediaPacket
from mediaserver.rtp.packet import parse_rtp_header
from mediaserver.storage_backends.store import ObjectStore
from mediaserver.sweeper import Sweeper


@dataclass(frozen=True, slots=True)
class RigStats:
    """What the pipeline did, summed from its parts."""

    live_calls: int
    packets_recorded: int
    packets_malformed: int
    calls_finalized: int
    calls_expired: int
    calls_recovered: int
    uploads_failed: int
    uploads_stored: int


class RecorderRig:
    """A Recorder, the Finalizer it hands ended calls to and a Sweeper, wired as the app does."""

    def __init__(
        self,
        *,
        spool_root: Path,
        store: ObjectStore,
        executor: Executor | None,
        options: FinalizeOptions = DEFAULT_OPTIONS,
        retention_s: float = 1800.0,
        sweep_interval_s: float = 600.0,
        flush_interval_s: float = 1.0,
        clock: Clock | None = None,
        enabled: bool = True,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.spool_root = spool_root
        self.store = store
        self.finalizer = Finalizer(
            spool=Spool(spool_root), store=store, executor=executor, options=options
        )
        self.tasks: dict[str, asyncio.Task[Manifest | None]] = {}
        self.recorder = Recorder(
            spool=self.finalizer.spool,
            on_call_ended=self._submit,
            clock=self.clock,
            flush_interval_s=flush_interval_s,
            enabled=enabled,
        )
        self.hub = CallHub(self.recorder, clock=self.clock)
        self.sweeper = Sweeper(
            self.hub,
            self.finalizer,
            clock=self.clock,
            retention_s=retention_s,
            interval_s=sweep_interval_s,
        )
        self.packets_malformed = 0
        self._sweeping: asyncio.Task[None] | None = None

    def _submit(self, spool: CallSpool, reason: EndReason) -> None:
        """Hand an ended call to the finalizer, keeping its task."""
        self.tasks[spool.call_id] = self.finalizer.submit(spool, reason)

    async def start(self, *, sweep: bool = True) -> None:
        """Start flushing, recover leftovers, and sweep in the background."""
        await self.recorder.start()
        await self.finalizer.recover(live=self.recorder.live_ids())
        if sweep:
            self._sweeping = asyncio.create_task(self.sweeper.run())

    async def close(self, *, drain_timeout_s: float = 30.0) -> None:
        """End live calls as shutdown, stop, and wait for finalizations (as the server does)."""
        if self._sweeping is not None:
            self._sweeping.cancel()
            await asyncio.gather(self._sweeping, return_exceptions=True)
            self._sweeping = None
        for recording in self.recorder.live_calls():
            for channel in list(recording.open_channels):
                recording.end(channel, EndReason.SHUTDOWN)
        await self.recorder.close()
        await self.finalizer.close(drain_timeout_s=drain_timeout_s)

    def open_call(
        self,
        call_id: str | None = None,
        *,
        caller_codec: Codec = Codec.OPUS,
        agent_codec: Codec = Codec.OPUS,
        metadata: dict[str, Any] | None = None,
    ) -> CallRecording:
        """Open a call's recording."""
        return self.recorder.open_call(
            call_id, caller_codec=caller_codec, agent_codec=agent_codec, metadata=metadata
        )

    def get_call(self, call_id: str) -> CallRecording:
        """A live call's recording."""
        return self.recorder.get_call(call_id)

    def live_calls(self) -> list[CallRecording]:
        """Live recordings."""
        return self.recorder.live_calls()

    def record(self, call_id: str, channel: Channel, packet: MediaPacket) -> bool:
        """Journal one packet of a live call."""
        return self.recorder.get_call(call_id).record(channel, packet)

    def record_rtp(
        self, call_id: str, channel: Channel, data: bytes, arrival_ns: int | None = None
    ) -> bool:
        """Parse a datagram as a transport does and journal it; a malformed one is counted."""
        try:
            header = parse_rtp_header(data)
        except RtpParseError:
            self.packets_malformed += 1
            return False
        packet = MediaPacket(
            self.clock.monotonic_ns() if arrival_ns is None else arrival_ns,
            header.timestamp,
            header.sequence,
            header.ssrc,
            header.payload_type,
            header.marker,
            data[header.payload_offset : header.payload_end],
        )
        return self.record(call_id, channel, packet)

    def end_channel(
        self, call_id: str, channel: Channel, reason: EndReason = EndReason.CALLER_HANGUP
    ) -> asyncio.Task[Manifest | None] | None:
        """End one channel; the task finalizing the call once it was the last."""
        if self.recorder.get_call(call_id).end(channel, reason):
            return self.tasks.get(call_id)
        return None

    def end_call(
        self, call_id: str, reason: EndReason = EndReason.CALLER_HANGUP
    ) -> asyncio.Task[Manifest | None] | None:
        """End every open channel of a call."""
        task = None
        for channel in list(self.recorder.get_call(call_id).open_channels):
            task = self.end_channel(call_id, channel, reason) or task
        return task

    async def wait_finalized(self, call_id: str) -> Manifest | None:
        """Wait for a call's finalization (None if none is running)."""
        return await self.finalizer.wait(call_id)

    async def sweep(self) -> int:
        """One sweep; how many calls it expired."""
        return len(await self.sweeper.sweep())

    async def recover(self) -> list[str]:
        """Finalize every spool nothing owns."""
        return await self.finalizer.recover(live=self.recorder.live_ids())

    def stats(self) -> RigStats:
        """Counters of every part."""
        recorder, finalizer = self.recorder.stats(), self.finalizer.stats()
        return RigStats(
            live_calls=recorder.live_calls,
            packets_recorded=recorder.packets_recorded,
            packets_malformed=self.packets_malformed,
            calls_finalized=finalizer.built,
            calls_expired=self.sweeper.calls_expired,
            calls_recovered=finalizer.recovered,
            uploads_failed=finalizer.uploads_failed,
            uploads_stored=finalizer.uploads_stored,
        )


def feed_packets(
    rig: RecorderRig, call_id: str, items: Iterable[tuple[Channel, MediaPacket]]
) -> int:
    """Journal (channel, packet) pairs in order; returns how many were taken."""
    return sum(rig.record(call_id, channel, packet) for channel, packet in items)
