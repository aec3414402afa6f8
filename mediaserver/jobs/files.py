"""Post-call documents for recordings on local disk (`mediaserver import-pcap`)."""

from __future__ import annotations

import json
from concurrent.futures import Executor
from pathlib import Path

from mediaserver.analysis.report import apply_word_counts
from mediaserver.analysis.turns import Speaker
from mediaserver.jobs.analysis_job import analyze_files
from mediaserver.jobs.plan import (
    build_analysis_config,
    build_transcriber_factory,
    build_transcript_params,
)
from mediaserver.jobs.transcript_job import transcribe_files
from mediaserver.recording.manifest import Manifest
from mediaserver.settings import Settings
from mediaserver.transcription.dialogue import count_words


async def write_documents(
    directory: Path, manifest: Manifest, settings: Settings, executor: Executor | None
) -> list[Path]:
    """Write the analysis and the transcript (as the settings ask) beside a recording's files."""
    roles = {entry.role: directory / entry.name for entry in manifest.files}
    files = {Speaker.CALLER: roles["left"], Speaker.AGENT: roles["right"]}
    config = build_analysis_config(settings)
    duration_s = manifest.duration_ms / 1000
    prefix = f"conversation_{manifest.call_id}"
    written: list[Path] = []
    analysis = None
    if settings.analysis_enabled:
        analysis = await analyze_files(manifest.call_id, duration_s, files, config, executor)
    if settings.transcription_backend != "none":
        params = build_transcript_params(settings)
        transcriber = build_transcriber_factory(settings, executor)(params)
        transcript, webvtt = await transcribe_files(
            files,
            duration_s=duration_s,
            transcriber=transcriber,
            language=params["language"] or None,
            config=config,
            executor=executor,
        )
        written.append(_write(directory / f"{prefix}_transcript.json", json.dumps(transcript)))
        written.append(_write(directory / f"{prefix}_transcript.vtt", webvtt))
        if analysis is not None:
            analysis = apply_word_counts(analysis, count_words(transcript))
    if analysis is not None:
        written.insert(0, _write(directory / f"{prefix}_analysis.json", json.dumps(analysis)))
    return written


def _write(path: Path, text: str) -> Path:
    """Write one document; return its path."""
    path.write_text(text)
    return path
