"""The live calls of one server: their sessions, the one 20 ms pacer, the tasks they spawn."""

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from mediaserver.agent_bridge import DEFAULT_CALLER_BACKLOG_MS, DEFAULT_PARTIAL_FRAME_WAIT_MS
from mediaserver.audio.transcoder import DEFAULT_LIVE_COMPLEXITY
from mediaserver.clock import Clock, SystemClock
from mediaserver.errors import CallStateError, DrainingError, UnknownCallError
from mediaserver.latency_histogram import RelayLatency
from mediaserver.recorder import Recorder
from mediaserver.recording.call import EndReason
from mediaserver.recording.channel import Codec
from mediaserver.session import CallSession

log = structlog.get_logger(__name__)

FRAME_NS = 20_000_000
# Each call is ticked in one of four phases of the 20 ms grid, 5 ms apart, and new calls join the
# emptiest phase. Ticked all at once, a round of N calls encodes N frames back to back: the last
# call's frame leaves that much later, and caller packets arriving meanwhile wait behind it.
# Ticked in phases, each wake-up does a quarter of the work. (An agent frame waits for its own
# call's next tick either way: 0-20 ms, whichever phase the call is in.)
PHASES = 4
PHASE_NS = FRAME_NS // PHASES
# The longest the pacer ticks sessions before it lets the loop read packets and requests in
# between: a budget of time, not of sessions. A round of cheap ticks runs without a yield (each
# waits behind a whole iteration of I/O); a costly one still yields every millisecond.
# A pacer catching up gives each step a fresh slice: it runs ahead of reads, which wait in the
# kernel with their arrival stamps (carrying one slice across the steps measured worse: more
# late frames and a higher loop lag, the pacer falling further behind at each yield).
SLICE_NS = 1_000_000
# A late pacer plays the ticks it missed back to back, up to this many (200 ms: a preempted
# process or a slow callback; the caller's jitter buffer absorbs the burst and real time is
# restored at once). Beyond, the missed audio is dropped and counted: a stalled loop must not
# leave the agent permanently behind the caller.
MAX_CATCH_UP_TICKS = 10

Admission = Callable[[int], None]  # raises OverloadedError to refuse a call; given live calls


def _admit_all(live_calls: int) -> None:
    """No admission limit."""


class CallHub:
    """Owns every live CallSession, the pacer that plays their agents, and the tasks they start."""

    def __init__(
        self,
        recorder: Recorder,
        *,
        clock: Clock | None = None,
        admission: Admission = _admit_all,
        end_call_on_agent_exit: bool = False,
        agent_complexity: int = DEFAULT_LIVE_COMPLEXITY,
        send_silence: bool = True,
        caller_backlog_ms: float = DEFAULT_CALLER_BACKLOG_MS,
        partial_frame_wait_ms: int = DEFAULT_PARTIAL_FRAME_WAIT_MS,
    ) -> None:
        self.recorder = recorder
        self.send_silence = send_silence
        self.caller_backlog_ms = caller_backlog_ms
        self.partial_frame_wait_ms = partial_frame_wait_ms
        self.latency = RelayLatency()  # every call's, since start: what /metrics shows
        self.clock: Clock = clock or SystemClock()
        self.end_call_on_agent_exit = end_call_on_agent_exit
        self.agent_complexity = agent_complexity
        self._admission = admission
        self._sessions: dict[str, CallSession] = {}
        # The sessions ticked in each phase of the grid, by call id (see PHASES).
        self._phases: list[dict[str, CallSession]] = [{} for _ in range(PHASES)]
        self._tasks: set[asyncio.Task[None]] = set()
        self._pacer: asyncio.Task[None] | None = None
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.pacer_late_ticks = 0
        self.pacer_skipped_ticks = 0
        self._ended_drops: Counter[str] = Counter()
        self._ended_packets: Counter[str] = Counter()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the pacer."""
        self._pacer = asyncio.create_task(self._pace(), name="calls.pacer")

    @property
    def draining(self) -> bool:
        """Whether the hub has stopped taking calls (shutdown has begun)."""
        return self._draining

    def drain(self) -> None:
        """Take no new call from now on; live calls go on."""
        self._draining = True

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call is live, up to the timeout; True if none is."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, *, drain_timeout_s: float = 30.0) -> None:
        """End every call that is still live and wait for their transports to close."""
        self._draining = True
        for session in list(self._sessions.values()):
            session.end(EndReason.SHUTDOWN)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=drain_timeout_s)
        if self._pacer is not None:
            self._pacer.cancel()
            await asyncio.gather(self._pacer, return_exceptions=True)
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
        retention_days: int | None = None,
    ) -> CallSession:
        """Open a call and start recording it, unless the node takes no call now."""
        if self._draining:
            raise DrainingError("the server is shutting down")
        self._admission(len(self._sessions))
        if call_id is not None and call_id in self._sessions:
            raise CallStateError(f"call {call_id} already exists")
        recording = self.recorder.open_call(
            call_id,
            caller_codec=caller_codec,
            agent_codec=caller_codec,
            metadata=metadata,
            retention_days=retention_days,
        )
        session = CallSession(
            recording=recording,
            caller_codec=caller_codec,
            spawn=self.spawn,
            on_closed=self._forget,
            end_call_on_agent_exit=self.end_call_on_agent_exit,
            agent_complexity=self.agent_complexity,
            send_silence=self.send_silence,
            caller_backlog_ms=self.caller_backlog_ms,
            partial_frame_wait_ms=self.partial_frame_wait_ms,
            latency=RelayLatency(self.latency),
            metadata=metadata,
            clock=self.clock,
        )
        self._sessions[session.call_id] = session
        min(self._phases, key=len)[session.call_id] = session
        self._idle.clear()
        return session

    def discard(self, session: CallSession) -> None:
        """Drop a call whose setup failed before any media: no recording is made."""
        self._remove(session)
        self.recorder.discard(session.recording)
        if not self._sessions:
            self._idle.set()

    def get(self, call_id: str) -> CallSession:
        """A live call by id."""
        try:
            return self._sessions[call_id]
        except KeyError:
            raise UnknownCallError(f"no live call {call_id}") from None

    def sessions(self) -> list[CallSession]:
        """Every live call."""
        return list(self._sessions.values())

    def media_calls(self) -> int:
        """Live calls whose caller's audio has started: what the node's CPU is spent on."""
        return sum(1 for session in self._sessions.values() if session.stats.caller_packets)

    def expire_idle(self, retention_s: float) -> list[str]:
        """End calls idle past the retention (the sweeper asks); returns their ids."""
        expired = self.recorder.idle_calls(retention_s)
        for call_id in expired:
            log.warning("call.expired", call_id=call_id)
            session = self._sessions.get(call_id)
            if session is not None:
                session.end(EndReason.EXPIRED)
            else:  # recorded without a session (the CLI's demo, say)
                recording = self.recorder.get_call(call_id)
                for channel in list(recording.open_channels):
                    recording.end(channel, EndReason.EXPIRED)
        return expired

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
        self._remove(session)
        self._ended_drops.update(session.drop_counts())
        self._ended_packets.update(session.packet_counts())
        if not self._sessions:
            self._idle.set()

    def _remove(self, session: CallSession) -> None:
        """Take a session out of the live calls and out of its phase."""
        self._sessions.pop(session.call_id, None)
        for phase in self._phases:
            phase.pop(session.call_id, None)

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

    # -- the pacer ------------------------------------------------------------------------------

    async def _pace(self) -> None:
        """Tick each phase's sessions every 20 ms on an absolute schedule (no drift, no timers)."""
        clock = self.clock
        started_ns = clock.monotonic_ns()
        step = PHASES - 1  # steps of 5 ms: the first is tick 1, phase 0, 20 ms after the start
        while True:
            step += 1
            due_ns = started_ns + step * PHASE_NS
            now_ns = clock.monotonic_ns()
            if due_ns > now_ns:
                await clock.sleep((due_ns - now_ns) / 1e9)
            else:
                behind = (now_ns - due_ns) // PHASE_NS
                if behind >= PHASES and step % PHASES == 0:
                    self.pacer_late_ticks += 1  # a whole frame late, counted once per round
                if behind > MAX_CATCH_UP_TICKS * PHASES:
                    # Fell far behind (a stalled loop): the missed ticks' audio is dropped.
                    skipped = int(behind - MAX_CATCH_UP_TICKS * PHASES)
                    self._skip(step, skipped)
                    step += skipped
            tick, phase = divmod(step, PHASES)
            await self._tick_all(tick, list(self._phases[phase].values()))

    def _skip(self, first_step: int, steps: int) -> None:
        """The pacer missed `steps` steps from `first_step` on: each phase skips its ticks."""
        self.pacer_skipped_ticks += -(-steps // PHASES)
        for offset in range(min(steps, PHASES)):
            ticks = (steps - offset + PHASES - 1) // PHASES  # steps of this phase among them
            for session in list(self._phases[(first_step + offset) % PHASES].values()):
                session.skip(ticks)

    async def _tick_all(self, tick: int, sessions: list[CallSession]) -> None:
        """Tick sessions once, yielding to the loop after each slice of `SLICE_NS`."""
        clock = self.clock
        slice_ends_ns = clock.monotonic_ns() + SLICE_NS
        for session in sessions:
            if clock.monotonic_ns() >= slice_ends_ns:
                # Each tick encodes a frame: let packets and requests in between slices,
                # so a round over hundreds of calls never holds the loop for milliseconds.
                await asyncio.sleep(0)
                slice_ends_ns = clock.monotonic_ns() + SLICE_NS
                if session.closed:
                    continue
            try:
                session.tick(tick)
            except Exception:  # one broken call must not stop the others' audio
                log.exception("calls.tick_failed", call_id=session.call_id)
                session.end(EndReason.INTERNAL_ERROR)
