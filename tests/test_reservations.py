"""Reservations: calls being placed count toward a node's load until its record shows them."""

from contextlib import ExitStack

from mediaserver.cluster.node_record import NodeRecord, NodeState
from mediaserver.cluster.placement import rank_nodes
from mediaserver.cluster.reservations import FORGET_AFTER_MS, Reservations

CALL_LOAD = 0.01


def record(node_id: str, live_calls: int = 0, updated_at_ms: int = 1_000) -> NodeRecord:
    """A ready node's record."""
    return NodeRecord(
        node_id=node_id,
        public_url=f"http://{node_id}",
        state=NodeState.READY,
        live_calls=live_calls,
        load=live_calls * CALL_LOAD,
        cpu_share=0.0,
        loop_lag_ms=0.0,
        admits=True,
        updated_at_ms=updated_at_ms,
    )


def test_calls_under_way_alternate_a_burst_between_equal_nodes() -> None:
    """Four creations ranked while none has finished: two for each node, not four for one."""
    reservations = Reservations()
    nodes = [record("a"), record("b")]
    chosen = []
    with ExitStack() as under_way:
        for _ in range(4):
            (best, *_) = rank_nodes(reservations.apply(nodes, CALL_LOAD, 1_000), "a")
            under_way.enter_context(reservations.hold(best.node_id))
            chosen.append(best.node_id)
    assert chosen == ["a", "b", "a", "b"]
    assert reservations.count("a") == reservations.count("b") == 0


def test_a_call_forwarded_counts_until_the_record_that_shows_it() -> None:
    """A call landed on b counts while b's records are older than the one that counts it."""
    reservations = Reservations()
    reservations.landed("b", shown_from_ms=2_000)
    (stale,) = reservations.apply([record("b", updated_at_ms=1_500)], CALL_LOAD, 2_100)
    assert (stale.live_calls, stale.load) == (1, CALL_LOAD)
    (fresh,) = reservations.apply([record("b", 1, updated_at_ms=2_000)], CALL_LOAD, 2_200)
    assert (fresh.live_calls, fresh.load) == (1, CALL_LOAD)  # counted once, by its record
    (later,) = reservations.apply([record("b", updated_at_ms=1_500)], CALL_LOAD, 2_300)
    assert later.live_calls == 0  # forgotten once shown


def test_a_node_that_never_shows_the_call_is_forgotten_in_time() -> None:
    """Nothing is kept for ever: a node whose records stop (it left) is let go too."""
    reservations = Reservations()
    reservations.landed("b", shown_from_ms=1_000)
    reservations.landed("c", shown_from_ms=1_000)
    late = 1_000 + FORGET_AFTER_MS
    (b,) = reservations.apply([record("b", updated_at_ms=500)], CALL_LOAD, late)
    assert b.live_calls == 0
    assert reservations.apply([], CALL_LOAD, late) == []
    (c,) = reservations.apply([record("c", updated_at_ms=500)], CALL_LOAD, late - 1)
    assert c.live_calls == 0  # c's entry went when it was missing from a listing, too late
