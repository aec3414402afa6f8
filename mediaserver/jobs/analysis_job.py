"""The analysis of two channel files: speech per channel in worker processes, then the document."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from mediaserver.analysis.channel_speech import detect_file_speech
from mediaserver.analysis.report import AnalysisConfig, build_analysis
from mediaserver.analysis.turns import Speaker
from mediaserver.analysis.vad import Span

# The finalizer writes both channel files and the stereo file over the same span from the same
# origin, so a time in a channel file is the same time in the stereo file.
CHANNEL_OFFSET_S = 0.0


async def detect_channels_speech(
    files: Mapping[Speaker, Path], config: AnalysisConfig, executor: Executor | None
) -> dict[Speaker, list[Span]]:
    """Each channel's speech spans, decoded and detected in parallel worker processes."""
    loop = asyncio.get_running_loop()
    sides = list(files)
    results = await asyncio.gather(
        *(
            loop.run_in_executor(executor, detect_file_speech, files[side], config.vad)
            for side in sides
        )
    )
    return {
        side: [Span(s.start_s + CHANNEL_OFFSET_S, s.end_s + CHANNEL_OFFSET_S) for s in spans]
        for side, (spans, _) in zip(sides, results, strict=True)
    }


async def analyze_files(
    call_id: str,
    duration_s: float,
    files: Mapping[Speaker, Path],
    config: AnalysisConfig,
    executor: Executor | None,
    word_counts: Mapping[Speaker, int] | None = None,
) -> dict[str, Any]:
    """The analysis document of a recording's channel files."""
    speech = await detect_channels_speech(files, config, executor)
    loop = asyncio.get_running_loop()
    # Cheap, but it grows with the call's length: off the event loop like the rest.
    return await loop.run_in_executor(
        executor, build_analysis, call_id, duration_s, speech, config, word_counts
    )
