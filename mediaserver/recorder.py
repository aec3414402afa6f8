"""The recorder: journals live calls' packets, finalizes ended calls off the loop, stores them."""

import asyncio
import re
import secrets
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from mediaserver.clock import Clock, SystemClock
from mediaserver.errors import (
    CallStateError,
    MediaServerError,
    RtpParseError,
    StorageError,
    UnknownCallError,
)
from mediaserver.finalize import DEFAULT_OPTIONS, FinalizeOptions, build_recording
from mediaserver.recording.call import Call, CallStatus, EndReason
from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.journal import JournalHeader, JournalWriter
from mediaserver.recording.manifest import Manifest, parse_manifest
from mediaserver.recording.spool import (
    CALL_FILE,
    MANIFEST_FILE,
    CallDescription,
    journal_path,
)
from mediaserver.rtp.packet import parse_rtp_header
from mediaserver.storage_backends.keys import build_recording_keys, compute_content_type
from mediaserver.storage_backends.store import ObjectStore

log = structlog.get_logger(__name__)

CALL_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# One second of a channel (~4.6 KB) fits, so a flush a second is still one write per journal;
# larger buffers only raise resident memory when flushing falls behind (bench_memory.py).
JOURNAL_BUFFER_BYTES = 8 * 1024
FLUSH_CALLS_PER_SLICE = 16
_CONTENT_TYPES = {".opus": "audio/ogg", ".json": "application/json"}


def new_call_id() -> str:
    """An unguessable call id (128 random bits)."""
    return secrets.token_urlsafe(16)


@dataclass(slots=True)
class _LiveCall:
    """A call being recorded: its state and its open journals."""

    call: Call
    spool_dir: Path
    files: dict[Channel, BinaryIO]
    writers: dict[Channel, JournalWriter]


@dataclass(frozen=True, slots=True)
class RecorderStats:
    """Counters of the recorder's work since start."""

    live_calls: int
    packets_recorded: int
    packets_malformed: int
    calls_finalized: int
    calls_expired: int
    calls_recovered: int
    uploads_failed: int
    uploads_stored: int


class Recorder:
    """Owns every live call's journals and every finalization task; start() and close() pair up."""

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
        self.spool_root = spool_root
        self.enabled = enabled  # AUDIO_CACHE_ENABLED: calls still run, nothing is kept
        self.store = store
        self.options = options
        self.retention_ns = int(retention_s * 1e9)
        self.sweep_interval_s = sweep_interval_s
        self.flush_interval_s = flush_interval_s
        self.clock: Clock = clock or SystemClock()
        self._executor = executor
        self._calls: dict[str, _LiveCall] = {}
        self._finalizing: dict[str, asyncio.Task[Manifest | None]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._accepting = True
        # Who ends an expired call: by default the recorder itself; the server's call hub
        # takes over so that the call's transports are closed too.
        self.on_expire: Callable[[str], None] | None = None
        self.on_stored: Callable[[Manifest, float], None] | None = None  # (manifest, seconds)
        self.packets_recorded = 0
        self.packets_malformed = 0
        self.calls_finalized = 0
        self.calls_expired = 0
        self.calls_recovered = 0
        self.uploads_failed = 0
        self.uploads_stored = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover what a previous process left, then start flushing and sweeping."""
        await asyncio.to_thread(self.spool_root.mkdir, parents=True, exist_ok=True)
        await self.recover()
        self._loops = [
            asyncio.create_task(self._flush_loop(), name="recorder.flush"),
            asyncio.create_task(self._sweep_loop(), name="recorder.sweep"),
        ]

    async def close(self, *, drain_timeout_s: float = 30.0) -> None:
        """Stop taking calls, end live ones, and wait for finalizations up to the drain timeout."""
        self._accepting = False
        for loop_task in self._loops:
            loop_task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        for call_id in list(self._calls):
            self.end_call(call_id, EndReason.SHUTDOWN)
        pending = list(self._finalizing.values())
        unfinished = 0
        if pending:
            _, still_running = await asyncio.wait(pending, timeout=drain_timeout_s)
            for task in still_running:
                task.cancel()  # the spool stays on disk and is recovered at the next start
            await asyncio.gather(*pending, return_exceptions=True)
            unfinished = len(still_running)
        log.info("recorder.closed", finalized=len(pending) - unfinished, unfinished=unfinished)

    # -- calls ----------------------------------------------------------------------------------

    def open_call(
        self,
        call_id: str | None = None,
        *,
        caller_codec: Codec = Codec.OPUS,
        agent_codec: Codec = Codec.OPUS,
        metadata: Mapping[str, Any] | None = None,
    ) -> Call:
        """Start recording a call: create its spool and open both journals."""
        if not self._accepting:
            raise CallStateError("the recorder is shutting down")
        # Only a missing id is generated: an empty one is a caller's mistake, refused below.
        call_id = new_call_id() if call_id is None else call_id
        if not CALL_ID_PATTERN.fullmatch(call_id):
            raise CallStateError(f"call id must match {CALL_ID_PATTERN.pattern}")
        spool_dir = self.spool_root / call_id
        if call_id in self._calls or call_id in self._finalizing or spool_dir.exists():
            raise CallStateError(f"call {call_id} already exists")
        now_mono, now_wall = self.clock.monotonic_ns(), self.clock.wall_ns()
        codecs = {Channel.CALLER: caller_codec, Channel.AGENT: agent_codec}
        call = Call(call_id, now_wall, now_mono, codecs, last_activity_ns=now_mono)
        description = CallDescription(call_id, now_wall, now_mono, codecs, dict(metadata or {}))
        # A few hundred bytes: small enough to write on the loop, like a journal append.
        spool_dir.mkdir(parents=True)
        (spool_dir / CALL_FILE).write_text(description.to_json())
        files: dict[Channel, BinaryIO] = {}
        writers: dict[Channel, JournalWriter] = {}
        for channel, codec in codecs.items():
            handle = journal_path(spool_dir, channel).open("wb", buffering=JOURNAL_BUFFER_BYTES)
            files[channel] = handle
            writers[channel] = JournalWriter(
                handle, JournalHeader(channel, codec, now_wall, now_mono)
            )
        self._calls[call_id] = _LiveCall(call, spool_dir, files, writers)
        log.info("call.opened", call_id=call_id, caller_codec=caller_codec.value)
        return call

    def discard_call(self, call_id: str) -> None:
        """Forget a call that never carried media (its setup failed): no recording is made."""
        live = self._calls.pop(call_id, None)
        if live is None:
            raise UnknownCallError(f"no live call {call_id}")
        if live.writers[Channel.CALLER].packet_count or live.writers[Channel.AGENT].packet_count:
            self._calls[call_id] = live
            raise CallStateError(f"call {call_id} has media and must be ended, not discarded")
        for handle in live.files.values():
            handle.close()
        shutil.rmtree(live.spool_dir)  # two empty journals and a small description
        log.info("call.discarded", call_id=call_id)

    def get_call(self, call_id: str) -> Call:
        """A live call by id."""
        try:
            return self._calls[call_id].call
        except KeyError:
            raise UnknownCallError(f"no live call {call_id}") from None

    def live_calls(self) -> list[Call]:
        """Calls still recording."""
        return [live.call for live in self._calls.values()]

    def record(
        self,
        call_id: str,
        channel: Channel,
        *,
        arrival_ns: int,
        rtp_timestamp: int,
        ssrc: int,
        sequence: int,
        payload_type: int,
        marker: bool,
        payload: bytes | memoryview,
    ) -> None:
        """Journal one packet of a live call; O(1)."""
        live = self._calls.get(call_id)
        if live is None:
            raise UnknownCallError(f"no live call {call_id}")
        if channel not in live.call.open_channels:
            raise CallStateError(f"call {call_id}: {channel.value} channel already ended")
        live.call.touch(arrival_ns)
        if not self.enabled:
            return
        live.writers[channel].append(
            arrival_ns, rtp_timestamp, ssrc, sequence, payload_type, marker, payload
        )
        self.packets_recorded += 1

    def record_rtp(
        self, call_id: str, channel: Channel, data: bytes, arrival_ns: int | None = None
    ) -> bool:
        """Journal a raw RTP packet; a malformed one is counted and dropped (False)."""
        try:
            header = parse_rtp_header(data)
        except RtpParseError:
            self.packets_malformed += 1
            return False
        live = self._calls.get(call_id)
        if live is None:
            raise UnknownCallError(f"no live call {call_id}")
        if channel not in live.call.open_channels:
            raise CallStateError(f"call {call_id}: {channel.value} channel already ended")
        if arrival_ns is None:
            arrival_ns = self.clock.monotonic_ns()
        # The hot path: one call per packet into the journal, positional arguments only.
        live.call.last_activity_ns = arrival_ns
        if not self.enabled:
            return True
        payload_type, sequence, timestamp, ssrc, marker, start, end = header
        live.writers[channel].append(
            arrival_ns, timestamp, ssrc, sequence, payload_type, marker, data[start:end]
        )
        self.packets_recorded += 1
        return True

    def end_channel(
        self, call_id: str, channel: Channel, reason: EndReason = EndReason.HANGUP
    ) -> asyncio.Task[Manifest | None] | None:
        """Drop a channel's reference; the last one starts finalization and returns its task."""
        live = self._calls.get(call_id)
        if live is None:
            if call_id in self._finalizing:
                raise CallStateError(f"call {call_id} has already ended")
            raise UnknownCallError(f"no live call {call_id}")
        last = live.call.end_channel(channel, reason)
        live.files[channel].close()  # flushes the buffer: a few KiB at most
        log.info("call.channel_ended", call_id=call_id, channel=channel.value, reason=reason.value)
        if not last:
            return None
        del self._calls[call_id]
        if not self.enabled:  # recording switched off: the call leaves nothing behind
            # Removed at once (two empty journals and a small description, well under a
            # millisecond) so the call never shows up as a recording in the API meanwhile.
            shutil.rmtree(live.spool_dir)
            return None
        self.calls_finalized += 1
        options = replace(self.options, end_reason=reason.value)
        return self._start_finalize(call_id, live.spool_dir, options)

    def end_call(
        self, call_id: str, reason: EndReason = EndReason.HANGUP
    ) -> asyncio.Task[Manifest | None] | None:
        """End every open channel of a call."""
        task = None
        for channel in list(self.get_call(call_id).open_channels):
            task = self.end_channel(call_id, channel, reason)
        return task

    async def wait_finalized(self, call_id: str) -> Manifest | None:
        """Wait until a call being finalized is stored (or has failed)."""
        task = self._finalizing.get(call_id)
        return None if task is None else await asyncio.shield(task)

    def flush(self) -> None:
        """Hand every live journal's buffered records to the operating system."""
        for live in list(self._calls.values()):
            for channel in live.call.open_channels:
                live.writers[channel].flush()

    async def flush_in_slices(self) -> None:
        """Flush like flush(), yielding to the loop between slices of calls."""
        # Each flush is a write syscall: hundreds of them in one callback would stall packets.
        for index, live in enumerate(list(self._calls.values())):
            if index and index % FLUSH_CALLS_PER_SLICE == 0:
                await asyncio.sleep(0)
            for channel in live.call.open_channels:
                live.writers[channel].flush()

    # -- housekeeping ---------------------------------------------------------------------------

    async def sweep(self) -> int:
        """End and finalize calls idle past the retention; retry built-but-not-uploaded ones."""
        now = self.clock.monotonic_ns()
        expired = [
            call_id
            for call_id, live in self._calls.items()
            if live.call.idle_ns(now) > self.retention_ns
        ]
        for call_id in expired:
            idle_s = self._calls[call_id].call.idle_ns(now) / 1e9
            log.warning("call.expired", call_id=call_id, idle_s=round(idle_s, 1))
            if self.on_expire is not None:
                self.on_expire(call_id)
            else:
                self.end_call(call_id, EndReason.EXPIRED)
        self.calls_expired += len(expired)
        await self.recover()
        log.info("recorder.swept", expired=len(expired), live_calls=len(self._calls))
        return len(expired)

    async def recover(self) -> list[str]:
        """Finalize or re-upload every spool that no live call or running task owns."""
        names = await asyncio.to_thread(_list_spools, self.spool_root)
        started = []
        for call_id in names:
            if call_id in self._calls or call_id in self._finalizing:
                continue
            spool_dir = self.spool_root / call_id
            options = replace(self.options, recovered=True, end_reason=EndReason.RECOVERED.value)
            self._start_finalize(call_id, spool_dir, options)
            started.append(call_id)
        if started:
            log.info("recorder.recovering", calls=started)
        return started

    def stats(self) -> RecorderStats:
        """Counters for the API and metrics."""
        return RecorderStats(
            live_calls=len(self._calls),
            packets_recorded=self.packets_recorded,
            packets_malformed=self.packets_malformed,
            calls_finalized=self.calls_finalized,
            calls_expired=self.calls_expired,
            calls_recovered=self.calls_recovered,
            uploads_failed=self.uploads_failed,
            uploads_stored=self.uploads_stored,
        )

    async def _flush_loop(self) -> None:
        """Flush journals at the configured interval (bounds what a crash can lose)."""
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self.flush_in_slices()
            except OSError as exc:  # disk full or gone: keep trying, loudly
                log.error("recorder.flush_failed", error=str(exc))

    async def _sweep_loop(self) -> None:
        """Sweep at the configured interval."""
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                await self.sweep()
            except MediaServerError:
                log.exception("recorder.sweep_failed")

    # -- finalization ---------------------------------------------------------------------------

    def _start_finalize(
        self, call_id: str, spool_dir: Path, options: FinalizeOptions
    ) -> asyncio.Task[Manifest | None]:
        """Start the owned task that builds and stores a call's recording."""
        task = asyncio.create_task(
            self._finalize(call_id, spool_dir, options), name=f"finalize.{call_id}"
        )
        self._finalizing[call_id] = task
        task.add_done_callback(lambda _: self._finalizing.pop(call_id, None))
        return task

    async def _finalize(
        self, call_id: str, spool_dir: Path, options: FinalizeOptions
    ) -> Manifest | None:
        """Build the files in a worker (unless already built), store them, release the spool."""
        bound = log.bind(call_id=call_id)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            manifest = await asyncio.to_thread(_read_built_manifest, spool_dir)
            if manifest is None:
                manifest = await loop.run_in_executor(
                    self._executor, build_recording, spool_dir, options
                )
                if options.recovered:
                    self.calls_recovered += 1
        except (MediaServerError, OSError) as exc:
            bound.error("recording.build_failed", error=str(exc))
            return None
        except Exception:  # a bug must not take other calls' finalization down with it
            bound.exception("recording.build_failed")
            return None
        stored = await self._store(call_id, spool_dir, manifest)
        if self.on_stored is not None:  # stored, or upload_failed (kept and retried)
            self.on_stored(stored, loop.time() - started)
        return stored

    async def _store(self, call_id: str, spool_dir: Path, manifest: Manifest) -> Manifest:
        """Upload every file, then the manifest; delete the spool only once all are confirmed."""
        bound = log.bind(call_id=call_id)
        created = datetime.strptime(manifest.created_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=UTC
        )
        keys = build_recording_keys(call_id, created)
        by_role = keys.by_role()
        recovered = manifest.end_reason == EndReason.RECOVERED.value
        final_status = CallStatus.RECOVERED if recovered else CallStatus.STORED
        files = tuple(replace(f, key=by_role[f.role]) for f in manifest.files)
        stored = replace(
            manifest,
            status=final_status,
            files=files,
            storage={**manifest.storage, "manifest_key": keys.manifest},
        )
        try:
            for entry in files:
                assert entry.key is not None
                await self.store.put_file(
                    entry.key, spool_dir / entry.name, content_type=compute_content_type(entry.key)
                )
            manifest_path = spool_dir / MANIFEST_FILE
            await asyncio.to_thread(manifest_path.write_text, stored.to_json())
            await self.store.put_file(keys.manifest, manifest_path, content_type="application/json")
        except StorageError as exc:
            self.uploads_failed += 1
            failed = replace(stored, status=CallStatus.UPLOAD_FAILED)
            await asyncio.to_thread((spool_dir / MANIFEST_FILE).write_text, failed.to_json())
            bound.error("recording.upload_failed", error=str(exc), spool=str(spool_dir))
            return failed
        self.uploads_stored += 1
        await asyncio.to_thread(shutil.rmtree, spool_dir)
        bound.info(
            "call.finalized",
            status=stored.status.value,
            duration_s=stored.duration_ms / 1000,
            manifest_key=keys.manifest,
        )
        return stored


def _list_spools(root: Path) -> list[str]:
    """Call ids with a spool directory."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / CALL_FILE).exists())


def _read_built_manifest(spool_dir: Path) -> Manifest | None:
    """The manifest of files already built in this spool, if they are all there."""
    path = spool_dir / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        manifest = parse_manifest(path.read_text())
    except (ValueError, KeyError, TypeError):
        return None
    if all((spool_dir / f.name).exists() for f in manifest.files):
        return manifest
    return None
