"""LocalNode: this node as the registry and GET /v1/nodes describe it, read from its live parts."""

from mediaserver.admission import LoadMonitor
from mediaserver.calls import CallHub
from mediaserver.cluster.node_record import NodeRecord, NodeState
from mediaserver.cluster.placement import compute_load
from mediaserver.cluster.registry import now_ms
from mediaserver.errors import UnknownCallError


class LocalNode:
    """This node's id, public URL, state and load, as of now."""

    def __init__(self, *, node_id: str, public_url: str, hub: CallHub, load: LoadMonitor) -> None:
        """Describe the node whose calls `hub` holds and whose load `load` samples."""
        self.node_id = node_id
        self.public_url = public_url
        self._hub = hub
        self._load = load

    def record(self) -> NodeRecord:
        """The node's record now."""
        live = len(self._hub.sessions())
        sample = self._load.load(live)
        return NodeRecord(
            node_id=self.node_id,
            public_url=self.public_url,
            state=NodeState.DRAINING if self._hub.draining else NodeState.READY,
            live_calls=live,
            load=compute_load(self._load.limits, sample),
            cpu_share=sample.cpu_share,
            loop_lag_ms=sample.loop_lag_ms,
            admits=self._load.ready(live),
            updated_at_ms=now_ms(),
        )

    def live_call_ids(self) -> list[str]:
        """The ids of the calls live on this node."""
        return [session.call_id for session in self._hub.sessions()]

    def holds(self, call_id: str) -> bool:
        """Whether the call is live on this node."""
        try:
            self._hub.get(call_id)
        except UnknownCallError:
            return False
        return True
