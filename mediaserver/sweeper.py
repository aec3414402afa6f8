"""The sweeper: every interval, end calls idle past the retention and retry unfinished spools."""

from collections.abc import Awaitable, Callable, Sequence

import structlog

from mediaserver.calls import CallHub
from mediaserver.clock import Clock
from mediaserver.errors import MediaServerError
from mediaserver.finalizer import Finalizer

log = structlog.get_logger(__name__)


class Sweeper:
    """Expires idle calls through the hub (transports included) and re-runs recovery."""

    def __init__(
        self,
        hub: CallHub,
        finalizer: Finalizer,
        *,
        clock: Clock,
        retention_s: float = 1800.0,
        interval_s: float = 600.0,
        housekeeping: Sequence[Callable[[], Awaitable[object]]] = (),
    ) -> None:
        # housekeeping: also run each sweep, each on its own (the recordings' and the audit
        # log's retention, mediaserver/lifecycle/retention.py and audit/audit_log.py).
        self.hub = hub
        self.finalizer = finalizer
        self.clock = clock
        self.retention_s = retention_s
        self.interval_s = interval_s
        self.calls_expired = 0
        self.housekeeping = tuple(housekeeping)

    async def sweep(self) -> list[str]:
        """One sweep; returns the ids of the calls it expired."""
        expired = self.hub.expire_idle(self.retention_s)
        self.calls_expired += len(expired)
        await self.finalizer.recover(live=self.hub.recorder.live_ids())
        log.info("recorder.swept", expired=len(expired), live_calls=len(self.hub.sessions()))
        for task in self.housekeeping:
            try:
                await task()
            except (MediaServerError, OSError):  # one failing must not keep the others from running
                log.exception(
                    "recorder.housekeeping_failed", task=getattr(task, "__qualname__", "")
                )
        return expired

    async def run(self) -> None:
        """Sweep at the configured interval until cancelled."""
        while True:
            await self.clock.sleep(self.interval_s)
            try:
                await self.sweep()
            except (MediaServerError, OSError):
                log.exception("recorder.sweep_failed")
