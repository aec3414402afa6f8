"""What the settings ask of post-call jobs: which jobs run, with which VAD and which backend."""

from __future__ import annotations

from concurrent.futures import Executor

from mediaserver.analysis.report import AnalysisConfig
from mediaserver.analysis.vad import VadConfig
from mediaserver.errors import TranscriptionError
from mediaserver.jobs.runner import TranscriberFactory
from mediaserver.jobs.scheduler import JobPlan
from mediaserver.jobs.state import JobKind
from mediaserver.settings import Settings
from mediaserver.transcription.backend import Transcriber
from mediaserver.transcription.openai import OpenAITranscriber
from mediaserver.transcription.pocketsphinx import PocketsphinxTranscriber

DEFAULT_MODELS = {"pocketsphinx": "en-us", "openai": "whisper-1"}


def build_analysis_config(settings: Settings) -> AnalysisConfig:
    """VAD and turn thresholds from the settings."""
    return AnalysisConfig(
        vad=VadConfig(
            mode=settings.vad_mode,
            frame_ms=settings.vad_frame_ms,
            min_speech_ms=settings.vad_min_speech_ms,
            min_silence_ms=settings.vad_min_silence_ms,
            trim_db=settings.vad_trim_db,
        ).validate(),
        turn_gap_s=settings.turn_gap_s,
        min_overlap_s=settings.interruption_min_overlap_s,
        min_silence_s=settings.silence_min_s,
    )


def build_transcript_params(settings: Settings) -> dict[str, str]:
    """The configured backend, model and language of transcripts."""
    backend = settings.transcription_backend
    return {
        "backend": backend,
        "model": settings.transcription_model or DEFAULT_MODELS.get(backend, ""),
        "language": settings.transcription_language,
    }


def build_job_plan(settings: Settings) -> JobPlan:
    """The jobs each stored recording gets: analysis first, so the transcript can use its turns."""
    plan: list[tuple[JobKind, dict[str, str]]] = []
    if settings.analysis_enabled:
        plan.append((JobKind.ANALYSIS, {}))
    if settings.transcription_backend != "none":
        plan.append((JobKind.TRANSCRIPT, build_transcript_params(settings)))
    return plan


def build_transcriber_factory(settings: Settings, executor: Executor | None) -> TranscriberFactory:
    """Makes the backend a transcript job asks for."""

    def create(params: dict[str, str]) -> Transcriber:
        backend = params.get("backend", settings.transcription_backend)
        model = params.get("model") or DEFAULT_MODELS.get(backend, "")
        if backend == "pocketsphinx":
            return PocketsphinxTranscriber(executor, model=model, turn_gap_s=settings.turn_gap_s)
        if backend == "openai":
            return OpenAITranscriber(
                executor,
                model=model,
                timeout_s=settings.transcription_timeout_s,
                max_attempts=settings.transcription_max_attempts,
                max_upload_bytes=settings.transcription_max_upload_bytes,
                turn_gap_s=settings.turn_gap_s,
            )
        raise TranscriptionError(
            f"transcription backend {backend!r} is not available", code="unknown_backend"
        )

    return create
