"""NodeRecord: what a node publishes about itself in the registry, and its Redis hash form."""

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum


class NodeState(Enum):
    """Whether a node takes new calls."""

    READY = "ready"
    DRAINING = "draining"  # shutting down: keeps its live calls, takes no new one


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One node as the registry shows it."""

    node_id: str
    public_url: str
    state: NodeState
    live_calls: int
    load: float  # share of the node's capacity in use (0 idle, 1 full): see compute_load
    cpu_share: float  # of one core, over the last seconds
    loop_lag_ms: float
    admits: bool  # whether its admission control would take one more call now
    updated_at_ms: int  # the node's wall clock when it published this

    def to_fields(self) -> dict[str, str]:
        """The record as the fields of a Redis hash."""
        return {
            "node_id": self.node_id,
            "public_url": self.public_url,
            "state": self.state.value,
            "live_calls": str(self.live_calls),
            "load": f"{self.load:.4f}",
            "cpu_share": f"{self.cpu_share:.4f}",
            "loop_lag_ms": f"{self.loop_lag_ms:.3f}",
            "admits": "1" if self.admits else "0",
            "updated_at_ms": str(self.updated_at_ms),
        }

    def to_dict(self) -> dict[str, object]:
        """The record as the API shows it."""
        return {
            "node_id": self.node_id,
            "public_url": self.public_url,
            "state": self.state.value,
            "live_calls": self.live_calls,
            "load": round(self.load, 4),
            "cpu_share": round(self.cpu_share, 4),
            "loop_lag_ms": round(self.loop_lag_ms, 3),
            "admits_calls": self.admits,
            "updated_at_ms": self.updated_at_ms,
        }


def parse_node_fields(fields: Mapping[str, str]) -> NodeRecord:
    """A record read back from its hash; ValueError (or KeyError) if it is not one."""
    return NodeRecord(
        node_id=fields["node_id"],
        public_url=fields["public_url"],
        state=NodeState(fields["state"]),
        live_calls=int(fields["live_calls"]),
        load=float(fields["load"]),
        cpu_share=float(fields["cpu_share"]),
        loop_lag_ms=float(fields["loop_lag_ms"]),
        admits=fields.get("admits", "1") == "1",
        updated_at_ms=int(fields["updated_at_ms"]),
    )
