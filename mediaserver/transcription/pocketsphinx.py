"""PocketsphinxTranscriber: offline speech recognition with the model inside the PyPI wheel."""

# The embedded default: no account, no download, no network. Its US English model is modest
# (on synthetic speech through Opus it finds about two words in three), so it suits search and a
# first look more than a verbatim record. Recognition runs per speech turn in worker processes:
# a turn is a natural utterance for the decoder, it gives segments their times, and chunks of at
# most `max_chunk_s` keep each task short, so a shutdown never waits long for a worker.

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import Executor
from functools import cache
from pathlib import Path

import numpy as np
from pocketsphinx import Decoder

from mediaserver.analysis.turns import Speaker, compute_turns
from mediaserver.analysis.vad import Span
from mediaserver.audio.ogg_opus_decode import decode_ogg_opus_file
from mediaserver.errors import TranscriptionError
from mediaserver.transcription.backend import ChannelAudio, Segment, Word

BACKEND = "pocketsphinx"
MODEL = "en-us"  # the one model the wheel ships
LANGUAGES = ("", "en", "en-us")
RATE_HZ = 16000
FRAMES_PER_S = 100  # pocketsphinx's default frame rate (-frate)
PAD_S = 0.15  # a little context around each turn helps the decoder find the first phoneme
MAX_CHUNK_S = 20.0
MAX_TASK_S = 30.0  # speech per worker task
TASKS_IN_FLIGHT = 2  # per channel: both job workers busy, the pool's queue stays short
_NOT_WORDS = re.compile(r"^(<s>|</s>|<sil>|\[.*\]|\+\+.*\+\+)$")
_ALTERNATE = re.compile(r"\(\d+\)$")  # "to(3)": the dictionary's third pronunciation


class PocketsphinxTranscriber:
    """Transcribes a channel turn by turn with pocketsphinx in worker processes."""

    def __init__(
        self,
        executor: Executor | None,
        *,
        model: str = MODEL,
        turn_gap_s: float = 0.5,
        max_chunk_s: float = MAX_CHUNK_S,
    ) -> None:
        """Recognize with `model` (only en-us exists); CPU work goes to `executor`."""
        self._executor = executor
        self._model = model
        self._turn_gap_s = turn_gap_s
        self._max_chunk_s = max_chunk_s

    @property
    def backend(self) -> str:
        """The backend's name."""
        return BACKEND

    @property
    def model(self) -> str:
        """The model used."""
        return self._model

    async def transcribe(self, channel: ChannelAudio, language: str | None) -> list[Segment]:
        """Segments of one channel, one per speech turn that has words."""
        if (language or "").lower() not in LANGUAGES:
            raise TranscriptionError(
                f"pocketsphinx has only a US English model, not {language!r}",
                code="unsupported_language",
            )
        if self._model != MODEL:
            raise TranscriptionError(
                f"pocketsphinx has only the {MODEL} model, not {self._model!r}",
                code="unsupported_model",
            )
        chunks = plan_chunks(
            channel.speech, channel.duration_s, self._turn_gap_s, self._max_chunk_s
        )
        if not chunks:
            return []
        loop = asyncio.get_running_loop()
        scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="pocketsphinx-"))
        try:
            pcm_path = scratch / "channel.s16"
            await loop.run_in_executor(self._executor, write_pcm_file, channel.path, pcm_path)
            slots = asyncio.Semaphore(TASKS_IN_FLIGHT)

            async def recognize(batch: list[Span]) -> list[list[Word]]:
                async with slots:
                    return await loop.run_in_executor(
                        self._executor, recognize_chunks, pcm_path, batch
                    )

            batches = _batches(chunks)
            results = await asyncio.gather(*(recognize(batch) for batch in batches))
            segments = []
            for batch, words_per_chunk in zip(batches, results, strict=True):
                for chunk, words in zip(batch, words_per_chunk, strict=True):
                    segment = _segment(channel.speaker, chunk, words, channel.offset_s)
                    if segment is not None:
                        segments.append(segment)
            return segments
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)


def plan_chunks(
    speech: Sequence[Span], duration_s: float, turn_gap_s: float, max_chunk_s: float
) -> list[Span]:
    """Stretches to recognize: turns, cut to `max_chunk_s`, with a little padding."""
    chunks = []
    for turn in compute_turns(speech, Speaker.CALLER, turn_gap_s):
        start_s = turn.start_s
        while start_s < turn.end_s:
            end_s = min(turn.end_s, start_s + max_chunk_s)
            chunks.append(
                Span(max(0.0, start_s - PAD_S), min(max(duration_s, end_s), end_s + PAD_S))
            )
            start_s = end_s
    return chunks


def write_pcm_file(ogg_path: Path, pcm_path: Path) -> None:
    """Decode a channel file to raw 16 kHz 16-bit PCM (a worker's task)."""
    with pcm_path.open("wb") as out:
        for block in decode_ogg_opus_file(ogg_path, RATE_HZ):
            out.write(block.tobytes())


def recognize_chunks(pcm_path: Path, chunks: Sequence[Span]) -> list[list[Word]]:
    """The words pocketsphinx hears in each chunk of a raw PCM file (a worker's task)."""
    decoder = _decoder()
    pcm = np.memmap(pcm_path, dtype=np.int16, mode="r")
    results = []
    for chunk in chunks:
        first = int(chunk.start_s * RATE_HZ)
        audio = np.asarray(pcm[first : int(chunk.end_s * RATE_HZ)])
        decoder.start_utt()
        decoder.process_raw(audio.tobytes(), full_utt=True)
        decoder.end_utt()
        words = []
        for seg in decoder.seg():
            if _NOT_WORDS.match(seg.word):
                continue
            words.append(
                Word(
                    _ALTERNATE.sub("", seg.word),
                    first / RATE_HZ + seg.start_frame / FRAMES_PER_S,
                    first / RATE_HZ + (seg.end_frame + 1) / FRAMES_PER_S,
                )
            )
        results.append(words)
    return results


@cache
def _decoder() -> Decoder:
    """One decoder per worker process (loading the model takes about half a second)."""
    return Decoder(samprate=RATE_HZ, loglevel="FATAL")


def _batches(chunks: Sequence[Span]) -> list[list[Span]]:
    """Chunks grouped into worker tasks of at most MAX_TASK_S of audio each."""
    batches: list[list[Span]] = []
    length_s = 0.0
    for chunk in chunks:
        if not batches or length_s + (chunk.end_s - chunk.start_s) > MAX_TASK_S:
            batches.append([])
            length_s = 0.0
        batches[-1].append(chunk)
        length_s += chunk.end_s - chunk.start_s
    return batches


def _segment(
    speaker: Speaker, chunk: Span, words: Sequence[Word], offset_s: float
) -> Segment | None:
    """A segment spanning a chunk's words, on the recording's time line (None if no words)."""
    if not words:
        return None
    placed = tuple(Word(w.text, w.start_s + offset_s, w.end_s + offset_s) for w in words)
    return Segment(
        speaker,
        placed[0].start_s,
        placed[-1].end_s,
        " ".join(w.text for w in placed),
        placed,
    )
