"""The transcript of two channel files: each channel through a backend, merged into a dialogue."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from mediaserver.analysis.report import AnalysisConfig
from mediaserver.analysis.turns import Speaker
from mediaserver.analysis.vad import Span
from mediaserver.jobs.analysis_job import CHANNEL_OFFSET_S, detect_channels_speech
from mediaserver.transcription.backend import ChannelAudio, Segment, Transcriber
from mediaserver.transcription.dialogue import build_transcript, build_webvtt, merge_dialogue


async def transcribe_files(
    files: Mapping[Speaker, Path],
    *,
    duration_s: float,
    transcriber: Transcriber,
    language: str | None,
    config: AnalysisConfig,
    executor: Executor | None,
    speech: Mapping[Speaker, Sequence[Span]] | None = None,
) -> tuple[dict[str, Any], str]:
    """The transcript document and its WebVTT; speech spans are detected if not given."""
    if speech is None:
        speech = await detect_channels_speech(files, config, executor, duration_s)
    channels = [
        ChannelAudio(
            speaker=side,
            path=path,
            offset_s=CHANNEL_OFFSET_S,
            # Analysis spans are on the recording's time line; backends want the file's own.
            speech=tuple(
                Span(s.start_s - CHANNEL_OFFSET_S, s.end_s - CHANNEL_OFFSET_S)
                for s in speech.get(side, ())
            ),
            duration_s=duration_s,
        )
        for side, path in files.items()
    ]
    results = await asyncio.gather(*(transcriber.transcribe(c, language) for c in channels))
    segments = [segment for result in results for segment in result]
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        executor,
        _build_outputs,
        transcriber.backend,
        transcriber.model,
        language,
        segments,
    )


def _build_outputs(
    backend: str, model: str, language: str | None, segments: list[Segment]
) -> tuple[dict[str, Any], str]:
    """The transcript document and the WebVTT of the merged dialogue."""
    dialogue = merge_dialogue(segments)
    return (
        build_transcript(backend=backend, model=model, language=language, segments=dialogue),
        build_webvtt(dialogue),
    )
