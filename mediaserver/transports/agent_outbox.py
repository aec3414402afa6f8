"""What waits to be written to an agent's WebSocket, and the one task that writes it in order."""

import asyncio
from collections import deque
from collections.abc import Callable

import aiohttp
from aiohttp import web

AgentWebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse
UNTIMED = -1  # a queued message whose latency is not measured


class AgentOutbox:
    """Queued messages for one agent: caller audio may be dropped when it backs up, nothing else."""

    def __init__(
        self,
        ws: AgentWebSocket,
        *,
        max_queued_media: int,
        on_media_written: Callable[[int], None],
    ) -> None:
        self._ws = ws
        self.max_queued_media = max_queued_media
        # Told, with the caller audio's arrival time, as each timed `media` message is written.
        self._on_media_written = on_media_written
        # (is_media, text, when the caller audio arrived or UNTIMED): only media may be dropped;
        # a lost mark echo would stall the agent.
        self._queue: deque[tuple[bool, str, int]] = deque()
        self._queued_media = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self.media_sent = 0
        self.media_dropped = 0
        self.messages_sent = 0  # everything but media: marks, DTMF, stop

    def start(self, name: str) -> None:
        """Start the writer task."""
        self._writer = asyncio.create_task(self._write_loop(), name=name)

    @property
    def queued_media(self) -> int:
        """Caller audio messages waiting to be written."""
        return self._queued_media

    def put_media(self, text: str, arrival_ns: int) -> None:
        """Queue a `media` message; the oldest queued one goes if the agent has fallen behind."""
        if self._queued_media >= self.max_queued_media:
            self._drop_oldest_media()
        self._queue.append((True, text, arrival_ns))
        self._queued_media += 1
        self._wakeup.set()

    def put(self, text: str) -> None:
        """Queue a message that is never dropped (a mark echo, a key press, `stop`)."""
        self._queue.append((False, text, UNTIMED))
        self._wakeup.set()

    async def drain(self, timeout_s: float) -> None:
        """Write what is queued, then stop; what is left after `timeout_s` is dropped."""
        self._closing = True
        self._wakeup.set()
        writer = self._writer
        if writer is not None:
            # A slow agent does not hold the call's end hostage: the flush has a deadline.
            done, _ = await asyncio.wait({writer}, timeout=timeout_s)
            if not done:
                self.media_dropped += self._queued_media
        await self.stop()

    async def stop(self) -> None:
        """Stop writing now (the socket is gone or closing) and wait for the writer task."""
        self._closing = True
        writer, self._writer = self._writer, None
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    def _drop_oldest_media(self) -> None:
        """Make room by dropping the oldest queued caller audio, never a mark."""
        for index, (is_media, _, _) in enumerate(self._queue):
            if is_media:
                del self._queue[index]
                self._queued_media -= 1
                self.media_dropped += 1
                return

    async def _write_loop(self) -> None:
        """Write queued messages in order; once closing, write what is left and stop."""
        queue = self._queue
        try:
            while True:
                while queue:
                    is_media, text, arrival_ns = queue.popleft()
                    if is_media:
                        self._queued_media -= 1
                    await self._ws.send_str(text)
                    if not is_media:
                        self.messages_sent += 1
                        continue
                    self.media_sent += 1
                    if arrival_ns != UNTIMED:
                        self._on_media_written(arrival_ns)
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
        except ConnectionError:
            # The socket went away; the connection's reader sees the same and ends it.
            return
