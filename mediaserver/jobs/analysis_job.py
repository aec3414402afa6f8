"""The analysis of two channel files: speech per channel in worker processes, then the document."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from mediaserver.analysis.channel_speech import compute_channel_spans, extract_file_features
from mediaserver.analysis.report import AnalysisConfig, build_analysis
from mediaserver.analysis.turns import Speaker
from mediaserver.analysis.vad import Span

# The finalizer writes both channel files and the stereo file over the same span from the same
# origin, so a time in a channel file is the same time in the stereo file.
CHANNEL_OFFSET_S = 0.0
PARTS_PER_CHANNEL = 2


def plan_parts(
    duration_s: float | None, frame_ms: int, parts: int
) -> list[tuple[float, float | None]]:
    """Consecutive stretches of a channel, cut on VAD frame boundaries (the last one open)."""
    if duration_s is None or parts <= 1:
        return [(0.0, None)]
    frames = int(duration_s * 1000 // frame_ms)
    cuts = [round(frames * index / parts) * frame_ms / 1000 for index in range(1, parts)]
    starts = [0.0, *cuts]
    return list(zip(starts, [*cuts, None], strict=True))


async def detect_channels_speech(
    files: Mapping[Speaker, Path],
    config: AnalysisConfig,
    executor: Executor | None,
    duration_s: float | None = None,
) -> dict[Speaker, list[Span]]:
    """Each channel's speech spans: each channel cut in parts decoded in parallel workers."""
    # A caller's channel is often all sound and the agent's mostly the recorder's silence, so
    # a worker per channel would leave one idle; parts let the pool balance them.
    loop = asyncio.get_running_loop()
    parts = plan_parts(duration_s, config.vad.frame_ms, PARTS_PER_CHANNEL)
    sides = list(files)
    features = await asyncio.gather(
        *(
            loop.run_in_executor(executor, extract_file_features, files[side], config.vad, a, b)
            for side in sides
            for a, b in parts
        )
    )
    by_side = [features[i * len(parts) : (i + 1) * len(parts)] for i in range(len(sides))]
    spans = await asyncio.gather(
        *(
            loop.run_in_executor(executor, compute_channel_spans, side_parts, config.vad)
            for side_parts in by_side
        )
    )
    return {
        side: [Span(s.start_s + CHANNEL_OFFSET_S, s.end_s + CHANNEL_OFFSET_S) for s in found]
        for side, found in zip(sides, spans, strict=True)
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
    speech = await detect_channels_speech(files, config, executor, duration_s)
    loop = asyncio.get_running_loop()
    # Cheap, but it grows with the call's length: off the event loop like the rest.
    return await loop.run_in_executor(
        executor, build_analysis, call_id, duration_s, speech, config, word_counts
    )
