"""AuditLog: records events durably (group commit), answers queries, expires old days."""

# record() returns once the event is durable: on local disk, written and fsynced; in a store, the
# batch object confirmed. One writer task commits whatever has queued up meanwhile as one batch,
# so under load many requests share one fsync (or one object) instead of each paying for its own.
# A batch that cannot be written fails its waiters with AuditError (the API then answers 503 where
# it has not answered yet); it is not retried, so no event is ever written twice.

import asyncio
import re
import secrets
import socket
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import structlog

from mediaserver.audit.event import AuditEvent, AuditQuery, build_event_id
from mediaserver.clock import Clock
from mediaserver.errors import AuditError
from mediaserver.recording.manifest import format_utc

log = structlog.get_logger(__name__)

MAX_QUERY_LIMIT = 10_000
_NODE_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")


class AuditSink(Protocol):
    """Where audit events are kept: local files or a shared object store."""

    async def append(self, events: Sequence[AuditEvent]) -> None:
        """Write a batch durably."""
        ...

    async def days(self) -> list[date]:
        """Every UTC day holding events, oldest first."""
        ...

    async def read_day(self, day: date) -> list[AuditEvent]:
        """One day's events, in id order."""
        ...

    async def delete_day(self, day: date) -> None:
        """Remove one day's events."""
        ...


def build_node_name(hostname: str | None = None) -> str:
    """This process's name in event ids and batch keys: host name and a random suffix."""
    host = _NODE_UNSAFE.sub("-", hostname if hostname is not None else socket.gethostname())
    return f"{host.strip('-')[:40] or 'node'}-{secrets.token_hex(3)}"


class AuditLog:
    """Appends events through a sink; one writer task commits them in batches."""

    def __init__(
        self, sink: AuditSink, *, clock: Clock, node: str, retention_days: int = 0
    ) -> None:
        """Write to `sink`; keep `retention_days` whole days (0: forever)."""
        self.sink = sink
        self.clock = clock
        self.node = node
        self.retention_days = retention_days
        self.events_written = 0
        self.write_failures = 0
        self._sequence = 0
        self._pending: list[tuple[AuditEvent, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the writer task."""
        self._writer = asyncio.create_task(self._write_loop(), name="audit.writer")

    async def close(self) -> None:
        """Let the writer commit what is queued, then stop it."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._pending:  # never started, or its task died: commit here
            await self._commit()

    async def record(
        self,
        *,
        actor: str,
        action: str,
        recording_id: str | None = None,
        remote: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditEvent:
        """Record one event; returns once it is durable (AuditError if it could not be)."""
        event = self.build_event(
            actor=actor,
            action=action,
            recording_id=recording_id,
            remote=remote,
            status=status,
            details=details,
        )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((event, future))
        self._wake.set()
        await future
        return event

    def build_event(
        self,
        *,
        actor: str,
        action: str,
        recording_id: str | None,
        remote: str | None,
        status: int | None,
        details: dict[str, Any] | None,
    ) -> AuditEvent:
        """A new event stamped with the clock, this node and the next sequence number."""
        at_ns = self.clock.wall_ns()
        self._sequence += 1
        return AuditEvent(
            id=build_event_id(at_ns, self.node, self._sequence),
            at=format_utc(at_ns),
            actor=actor,
            action=action,
            recording_id=recording_id,
            remote=remote,
            status=status,
            node=self.node,
            details=dict(details or {}),
        )

    async def query(self, query: AuditQuery) -> tuple[list[AuditEvent], str | None]:
        """Events the query selects, oldest first, and the cursor of the next page (or None)."""
        selected: list[AuditEvent] = []
        for day in await self.sink.days():
            if not query.accepts_day(day):
                continue
            selected += [event for event in await self.sink.read_day(day) if query.accepts(event)]
            if len(selected) > query.limit:
                break
        selected.sort(key=lambda event: event.id)
        if len(selected) > query.limit:
            page = selected[: query.limit]
            return page, page[-1].id
        return selected, None

    async def expire(self) -> list[date]:
        """Delete the days older than the retention; returns them."""
        if self.retention_days <= 0:
            return []
        today = datetime.fromtimestamp(self.clock.wall_ns() / 1e9, UTC).date()
        oldest_kept = today - timedelta(days=self.retention_days)
        expired = [day for day in await self.sink.days() if day < oldest_kept]
        for day in expired:
            await self.sink.delete_day(day)
        if expired:
            log.info("audit.expired", days=[day.isoformat() for day in expired])
        return expired

    async def _write_loop(self) -> None:
        """Commit queued events whenever there are some."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                await self._commit()
            if self._closing:
                return

    async def _commit(self) -> None:
        """Write everything queued as one batch and tell its waiters."""
        batch, self._pending = self._pending, []
        try:
            await self.sink.append([event for event, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                if not future.done():
                    future.set_exception(AuditError("the audit log was stopped mid-write"))
            raise
        except Exception as exc:  # every failure is the waiters' to answer
            self.write_failures += 1
            log.error("audit.write_failed", events=len(batch), error=str(exc))
            for _, future in batch:
                if not future.done():
                    future.set_exception(AuditError(f"the audit log cannot be written: {exc}"))
            return
        self.events_written += len(batch)
        for _, future in batch:
            if not future.done():
                future.set_result(None)
