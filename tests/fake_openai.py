"""An OpenAI-compatible transcription server on loopback, for the tests of the openai backend."""

# It checks requests as OpenAI does: the bearer key, a known model, a file whose name the API
# accepts (.ogg, not .opus) and that is Ogg Opus. It "transcribes" by finding where the audio
# is loud (PyAV decode, 10 ms RMS): segments there, with text naming the file, so a test can
# check that segments come back on the right channel at the right times. Answers can be
# scripted per request: "ok", "429", "500", "400" (a permanent error), "hold" (wait for release).

import asyncio
import io
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiohttp import web

API_KEY = "sk-test-0123456789"
MODELS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
LOUD_RMS = 0.01
GAP_S = 0.5


@dataclass(slots=True)
class Seen:
    """One request as the server saw it."""

    authorization: str
    model: str
    filename: str
    size_bytes: int
    response_format: str
    language: str | None
    answered: int


@dataclass(slots=True)
class FakeOpenAI:
    """The server: its URL, scripted answers and what it has seen."""

    script: deque[str] = field(default_factory=deque)
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    base_url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen on 127.0.0.1, a free port."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"

    async def stop(self) -> None:
        """Stop listening."""
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _transcribe(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        model = str(form.get("model", ""))
        response_format = str(form.get("response_format", "json"))
        language = form.get("language")
        authorization = request.headers.get("Authorization", "")
        filename = getattr(upload, "filename", "")
        data = upload.file.read() if isinstance(upload, web.FileField) else b""
        action = self.script.popleft() if self.script else "ok"
        seen = Seen(
            authorization,
            model,
            filename,
            len(data),
            response_format,
            None if language is None else str(language),
            0,
        )
        self.seen.append(seen)
        if authorization != f"Bearer {API_KEY}":
            return _error(seen, 401, "Incorrect API key provided.", "invalid_api_key")
        if model not in MODELS:
            return _error(seen, 404, f"The model `{model}` does not exist.", "model_not_found")
        if not filename.endswith(".ogg") or not data.startswith(b"OggS") or b"OpusHead" not in data:
            return _error(seen, 400, "Unsupported file format", "invalid_value")
        if action == "hold":
            self.holding.set()
            await self.release.wait()
        if action == "429":
            return _error(
                seen,
                429,
                "Rate limit reached for requests",
                "rate_limit_exceeded",
                headers={"Retry-After": "0.1"},
            )
        if action == "500":
            return _error(seen, 500, "The server had an error", "server_error")
        if action == "400":
            return _error(seen, 400, "Audio file is too short to transcribe", "audio_too_short")
        seen.answered = 200
        stem = filename.removesuffix(".ogg")
        spans = _loud_spans(data)
        if response_format != "verbose_json":
            return web.json_response({"text": f"{stem} said something"})
        segments, words = [], []
        for index, (start_s, end_s) in enumerate(spans):
            text = f"{stem} part {index}"
            segments.append({"id": index, "start": start_s, "end": end_s, "text": " " + text})
            tokens = text.split()
            step = (end_s - start_s) / len(tokens)
            words += [
                {"word": t, "start": start_s + k * step, "end": start_s + (k + 1) * step}
                for k, t in enumerate(tokens)
            ]
        body: dict[str, Any] = {
            "task": "transcribe",
            "language": "english",
            "duration": spans[-1][1] if spans else 0.0,
            "text": " ".join(s["text"].strip() for s in segments),
            "segments": segments,
            "words": words,
        }
        return web.json_response(body)


def _error(
    seen: Seen, status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> web.Response:
    """An error shaped as OpenAI's API shapes them."""
    seen.answered = status
    return web.json_response(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        },
        status=status,
        headers=headers,
    )


def _loud_spans(data: bytes) -> list[tuple[float, float]]:
    """Where the decoded audio is loud (10 ms RMS), gaps under GAP_S closed; file time."""
    chunks = []
    with av.open(io.BytesIO(data)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        for frame in container.decode(audio=0):
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    if not chunks:
        return []
    pcm = np.concatenate(chunks)
    count = pcm.size // 160
    rms = np.sqrt(np.mean(pcm[: count * 160].reshape(count, 160) ** 2, axis=1))
    loud = np.flatnonzero(rms > LOUD_RMS)
    spans: list[list[float]] = []
    for index in loud:
        start_s, end_s = index / 100, (index + 1) / 100
        if spans and start_s - spans[-1][1] < GAP_S:
            spans[-1][1] = end_s
        else:
            spans.append([start_s, end_s])
    return [(round(a, 2), round(b, 2)) for a, b in spans]
