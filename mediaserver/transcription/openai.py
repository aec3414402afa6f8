"""OpenAITranscriber: OpenAI's transcription API (or any compatible server) through its SDK."""

# - The official `openai` SDK reads OPENAI_API_KEY and OPENAI_BASE_URL, so any OpenAI-compatible
#   server works. The SDK's own retries are off: this module retries 429, 5xx, timeouts and lost
#   connections with exponential backoff (honouring Retry-After), `max_attempts` tries in all,
#   and gives up at once on any other error, showing the API's own message.
# - The API tells formats by file name: Ogg Opus is sent as `<speaker>-<n>.ogg` (a `.opus` name is
#   refused). Channels over `max_upload_bytes` (the API takes 25 MB) are sent in pieces cut at
#   packet boundaries, each a valid Ogg Opus stream, never re-encoded.
# - Models that give segment timestamps (whisper-1, with verbose_json) are sent each channel
#   whole; the others (gpt-4o-transcribe, ...) are sent one VAD turn at a time, and their text is
#   placed on the turn. A channel without speech is not sent at all.
# - Within one job each piece is sent until it succeeds or fails for good, once: a piece that
#   was answered is never sent again.

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Mapping
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import openai
import structlog

from mediaserver.analysis.turns import Speaker, compute_turns
from mediaserver.audio.ogg_opus_cut import OggPiece, cut_ogg_opus_file, split_ogg_opus_file
from mediaserver.errors import TranscriptionError
from mediaserver.transcription.backend import ChannelAudio, Segment, Word

log = structlog.get_logger(__name__)

BACKEND = "openai"
DEFAULT_MODEL = "whisper-1"
OGG_CONTENT_TYPE = "audio/ogg"
TURN_PAD_S = 0.2  # context around a turn sent on its own
MAX_RETRY_AFTER_S = 60.0
# Answers worth trying again: rate limits, server trouble (RFC 9110 §15.6), timeouts.
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


def gives_timestamps(model: str) -> bool:
    """True for models whose verbose_json answer has segment and word times."""
    return model.startswith("whisper")


class OpenAITranscriber:
    """Transcribes a channel with OpenAI's transcription endpoint."""

    def __init__(
        self,
        executor: Executor | None,
        *,
        model: str = DEFAULT_MODEL,
        timeout_s: float = 300.0,
        max_attempts: int = 5,
        max_upload_bytes: int = 25_000_000,
        turn_gap_s: float = 0.5,
        backoff_s: float = 1.0,
    ) -> None:
        """Send audio with the SDK's client (configured from the environment)."""
        self._executor = executor
        self._model = model
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._max_upload_bytes = max_upload_bytes
        self._turn_gap_s = turn_gap_s
        self._backoff_s = backoff_s
        self.requests_sent = 0

    @property
    def backend(self) -> str:
        """The backend's name."""
        return BACKEND

    @property
    def model(self) -> str:
        """The model used."""
        return self._model

    async def transcribe(self, channel: ChannelAudio, language: str | None) -> list[Segment]:
        """Segments of one channel on the recording's time line."""
        if not channel.speech:
            return []
        try:
            client = openai.AsyncOpenAI(max_retries=0, timeout=self._timeout_s)
        except openai.OpenAIError as exc:
            raise TranscriptionError(
                f"the openai backend is not configured: {exc}", code="not_configured"
            ) from None
        scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="openai-"))
        try:
            if gives_timestamps(self._model):
                return await self._by_pieces(client, channel, language, scratch)
            return await self._by_turns(client, channel, language, scratch)
        finally:
            await client.close()
            await asyncio.to_thread(shutil.rmtree, scratch, True)

    async def _by_pieces(
        self,
        client: openai.AsyncOpenAI,
        channel: ChannelAudio,
        language: str | None,
        scratch: Path,
    ) -> list[Segment]:
        """The channel whole (or in pieces under the size limit), with the API's timestamps."""
        loop = asyncio.get_running_loop()
        pieces = await loop.run_in_executor(
            self._executor,
            _split,
            channel.path,
            scratch,
            self._max_upload_bytes,
        )
        segments: list[Segment] = []
        for index, piece in enumerate(pieces):
            answer = await self._send(
                client, piece, f"{channel.speaker.value}-{index}.ogg", language, verbose=True
            )
            segments += _timed_segments(channel.speaker, answer, channel.offset_s + piece.offset_s)
        return segments

    async def _by_turns(
        self,
        client: openai.AsyncOpenAI,
        channel: ChannelAudio,
        language: str | None,
        scratch: Path,
    ) -> list[Segment]:
        """One request per speech turn; the text is placed on the turn."""
        turns = compute_turns(channel.speech, channel.speaker, self._turn_gap_s)
        spans = [
            (max(0.0, t.start_s - TURN_PAD_S), min(channel.duration_s, t.end_s + TURN_PAD_S))
            for t in turns
        ]
        loop = asyncio.get_running_loop()
        pieces = await loop.run_in_executor(
            self._executor, cut_ogg_opus_file, channel.path, spans, scratch
        )
        segments = []
        for index, (turn, piece) in enumerate(zip(turns, pieces, strict=True)):
            answer = await self._send(
                client, piece, f"{channel.speaker.value}-{index}.ogg", language, verbose=False
            )
            text = str(answer.get("text", "")).strip()
            if text:
                segments.append(
                    Segment(
                        channel.speaker,
                        turn.start_s + channel.offset_s,
                        turn.end_s + channel.offset_s,
                        text,
                    )
                )
        return segments

    async def _send(
        self,
        client: openai.AsyncOpenAI,
        piece: OggPiece,
        name: str,
        language: str | None,
        *,
        verbose: bool,
    ) -> dict[str, Any]:
        """One transcription request, retried while the error is worth retrying."""
        data = await asyncio.to_thread(piece.path.read_bytes)
        options: dict[str, Any] = {"model": self._model}
        if language:
            options["language"] = language.split("-")[0]
        if verbose:
            options["response_format"] = "verbose_json"
            options["timestamp_granularities"] = ["segment", "word"]
        attempt = 0
        while True:
            attempt += 1
            self.requests_sent += 1
            try:
                response = await client.audio.transcriptions.create(
                    file=(name, data, OGG_CONTENT_TYPE), **options
                )
            except openai.APIStatusError as exc:
                api_message = _api_message(exc)
                retry = exc.status_code in RETRYABLE_STATUSES and attempt < self._max_attempts
                log.warning(
                    "transcription.request_failed",
                    backend=BACKEND,
                    status=exc.status_code,
                    error=api_message,
                    attempt=attempt,
                    retry=retry,
                )
                if not retry:
                    raise TranscriptionError(
                        f"OpenAI API answered {exc.status_code}: {api_message}",
                        details={
                            "backend": BACKEND,
                            "http_status": exc.status_code,
                            "api_message": api_message,
                            "attempts": attempt,
                        },
                    ) from None
                await asyncio.sleep(self._delay_s(attempt, exc.response.headers))
                continue
            except openai.APIConnectionError as exc:  # includes timeouts
                if attempt >= self._max_attempts:
                    raise TranscriptionError(
                        f"OpenAI API unreachable after {attempt} attempts: {exc}",
                        code="transcription_unavailable",
                        details={"backend": BACKEND, "attempts": attempt},
                    ) from None
                await asyncio.sleep(self._delay_s(attempt, {}))
                continue
            return _as_dict(response)

    def _delay_s(self, attempt: int, headers: Mapping[str, str]) -> float:
        """How long to wait before the next attempt: Retry-After if given, else backoff."""
        retry_after = headers.get("retry-after")
        if retry_after is not None:
            try:
                return min(MAX_RETRY_AFTER_S, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return float(self._backoff_s * 2 ** (attempt - 1))


def _split(path: Path, scratch: Path, max_bytes: int) -> list[OggPiece]:
    """The channel file itself if small enough, else pieces (a worker's task)."""
    size = path.stat().st_size
    if size <= max_bytes:
        return [OggPiece(path, 0.0, 0.0)]
    return split_ogg_opus_file(path, scratch, max_bytes=max_bytes)


def _timed_segments(speaker: Speaker, answer: Mapping[str, Any], offset_s: float) -> list[Segment]:
    """Segments of a verbose_json answer, words assigned to the segment they fall in."""
    words = [
        Word(str(w["word"]).strip(), float(w["start"]) + offset_s, float(w["end"]) + offset_s)
        for w in answer.get("words") or ()
    ]
    segments = []
    for raw in answer.get("segments") or ():
        start_s, end_s = float(raw["start"]) + offset_s, float(raw["end"]) + offset_s
        inside = tuple(w for w in words if start_s <= w.start_s < end_s) if words else None
        segments.append(Segment(speaker, start_s, end_s, str(raw["text"]).strip(), inside))
    return segments


def _as_dict(response: object) -> dict[str, Any]:
    """The SDK's answer object as plain data."""
    dump = getattr(response, "model_dump", None)
    if callable(dump):
        data = dump()
        if isinstance(data, dict):
            return data
    if isinstance(response, str):
        return {"text": response}
    return {"text": str(getattr(response, "text", ""))}


def _api_message(exc: openai.APIStatusError) -> str:
    """The API's own explanation of an error."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return exc.message
