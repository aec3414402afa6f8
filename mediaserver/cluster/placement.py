"""Where a new call goes: the least-loaded node that takes calls, this one on a tie."""

from collections.abc import Sequence

from mediaserver.admission import AdmissionLimits, LoadSample, project_cpu_share
from mediaserver.cluster.node_record import NodeRecord, NodeState


def compute_load(limits: AdmissionLimits, sample: LoadSample) -> float:
    """The share of a node's capacity in use: the highest of calls, CPU and loop lag."""
    shares = [sample.live_calls / limits.max_calls]
    if limits.max_cpu_share:
        projected = project_cpu_share(limits, sample, new_calls=0)  # as admission sees it
        shares.append(projected / limits.max_cpu_share)
    if limits.max_loop_lag_ms:
        shares.append(sample.loop_lag_ms / limits.max_loop_lag_ms)
    return max(shares)


def call_load(limits: AdmissionLimits) -> float:
    """The load one more call adds, as compute_load counts it before the CPU has shown it."""
    shares = [1 / limits.max_calls]
    if limits.max_cpu_share:
        shares.append(limits.call_cpu_share / limits.max_cpu_share)
    return max(shares)


def rank_nodes(nodes: Sequence[NodeRecord], self_id: str) -> list[NodeRecord]:
    """Nodes that take calls, best first: least loaded, then this node, then by id."""
    candidates = [n for n in nodes if n.state is NodeState.READY and n.admits]
    return sorted(candidates, key=lambda n: (round(n.load, 4), n.node_id != self_id, n.node_id))
