"""Messages to an agent's WebSocket: written at once while the socket keeps up, else queued."""

import asyncio
import types
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import aiohttp
from aiohttp import web

AgentWebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse
UNTIMED = -1  # a message whose latency is not measured
# (is_media, text, when the caller audio arrived or UNTIMED)
_Message = tuple[bool, str, int]


class AgentOutbox:
    """Messages for one agent: caller audio may be dropped when it backs up, nothing else."""

    # A message goes out in the call that puts it whenever nothing is waiting before it: aiohttp
    # frames an uncompressed message and hands it to the transport without suspending, unless
    # the socket's buffer is full. Waking a writer task for every 20 ms of caller audio would
    # cost a loop round trip per packet (~15 % of the agent path's CPU). A write that must wait
    # for the socket to drain is finished by the writer task, which then writes what queued up
    # behind it, in order, with the oldest caller audio dropped once `max_queued_media` wait.

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
        # Only media may be dropped; a lost mark echo would stall the agent.
        self._queue: deque[_Message] = deque()
        self._queued_media = 0
        self._unfinished: tuple[Coroutine[Any, Any, None], _Message] | None = None
        self._idle = False  # the writer task waits for work: a message may be written at once
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
        """Write a `media` message; queued behind a full socket, dropping the oldest queued."""
        if self._idle:
            self._write_now((True, text, arrival_ns))
            return
        if self._queued_media >= self.max_queued_media:
            self._drop_oldest_media()
        self._queue.append((True, text, arrival_ns))
        self._queued_media += 1
        self._wakeup.set()

    def put(self, text: str) -> None:
        """Write a message that is never dropped (a mark echo, a key press, `stop`)."""
        if self._idle:
            self._write_now((False, text, UNTIMED))
            return
        self._queue.append((False, text, UNTIMED))
        self._wakeup.set()

    async def drain(self, timeout_s: float) -> None:
        """Write what is queued, then stop; what is left after `timeout_s` is dropped."""
        self._closing = True
        self._idle = False
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
        self._idle = False
        writer, self._writer = self._writer, None
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        unfinished, self._unfinished = self._unfinished, None
        if unfinished is not None:
            unfinished[0].close()

    def _write_now(self, message: _Message) -> None:
        """Write in this call; a write that waits for the socket is left to the writer task."""
        write = self._ws.send_str(message[1])
        try:
            waiting_on = write.send(None)
        except StopIteration:
            self._written(message)
            return
        except ConnectionError:
            # The socket went away; the connection's reader sees the same and ends it.
            self._idle = False
            return
        self._idle = False
        self._unfinished = (_resume(write, waiting_on), message)
        self._wakeup.set()

    def _written(self, message: _Message) -> None:
        """Count a message handed to the socket; report a timed media message's latency."""
        is_media, _, arrival_ns = message
        if not is_media:
            self.messages_sent += 1
            return
        self.media_sent += 1
        if arrival_ns != UNTIMED:
            self._on_media_written(arrival_ns)

    def _drop_oldest_media(self) -> None:
        """Make room by dropping the oldest queued caller audio, never a mark."""
        for index, (is_media, _, _) in enumerate(self._queue):
            if is_media:
                del self._queue[index]
                self._queued_media -= 1
                self.media_dropped += 1
                return

    async def _write_loop(self) -> None:
        """Finish a waiting write, write what queued behind it; once closing, write all and stop."""
        queue = self._queue
        try:
            while True:
                if self._unfinished is not None:
                    write, message = self._unfinished
                    await write
                    self._unfinished = None
                    self._written(message)
                while queue:
                    message = queue.popleft()
                    if message[0]:
                        self._queued_media -= 1
                    await self._ws.send_str(message[1])
                    self._written(message)
                if self._closing:
                    return
                self._wakeup.clear()
                self._idle = True
                await self._wakeup.wait()
        except ConnectionError:
            return


@types.coroutine
def _resume(write: Coroutine[Any, Any, None], waiting_on: Any) -> Generator[Any, Any, None]:
    """The rest of a coroutine that was stepped once and yielded `waiting_on`, as an awaitable."""
    # What a task does with a coroutine: hand what it yields to the loop, send back the result
    # (or throw in the exception, cancellation included) until it returns.
    while True:
        try:
            value = yield waiting_on
        except BaseException as exc:
            try:
                waiting_on = write.throw(exc)
            except StopIteration:
                return
            continue
        try:
            waiting_on = write.send(value)
        except StopIteration:
            return
