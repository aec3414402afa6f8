"""JobRunner: runs one job of a stored recording, from its manifest to its stored results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from mediaserver.analysis.report import AnalysisConfig, apply_word_counts, parse_speech
from mediaserver.analysis.turns import Speaker
from mediaserver.errors import (
    EncryptionError,
    EncryptionKeyUnavailableError,
    JobFailedError,
    ObjectNotFoundError,
    OggError,
    OpusPacketError,
    StorageError,
)
from mediaserver.jobs.analysis_job import analyze_files
from mediaserver.jobs.objects import download_object, read_json_object, write_text_object
from mediaserver.jobs.queue import Job
from mediaserver.jobs.state import (
    JobError,
    JobKind,
    JobState,
    JobStatus,
    advance,
    build_queued,
    parse_job_states,
)
from mediaserver.jobs.state_store import JobStateStore
from mediaserver.jobs.transcript_job import transcribe_files
from mediaserver.recording.manifest import Manifest
from mediaserver.storage_backends.keys import (
    JSON_CONTENT_TYPE,
    WEBVTT_CONTENT_TYPE,
    RecordingKeys,
    build_recording_keys,
)
from mediaserver.transcription.backend import Transcriber
from mediaserver.transcription.dialogue import count_words

log = structlog.get_logger(__name__)

# The file role in the manifest of each speaker's channel.
CHANNEL_ROLES = {Speaker.CALLER: "left", Speaker.AGENT: "right"}
TranscriberFactory = Callable[[dict[str, str]], Transcriber]
# (event type such as "analysis.completed", the recording's manifest, the job's new state)
EventCallback = Callable[[str, Manifest, JobState], None]
# (the job's kind, how its attempt ended: completed, failed or retry, seconds it took)
DurationCallback = Callable[[str, str, float], None]


class JobRetryError(Exception):
    """A job's attempt failed in a way another attempt may not: the queue runs it again later."""


def build_keys(manifest: Manifest) -> RecordingKeys:
    """The object keys of a stored recording, from its manifest's creation time."""
    created = datetime.strptime(manifest.created_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return build_recording_keys(manifest.call_id, created)


class JobRunner:
    """The handler the job queue calls: state to processing, produce, state to done."""

    def __init__(
        self,
        *,
        states: JobStateStore,
        executor: Executor | None,
        analysis: AnalysisConfig,
        transcribers: TranscriberFactory,
        on_event: EventCallback | None = None,
        max_attempts: int = 1,
        on_duration: DurationCallback | None = None,
    ) -> None:
        """Run jobs against `states`' store; CPU work goes to `executor`."""
        # Attempts count in the manifest, so they add up across processes and restarts: a job
        # whose attempts all died with their worker, or failed on storage or a bug, ends failed
        # after `max_attempts`; one whose input is wrong (JobFailedError, bad audio) at once.
        self._max_attempts = max_attempts
        self._on_duration = on_duration
        self._states = states
        self._executor = executor
        self._analysis = analysis
        self._transcribers = transcribers
        self._on_event = on_event
        self.completed = dict.fromkeys(JobKind, 0)
        self.failed = dict.fromkeys(JobKind, 0)

    async def __call__(self, job: Job) -> None:
        """Run one job; failures end in its state, a cancellation leaves it queued."""
        bound = log.bind(call_id=job.call_id, kind=job.kind.value, job_id=job.job_id)
        manifest = await self._transition(job, JobStatus.PROCESSING)
        if manifest is None:
            bound.info("job.skipped", reason="the recording is gone")
            return
        started = time.perf_counter()
        attempts = parse_job_states(manifest.jobs)[job.kind].attempts
        error: JobError | None = None
        retryable = False
        if attempts > self._max_attempts:
            error = JobError(
                "attempts_exhausted",
                f"the job was started {attempts - 1} times and never finished"
                " (its worker stopped or lost the queue each time)",
            )
        else:
            error, retryable = await self._attempt(job, manifest, bound)
        elapsed_s = round(time.perf_counter() - started, 3)
        if error is not None and retryable and attempts < self._max_attempts:
            await self._requeue_state(job, error)
            bound.warning(
                "job.retry_later", code=error.code, error=error.message, attempts=attempts
            )
            self._report_duration(job, "retry", elapsed_s)
            raise JobRetryError(error.message)
        status = JobStatus.FAILED if error else JobStatus.COMPLETED
        final = await self._transition(job, status, error)
        if final is None:  # deleted while the job ran: leave none of its results behind
            await self._delete_results(manifest)
        if error is not None:
            self.failed[job.kind] += 1
            bound.warning("job.failed", code=error.code, error=error.message, elapsed_s=elapsed_s)
        else:
            self.completed[job.kind] += 1
            bound.info("job.completed", elapsed_s=elapsed_s)
        self._report_duration(job, status.value, elapsed_s)
        if final is not None and self._on_event is not None:
            state = parse_job_states(final.jobs)[job.kind]
            self._on_event(f"{job.kind.value}.{status.value}", final, state)

    async def _attempt(
        self, job: Job, manifest: Manifest, bound: Any
    ) -> tuple[JobError | None, bool]:
        """Produce the job's results: (None, _) or (the error, whether another try may pass)."""
        work_dir = self._states.scratch_dir / job.job_id
        try:
            await self._produce(job, manifest, work_dir)
        except JobFailedError as exc:
            return JobError(exc.code, str(exc), exc.details), False
        except (OggError, OpusPacketError) as exc:
            return JobError(
                "audio_unreadable", f"the recording's audio cannot be read: {exc}"
            ), False
        except EncryptionKeyUnavailableError as exc:  # no private key here: trying again won't help
            return JobError("encryption_key_unavailable", str(exc)), False
        except EncryptionError as exc:
            return JobError("audio_unreadable", f"a sealed object failed to open: {exc}"), False
        except StorageError as exc:
            return JobError("storage_unavailable", str(exc)), True
        except Exception as exc:  # a bug must not leave the job "processing" forever
            bound.exception("job.crashed")
            return JobError("internal_error", f"{type(exc).__name__}: {exc}"), True
        finally:
            await asyncio.to_thread(shutil.rmtree, work_dir, True)
        return None, False

    async def _requeue_state(self, job: Job, error: JobError) -> None:
        """Show the job queued again, with the error of the attempt that failed."""
        async with self._states.locked(job.call_id):
            manifest = await self._states.read_manifest(job.manifest_key)
            if manifest is None:
                return
            current = parse_job_states(manifest.jobs).get(job.kind)
            if current is None or current.job_id != job.job_id:
                return
            state = replace(current, status=JobStatus.QUEUED, updated_at=self._states.now())
            await self._states.write_state(job.manifest_key, replace(state, error=error))

    def _report_duration(self, job: Job, result: str, elapsed_s: float) -> None:
        """Hand an attempt's duration to whoever measures them."""
        if self._on_duration is not None:
            self._on_duration(job.kind.value, result, elapsed_s)

    async def _transition(
        self, job: Job, status: JobStatus, error: JobError | None = None
    ) -> Manifest | None:
        """Write the job's new state into its manifest; None if the recording is gone."""
        async with self._states.locked(job.call_id):
            manifest = await self._states.read_manifest(job.manifest_key)
            if manifest is None:
                return None
            now = self._states.now()
            current = parse_job_states(manifest.jobs).get(job.kind)
            if current is None or current.job_id != job.job_id:
                current = build_queued(job.kind, job.job_id, now, job.params)
            state = replace(advance(current, status, now, error), params=dict(job.params))
            return await self._states.write_state(job.manifest_key, state)

    async def _produce(self, job: Job, manifest: Manifest, work_dir: Path) -> None:
        """Build and store the job's results."""
        keys = build_keys(manifest)
        store = self._states.store
        scratch = self._states.scratch_dir
        await asyncio.to_thread(work_dir.mkdir, parents=True, exist_ok=True)
        files = await self._download_channels(manifest, work_dir)
        duration_s = manifest.duration_ms / 1000
        if job.kind is JobKind.ANALYSIS:
            transcript = await read_json_object(store, keys.transcript)
            document = await analyze_files(
                manifest.call_id,
                duration_s,
                files,
                self._analysis,
                self._executor,
                count_words(transcript) if transcript else None,
            )
            await write_text_object(
                store,
                keys.analysis,
                _dump(document),
                content_type=JSON_CONTENT_TYPE,
                scratch_dir=scratch,
            )
            return
        transcriber = self._transcribers(job.params)
        analysis = await read_json_object(store, keys.analysis)
        transcript, webvtt = await transcribe_files(
            files,
            duration_s=duration_s,
            transcriber=transcriber,
            language=job.params.get("language") or None,
            config=self._analysis,
            executor=self._executor,
            speech=parse_speech(analysis) if analysis else None,
        )
        await write_text_object(
            store,
            keys.transcript_vtt,
            webvtt,
            content_type=WEBVTT_CONTENT_TYPE,
            scratch_dir=scratch,
        )
        await write_text_object(
            store,
            keys.transcript,
            _dump(transcript),
            content_type=JSON_CONTENT_TYPE,
            scratch_dir=scratch,
        )
        if analysis is not None:  # words per minute need both documents
            updated = apply_word_counts(analysis, count_words(transcript))
            await write_text_object(
                store,
                keys.analysis,
                _dump(updated),
                content_type=JSON_CONTENT_TYPE,
                scratch_dir=scratch,
            )

    async def _delete_results(self, manifest: Manifest) -> None:
        """Remove what a job may have stored for a recording deleted meanwhile."""
        for key in build_keys(manifest).derived_keys():
            with contextlib.suppress(ObjectNotFoundError):
                await self._states.store.delete(key)

    async def _download_channels(self, manifest: Manifest, work_dir: Path) -> dict[Speaker, Path]:
        """Both channel files, fetched from the store into the job's directory."""
        keys = {side: _stored_key(manifest, role) for side, role in CHANNEL_ROLES.items()}
        files = {side: work_dir / f"{CHANNEL_ROLES[side]}.opus" for side in keys}
        await asyncio.gather(
            *(download_object(self._states.store, keys[side], files[side]) for side in keys)
        )
        return files


def _stored_key(manifest: Manifest, role: str) -> str:
    """The stored key of the recording's file with `role`."""
    for entry in manifest.files:
        if entry.role == role and entry.key is not None:
            return entry.key
    raise JobFailedError(
        f"recording {manifest.call_id} has no stored {role} channel", code="audio_missing"
    )


def _dump(document: object) -> str:
    """A document as the stored JSON."""
    return json.dumps(document, indent=1, sort_keys=False)
