"""The live calls of one server: their sessions, the shared 20 ms pacer, the tasks they spawn."""

import asyncio
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import structlog

from mediaserver.errors import CallStateError, UnknownCallError
from mediaserver.recorder import Recorder, new_call_id
from mediaserver.recording.call import EndReason
from mediaserver.recording.channel import Codec
from mediaserver.session import CallSession

log = structlog.get_logger(__name__)

FRAME_S = 0.020
TICKS_PER_SLICE = 8  # sessions ticked between two yields to the event loop


class CallHub:
    """Owns every live CallSession and every task they start; start() and close() pair up."""

    def __init__(self, recorder: Recorder, *, end_call_on_agent_exit: bool = False) -> None:
        self.recorder = recorder
        self.end_call_on_agent_exit = end_call_on_agent_exit
        self._sessions: dict[str, CallSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pacer: asyncio.Task[None] | None = None
        self.pacer_late_ticks = 0
        self._ended_drops: Counter[str] = Counter()
        self._ended_packets: Counter[str] = Counter()
        recorder.on_expire = self._expire

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the pacer."""
        self._pacer = asyncio.create_task(self._pace(), name="calls.pacer")

    async def close(self, *, drain_timeout_s: float = 30.0) -> None:
        """End every call and wait for their transports to close."""
        for session in list(self._sessions.values()):
            session.end("shutdown", EndReason.SHUTDOWN)
        if self._pacer is not None:
            self._pacer.cancel()
            await asyncio.gather(self._pacer, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=drain_timeout_s)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- calls ----------------------------------------------------------------------------------

    def create(
        self,
        call_id: str | None = None,
        *,
        caller_codec: Codec = Codec.OPUS,
        metadata: dict[str, object] | None = None,
    ) -> CallSession:
        """Open a call and start recording it."""
        call_id = call_id or new_call_id()
        if call_id in self._sessions:
            raise CallStateError(f"call {call_id} already exists")
        session = CallSession(
            call_id=call_id,
            recorder=self.recorder,
            caller_codec=caller_codec,
            end_call_on_agent_exit=self.end_call_on_agent_exit,
            spawn=self.spawn,
            on_closed=self._forget,
            metadata=metadata,
        )
        self._sessions[call_id] = session
        return session

    def discard(self, session: CallSession) -> None:
        """Drop a call whose setup failed before any media: no recording is made."""
        self._sessions.pop(session.call_id, None)
        self.recorder.discard_call(session.call_id)

    def get(self, call_id: str) -> CallSession:
        """A live call by id."""
        try:
            return self._sessions[call_id]
        except KeyError:
            raise UnknownCallError(f"no live call {call_id}") from None

    def sessions(self) -> list[CallSession]:
        """Every live call."""
        return list(self._sessions.values())

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine as a task this hub owns (awaited at close)."""
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """Forget a finished task; log what it raised."""
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("calls.task_failed", error=repr(exc))

    def _forget(self, session: CallSession) -> None:
        """Drop a session whose legs have both ended, keeping its counts."""
        self._sessions.pop(session.call_id, None)
        self._ended_drops.update(session.drop_counts())
        self._ended_packets.update(session.packet_counts())

    def packet_counts(self) -> dict[str, int]:
        """Packets received from callers and sent to them since start."""
        total = Counter(self._ended_packets)
        for session in self._sessions.values():
            total.update(session.packet_counts())
        return dict(total)

    def drop_counts(self) -> dict[str, int]:
        """Packets dropped inside the server since start, by reason."""
        total = Counter(self._ended_drops)
        for session in self._sessions.values():
            total.update(session.drop_counts())
        return dict(total)

    def _expire(self, call_id: str) -> None:
        """End an idle call for the recorder's sweeper, transports included."""
        session = self._sessions.get(call_id)
        if session is None:
            self.recorder.end_call(call_id, EndReason.EXPIRED)
        else:
            session.end("expired", EndReason.EXPIRED)

    async def _pace(self) -> None:
        """Tick every session every 20 ms on an absolute schedule (no drift, no per-call timers)."""
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            next_tick += FRAME_S
            delay = next_tick - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -FRAME_S:
                self.pacer_late_ticks += 1
                next_tick = loop.time()  # fell behind by more than a frame: do not burst
            now_ns = time.monotonic_ns()
            for index, session in enumerate(list(self._sessions.values())):
                if index and index % TICKS_PER_SLICE == 0:
                    # Each tick encodes a frame: let packets and requests in between slices,
                    # so a round over hundreds of calls never holds the loop for milliseconds.
                    await asyncio.sleep(0)
                    if session.closed:
                        continue
                try:
                    session.tick(now_ns)
                except Exception:  # one broken call must not stop the others' audio
                    log.exception("calls.tick_failed", call_id=session.call_id)
                    session.end("internal_error")
