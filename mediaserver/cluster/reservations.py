"""Reservations: calls this node places, counted per node until that node's record shows them."""

# A node learns another's load from the registry, and its own from its hub: neither shows a
# call whose creation is under way, nor (for another node) one created after the record was
# read. Without counting those, a burst of creations that reaches one node at once sees the
# same loads again and again and sends most of its calls to the same node.

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

from mediaserver.cluster.node_record import NodeRecord

FORGET_AFTER_MS = 10_000  # by then the node has published its record a few times


class Reservations:
    """Calls being created on, or forwarded to, each node, and those its record may not show."""

    def __init__(self) -> None:
        """No placements under way."""
        self._under_way: Counter[str] = Counter()
        self._landed: dict[str, list[int]] = {}  # node id -> `updated_at_ms` that shows each

    @contextmanager
    def hold(self, node_id: str) -> Iterator[None]:
        """Count one call being placed on `node_id` for the duration of the block."""
        self._under_way[node_id] += 1
        try:
            yield
        finally:
            self._under_way[node_id] -= 1
            if not self._under_way[node_id]:
                del self._under_way[node_id]

    def landed(self, node_id: str, shown_from_ms: int) -> None:
        """A call was created on another node, whose records count it from `shown_from_ms` on."""
        self._landed.setdefault(node_id, []).append(shown_from_ms)

    def count(self, node_id: str) -> int:
        """The calls being placed on `node_id` now."""
        return self._under_way[node_id]

    def apply(self, nodes: Sequence[NodeRecord], call_load: float, now_ms: int) -> list[NodeRecord]:
        """The records with the calls under way, and those they do not show yet, added."""
        applied = []
        for node in nodes:
            unseen = [
                shown_from_ms
                for shown_from_ms in self._landed.pop(node.node_id, [])
                if node.updated_at_ms < shown_from_ms and now_ms - shown_from_ms < FORGET_AFTER_MS
            ]
            if unseen:
                self._landed[node.node_id] = unseen
            extra = self._under_way[node.node_id] + len(unseen)
            live_calls, load = node.live_calls + extra, node.load + extra * call_load
            applied.append(replace(node, live_calls=live_calls, load=load) if extra else node)
        listed = {node.node_id for node in nodes}
        for node_id in [n for n in self._landed if n not in listed]:  # nodes that left
            recent = [t for t in self._landed.pop(node_id) if now_ms - t < FORGET_AFTER_MS]
            if recent:
                self._landed[node_id] = recent
        return applied
