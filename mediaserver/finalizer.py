"""Finalization: build ended calls' files in worker processes, store them, recover leftovers."""

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import structlog

from mediaserver.encryption.envelope import parse_envelope
from mediaserver.encryption.keyring import Keyring
from mediaserver.errors import EncryptionKeyUnavailableError, MediaServerError, StorageError
from mediaserver.finalize import DEFAULT_OPTIONS, FinalizeOptions, build_recording
from mediaserver.recording.call import CallStatus, EndReason
from mediaserver.recording.manifest import Manifest
from mediaserver.recording.spool import CallSpool, Spool
from mediaserver.storage_backends.keys import build_recording_keys, compute_content_type
from mediaserver.storage_backends.store import ObjectStore

log = structlog.get_logger(__name__)

# Called with the final manifest (stored, recovered or upload_failed) and the seconds it took.
OnFinalized = Callable[[Manifest, float], None]
# Awaited with the manifest once the store holds the recording, before its spool is released:
# what must follow a stored recording (its post-call jobs) is made durable here. If it raises,
# the spool stays, and recovery (at the next start, or the sweeper's next round) stores the
# recording again and hands it off again: a crash between storing and queueing loses nothing.
HandOff = Callable[[Manifest], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class FinalizerStats:
    """Counters of finalization since start."""

    built: int
    build_failed: int
    recovered: int
    uploads_stored: int
    uploads_failed: int
    hand_offs_failed: int  # stored, but the post-call jobs could not be queued: spool kept
    pending: int


class Finalizer:
    """Owns the worker pool's use, the store and recovery; every task it starts, it awaits."""

    def __init__(
        self,
        *,
        spool: Spool,
        store: ObjectStore,
        executor: Executor | None,
        options: FinalizeOptions = DEFAULT_OPTIONS,
        on_stored: OnFinalized | None = None,
        hand_off: HandOff | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        self.spool = spool
        # Encryption on: unseals the journals (the data key is in memory while this process
        # recorded the call; after a crash it is unwrapped from the spool's envelope).
        self.keyring = keyring
        self.store = store
        self.options = options
        self._executor = executor
        self._on_stored = on_stored
        self._hand_off = hand_off
        self._tasks: dict[str, asyncio.Task[Manifest | None]] = {}
        self._built = 0
        self._build_failed = 0
        self._recovered = 0
        self._uploads_stored = 0
        self._uploads_failed = 0
        self._hand_offs_failed = 0

    def submit(self, spool: CallSpool, reason: EndReason) -> asyncio.Task[Manifest | None]:
        """Build and store an ended call's recording in an owned task."""
        options = replace(self.options, end_reason=reason.value)
        return self._start(spool, options)

    def is_pending(self, call_id: str) -> bool:
        """Whether a call's recording is being built or stored now."""
        return call_id in self._tasks

    async def wait(self, call_id: str) -> Manifest | None:
        """Wait until a call being finalized is stored (or has failed)."""
        task = self._tasks.get(call_id)
        return None if task is None else await asyncio.shield(task)

    async def recover(self, *, live: Iterable[str] = ()) -> list[str]:
        """Finalize or re-upload every spool that no live call or running task owns."""
        skipped = set(live) | set(self._tasks)
        spools = await asyncio.to_thread(self.spool.list_calls)
        started = []
        for spool in spools:
            if spool.call_id in skipped:
                continue
            options = replace(self.options, recovered=True, end_reason=EndReason.RECOVERED.value)
            self._start(spool, options)
            started.append(spool.call_id)
        if started:
            log.info("recorder.recovering", calls=started)
        return started

    async def close(self, *, drain_timeout_s: float = 30.0) -> int:
        """Wait for running finalizations up to the timeout; returns how many were left."""
        pending = list(self._tasks.values())
        unfinished = 0
        if pending:
            _, still_running = await asyncio.wait(pending, timeout=drain_timeout_s)
            for task in still_running:
                task.cancel()  # the spool stays on disk and is recovered at the next start
            await asyncio.gather(*pending, return_exceptions=True)
            unfinished = len(still_running)
        log.info("recorder.closed", finalized=len(pending) - unfinished, unfinished=unfinished)
        return unfinished

    def stats(self) -> FinalizerStats:
        """Counters for the API and metrics."""
        return FinalizerStats(
            built=self._built,
            build_failed=self._build_failed,
            recovered=self._recovered,
            uploads_stored=self._uploads_stored,
            uploads_failed=self._uploads_failed,
            hand_offs_failed=self._hand_offs_failed,
            pending=len(self._tasks),
        )

    def _start(self, spool: CallSpool, options: FinalizeOptions) -> asyncio.Task[Manifest | None]:
        """Start the owned task that builds and stores one recording."""
        call_id = spool.call_id
        task = asyncio.create_task(self._finalize(spool, options), name=f"finalize.{call_id}")
        self._tasks[call_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(call_id, None))
        return task

    async def _finalize(self, spool: CallSpool, options: FinalizeOptions) -> Manifest | None:
        """Build the files in a worker (unless already built), store them, release the spool."""
        bound = log.bind(call_id=spool.call_id)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            manifest = await asyncio.to_thread(spool.read_built_manifest)
            if manifest is None:
                journal_key = await self._journal_key(spool)
                manifest = await loop.run_in_executor(
                    self._executor,
                    build_recording,
                    spool,
                    replace(options, journal_key=journal_key),
                )
                self._built += 1
                if options.recovered:
                    self._recovered += 1
        except (MediaServerError, OSError) as exc:
            self._build_failed += 1
            bound.error("recording.build_failed", error=str(exc))
            return None
        except Exception:  # a bug must not take other calls' finalization down with it
            self._build_failed += 1
            bound.exception("recording.build_failed")
            return None
        stored = await self._store(spool, manifest)
        if stored is None:  # stored, not handed off: the spool stays for recovery
            return None
        if self._on_stored is not None:
            self._on_stored(stored, loop.time() - started)
        return stored

    async def _journal_key(self, spool: CallSpool) -> bytes | None:
        """The data key a call's journals are sealed with, or None when they are plain."""
        envelope = await asyncio.to_thread(spool.read_envelope)
        if envelope is None:
            return None
        if self.keyring is None:
            raise EncryptionKeyUnavailableError(
                f"call {spool.call_id}'s journals are sealed but encryption is off here"
            )
        return self.keyring.unwrap(parse_envelope(envelope))

    async def _store(self, spool: CallSpool, manifest: Manifest) -> Manifest | None:
        """Upload every file, then the manifest, hand the recording off; only then delete the
        spool. None if the hand-off failed (the spool stays and recovery does it all again)."""
        bound = log.bind(call_id=spool.call_id)
        created = datetime.strptime(manifest.created_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=UTC
        )
        keys = build_recording_keys(spool.call_id, created)
        by_role = keys.by_role()
        recovered = manifest.end_reason == EndReason.RECOVERED.value
        final_status = CallStatus.RECOVERED if recovered else CallStatus.STORED
        if manifest.status is CallStatus.EMPTY:
            final_status = CallStatus.EMPTY  # a manifest and no audio
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
                    entry.key,
                    spool.directory / entry.name,
                    content_type=compute_content_type(entry.key),
                )
            manifest_path = await asyncio.to_thread(spool.write_manifest, stored)
            await self.store.put_file(keys.manifest, manifest_path, content_type="application/json")
        except StorageError as exc:
            self._uploads_failed += 1
            failed = replace(stored, status=CallStatus.UPLOAD_FAILED)
            await asyncio.to_thread(spool.write_manifest, failed)
            bound.error("recording.upload_failed", error=str(exc), spool=str(spool.directory))
            return failed
        self._uploads_stored += 1
        if not await self._handed_off(stored):
            return None
        await asyncio.to_thread(spool.remove)
        if self.keyring is not None:
            self.keyring.unpin(spool.call_id)
        bound.info(
            "call.finalized",
            status=stored.status.value,
            duration_s=stored.duration_ms / 1000,
            manifest_key=keys.manifest,
        )
        return stored

    async def _handed_off(self, stored: Manifest) -> bool:
        """Give the stored recording to `hand_off`; False (logged) if that failed."""
        if self._hand_off is None:
            return True
        try:
            await self._hand_off(stored)
        except Exception as exc:  # the queue or the store: the spool keeps the recording
            self._hand_offs_failed += 1
            log.error(
                "recording.hand_off_failed",
                call_id=stored.call_id,
                error=f"{type(exc).__name__}: {exc}",
            )
            return False
        return True
