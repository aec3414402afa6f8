"""Retention mirrored into a GCS bucket: lifecycle rules, and each object's Custom-Time."""

# With gcs_apply_lifecycle the bucket itself deletes what the sweeper would, as a backstop for
# when no server runs (README, "Retention"):
# - rule 1 deletes objects under recordings/ one day after their Custom-Time (daysSinceCustomTime),
#   and the sweep sets the Custom-Time of each recording's objects but its manifest to the
#   recording's expiry. Objects with no Custom-Time never match: recordings kept forever, objects
#   written since the last mark (a new transcript) until the next sweep marks them, and manifests
#   (patching one would change its update time, which the sweep watches for changes): a manifest
#   the bucket left behind is deleted, and audited, by the next server's sweep. Per-call retention
#   works because the time is per object, not one age for the whole bucket.
# - a legal hold moves Custom-Time to 9999-12-31: the rule cannot reach a held recording. GCS only
#   ever moves Custom-Time later, so a released recording keeps that date and is left to the
#   sweeper (which deletes it on time and audits it); so is any recording whose retention was
#   shortened after it was marked.
# - rule 2 deletes audit batches under audit/ one day after the audit retention.
# Rules of the bucket's with other prefixes are kept as they are.

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import structlog

from mediaserver.audit.store_sink import AUDIT_PREFIX
from mediaserver.errors import ObjectNotFoundError, StorageError
from mediaserver.lifecycle.policy import Retention
from mediaserver.storage_backends.gcs import GcsStore
from mediaserver.storage_backends.keys import RECORDINGS_PREFIX

log = structlog.get_logger(__name__)

HELD_UNTIL = datetime(9999, 12, 31, tzinfo=UTC)
GRACE_DAYS = 1  # the sweeper deletes (and audits) first; the bucket only what it left


def build_lifecycle_rules(
    existing: Iterable[dict[str, Any]], audit_retention_days: int
) -> list[dict[str, Any]]:
    """The bucket's rules: its own with other prefixes, then ours for recordings and audit."""
    ours = {RECORDINGS_PREFIX, AUDIT_PREFIX}
    kept = [
        rule
        for rule in existing
        if not set(rule.get("condition", {}).get("matchesPrefix", ())) & ours
    ]
    rules = [
        *kept,
        {
            "action": {"type": "Delete"},
            "condition": {"daysSinceCustomTime": GRACE_DAYS, "matchesPrefix": [RECORDINGS_PREFIX]},
        },
    ]
    if audit_retention_days > 0:
        rules.append(
            {
                "action": {"type": "Delete"},
                "condition": {
                    "age": audit_retention_days + GRACE_DAYS,
                    "matchesPrefix": [AUDIT_PREFIX],
                },
            }
        )
    return rules


def compute_custom_time(retention: Retention) -> datetime | None:
    """The Custom-Time a recording's objects get: its expiry, far away while held, else none."""
    if retention.is_held:
        return HELD_UNTIL
    return retention.expires_at


class GcsLifecycleMirror:
    """Keeps a bucket's rules and its recordings' Custom-Times in step with the retention."""

    def __init__(self, store: GcsStore) -> None:
        """Mirror into `store`'s bucket."""
        self.store = store

    async def apply_bucket_rules(self, audit_retention_days: int) -> list[dict[str, Any]]:
        """Install our rules beside the bucket's others; returns what the bucket has now."""
        existing = await self.store.read_lifecycle_rules()
        rules = build_lifecycle_rules(existing, audit_retention_days)
        await self.store.write_lifecycle_rules(rules)
        log.info("storage.gcs.lifecycle_applied", bucket=self.store.bucket_name, rules=len(rules))
        return rules

    async def mark(self, keys: Iterable[str], retention: Retention) -> int:
        """Set every existing object's Custom-Time for this retention; how many were set."""
        when = compute_custom_time(retention)
        if when is None:
            return 0
        marked = 0
        for key in keys:
            try:
                await self.store.set_custom_time(key, when)
            except ObjectNotFoundError:
                continue
            except StorageError as exc:  # an earlier time than the object has: GCS refuses
                log.warning("storage.gcs.custom_time_refused", key=key, error=str(exc))
                continue
            marked += 1
        return marked
