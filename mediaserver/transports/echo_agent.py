"""A built-in agent that says back what the caller said, after a delay: try calls with no agent."""

import asyncio
from collections import deque
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import structlog

from mediaserver.clock import Clock, SystemClock
from mediaserver.errors import AgentUrlError
from mediaserver.excerpt import excerpt
from mediaserver.transports.link import AgentMediaSink, Pcm

log = structlog.get_logger(__name__)

ECHO_AGENT_URL = "builtin:echo"
MAX_ECHO_DELAY_MS = 10_000


def is_builtin_agent_url(url: str) -> bool:
    """Whether an agent_url names a built-in agent rather than a WebSocket to dial."""
    return url.startswith("builtin:")


def parse_echo_delay_s(url: str, default_delay_s: float) -> float:
    """The echo delay of `builtin:echo[?delay_ms=N]`; AgentUrlError for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "builtin" or parts.path != "echo" or parts.fragment:
        raise AgentUrlError(f"agent_url {excerpt(url)} names no built-in agent (try builtin:echo)")
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    if set(params) - {"delay_ms"}:
        raise AgentUrlError("builtin:echo takes one parameter, delay_ms")
    if "delay_ms" not in params:
        return default_delay_s
    text = params["delay_ms"]
    if not text.isascii() or not text.isdigit() or int(text) > MAX_ECHO_DELAY_MS:
        raise AgentUrlError(
            f"builtin:echo delay_ms must be an integer from 0 to {MAX_ECHO_DELAY_MS}, "
            f"got {excerpt(text, 20)}"
        )
    return int(text) / 1000


class EchoAgent:
    """An AgentLink that hands the caller's audio back to the call, `delay_s` later."""

    def __init__(
        self,
        sink: AgentMediaSink,
        *,
        call_id: str,
        sample_rate_hz: int,
        delay_s: float,
        clock: Clock | None = None,
    ) -> None:
        """Echo into `sink` (the call session) at the rate the session decodes caller audio to."""
        self.sample_rate_hz = sample_rate_hz
        self._clock: Clock = clock or SystemClock()
        self._log = log.bind(call_id=call_id)
        self._sink = sink
        self._delay_s = delay_s
        self._loop = asyncio.get_running_loop()
        # One timer per caller chunk (20 ms): O(1) each, fired in order since the delay is fixed.
        self._pending: deque[asyncio.TimerHandle] = deque()
        self._closed = False
        self.dtmf_received = 0

    def send_caller_audio(self, pcm: Pcm, arrival_ns: int | None = None) -> None:
        """Schedule the chunk to come back as agent speech."""
        if self._closed:
            return
        if arrival_ns is not None:  # handed over at once: that is this agent's "received"
            self._sink.on_caller_audio_sent(arrival_ns, self._clock.monotonic_ns())
        self._pending.append(self._loop.call_later(self._delay_s, self._play, pcm))

    def send_mark(self, name: str) -> None:
        """Marks need no answer: this agent never sends any."""

    def send_dtmf(self, digit: str) -> None:
        """Keys pressed are counted: an echo has no menu to choose from."""
        self.dtmf_received += 1

    def describe(self) -> dict[str, Any]:
        """The echo's settings and counters, for the API and the call's record."""
        return {"transport": "echo", "delay_s": self._delay_s, "dtmf_received": self.dtmf_received}

    async def close(self, reason: str) -> None:
        """Drop what has not been echoed yet."""
        self._closed = True
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        self._log.info("agent.echo_closed", reason=reason)

    def _play(self, pcm: Pcm) -> None:
        """One chunk's delay is over: it goes to the playout queue like an agent's speech."""
        if self._pending:
            self._pending.popleft()
        if not self._closed:
            self._sink.on_agent_audio(pcm, self._clock.monotonic_ns())
