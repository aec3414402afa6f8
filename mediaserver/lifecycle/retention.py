"""The retention sweep: delete stored recordings past their retention, audited."""

# Each sweep lists the store's manifests once. A manifest is read again only when it changed
# (key, size, update time), so a sweep of an unchanged bucket costs one listing; what it needs of
# each recording (its retention, whether it is held) is kept meanwhile. Expired recordings go
# through the one deletion routine (lifecycle/deletion.py): every object, manifest last, under the
# recording's lock, a hold placed meanwhile respected. Each expiry is an audit event by actor
# "retention". On GCS with gcs_apply_lifecycle, a recording read anew has its objects' Custom-Time
# set to its expiry (lifecycle/gcs_mirror.py). Several nodes sharing a bucket may sweep the same
# recording at once: deleting is idempotent, and each node that removed something audits it.

from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from mediaserver.audit.audit_log import AuditLog
from mediaserver.clock import Clock
from mediaserver.errors import AuditError, RecordingHeldError, StorageError
from mediaserver.lifecycle.deletion import RecordingDeleter, list_object_keys, parse_created_at
from mediaserver.lifecycle.gcs_mirror import GcsLifecycleMirror
from mediaserver.lifecycle.policy import Retention, compute_retention
from mediaserver.storage_backends.keys import RECORDINGS_PREFIX, parse_manifest_key
from mediaserver.storage_backends.store import ObjectInfo

log = structlog.get_logger(__name__)

RETENTION_ACTOR = "retention"
_Signature = tuple[int, datetime]


class RecordingRetention:
    """Finds expired recordings and deletes them."""

    def __init__(
        self,
        deleter: RecordingDeleter,
        *,
        default_days: Callable[[], int],
        clock: Clock,
        audit: AuditLog | None = None,
        mirror: GcsLifecycleMirror | None = None,
    ) -> None:
        """Delete through `deleter`; `default_days()` is the retention of calls that set none."""
        self.deleter = deleter
        self.default_days = default_days
        self.clock = clock
        self.audit = audit
        self.mirror = mirror
        self.recordings_expired = 0
        self.sweeps = 0
        self._known: dict[str, tuple[_Signature, str, datetime, dict[str, object]]] = {}

    def now(self) -> datetime:
        """The clock's wall time."""
        return datetime.fromtimestamp(self.clock.wall_ns() / 1e9, UTC)

    async def sweep(self) -> list[str]:
        """Delete every expired recording that is not held; returns their ids."""
        store = self.deleter.states.store
        listing = await store.list_objects(RECORDINGS_PREFIX)
        infos = [info for info in listing if parse_manifest_key(info.key)]
        listed = {info.key for info in infos}
        for key in set(self._known) - listed:
            del self._known[key]  # deleted meanwhile (here, through the API, or elsewhere)
        expired: list[str] = []
        now = self.now()
        for info in infos:
            try:
                found = await self._retention_of(info)
            except StorageError as exc:
                log.warning("retention.manifest_unreadable", key=info.key, error=str(exc))
                continue
            if found is None:
                continue
            call_id, retention = found
            if retention.is_expired(now) and await self._expire(call_id, info.key, retention):
                expired.append(call_id)
        if expired:
            log.info("retention.swept", expired=len(expired), recordings=len(infos))
        self.sweeps += 1
        return expired

    async def _retention_of(self, info: ObjectInfo) -> tuple[str, Retention] | None:
        """A recording's call id and retention, from the manifest read when it last changed."""
        signature = (info.size_bytes, info.updated_at)
        known = self._known.get(info.key)
        if known is None or known[0] != signature:
            manifest = await self.deleter.states.read_manifest(info.key)
            if manifest is None:
                return None
            created_at = parse_created_at(manifest)
            known = (signature, manifest.call_id, created_at, dict(manifest.lifecycle))
            self._known[info.key] = known
            if self.mirror is not None:
                retention = compute_retention(manifest.lifecycle, created_at, self.default_days())
                # Not the manifest: patching it would change its update time, and so its
                # signature, every sweep. A manifest the bucket left is swept when a server runs.
                await self.mirror.mark(list_object_keys(manifest, info.key), retention)
        _, call_id, created_at, lifecycle = known
        return call_id, compute_retention(lifecycle, created_at, self.default_days())

    async def _expire(self, call_id: str, manifest_key: str, retention: Retention) -> bool:
        """Delete one expired recording and audit it; False if it was held or gone meanwhile."""
        try:
            removed = await self.deleter.delete(call_id, manifest_key)
        except RecordingHeldError:
            return False  # held since the manifest was read: it stays
        self._known.pop(manifest_key, None)
        if not removed:
            return False
        self.recordings_expired += 1
        details = {**retention.to_dict(), "objects": removed}
        details.pop("hold")
        log.info("recording.expired", call_id=call_id, **details)
        if self.audit is not None:
            try:
                await self.audit.record(
                    actor=RETENTION_ACTOR,
                    action="recording.expired",
                    recording_id=call_id,
                    details=details,
                )
            except AuditError as exc:
                log.error(
                    "audit.event_lost", action="recording.expired", call_id=call_id, error=str(exc)
                )
        return True
