"""Retention and legal holds as the manifest records them: when a recording expires (pure)."""

# A recording keeps its call's own `retention_days` when the call set one (POST /v1/calls), else
# the server's `recording_retention_days`, read at each sweep: shortening the setting applies to
# recordings stored before. 0 means keep forever. A recording under legal hold never expires.

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from mediaserver.settings import MAX_RETENTION_DAYS

HOLD_REASON_MAX_CHARS = 500


@dataclass(frozen=True, slots=True)
class Retention:
    """A recording's retention: how many days (0: forever), where that came from, its end."""

    days: int
    source: str  # "call" (set when the call was created) or "default" (the setting)
    expires_at: datetime | None  # None: kept forever
    hold: dict[str, Any] | None

    @property
    def is_held(self) -> bool:
        """Under legal hold: never expires, cannot be deleted."""
        return self.hold is not None

    def is_expired(self, now: datetime) -> bool:
        """Whether the sweeper deletes it now."""
        return self.hold is None and self.expires_at is not None and now >= self.expires_at

    def to_dict(self) -> dict[str, Any]:
        """What the API shows."""
        return {
            "retention_days": self.days,
            "source": self.source,
            "expires_at": None if self.expires_at is None else _format(self.expires_at),
            "hold": self.hold,
        }


def parse_retention_days(value: object, name: str = "retention_days") -> int:
    """A retention in whole days, 0 (forever) to MAX_RETENTION_DAYS; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number of days (0: keep forever)")
    if not 0 <= value <= MAX_RETENTION_DAYS:
        raise ValueError(f"{name} must be 0 (keep forever) .. {MAX_RETENTION_DAYS} days")
    return value


def build_lifecycle(retention_days: int | None) -> dict[str, Any]:
    """The manifest's lifecycle of a new recording: the call's own retention, if it set one."""
    return {} if retention_days is None else {"retention_days": retention_days}


def compute_retention(
    lifecycle: dict[str, Any], created_at: datetime, default_days: int
) -> Retention:
    """A recording's retention from its manifest's lifecycle and creation time."""
    own = lifecycle.get("retention_days")
    days, source = (own, "call") if isinstance(own, int) else (default_days, "default")
    hold = lifecycle.get("hold")
    expires_at = None if days <= 0 else created_at + timedelta(days=days)
    return Retention(days, source, expires_at, hold if isinstance(hold, dict) else None)


def build_hold(by: str, at: str, reason: str | None) -> dict[str, Any]:
    """The hold a manifest records: since when, by whom, why."""
    return {"since": at, "by": by, "reason": reason}


def with_hold(lifecycle: dict[str, Any], hold: dict[str, Any] | None) -> dict[str, Any]:
    """A lifecycle with the hold set (or, with None, released)."""
    changed = {key: value for key, value in lifecycle.items() if key != "hold"}
    if hold is not None:
        changed["hold"] = hold
    return changed


def _format(moment: datetime) -> str:
    """ISO 8601 UTC as manifests write times."""
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
