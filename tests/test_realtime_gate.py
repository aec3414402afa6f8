"""The real-time gate: a stream passes at real time; a burst beyond the allowance does not."""

from hypothesis import given
from hypothesis import strategies as st

from mediaserver.realtime_gate import RealTimeGate

MS = 1_000_000
FRAME = 20 * MS


def _admitted(gate: RealTimeGate, arrivals_ms: list[float]) -> list[bool]:
    """Offer one 20 ms frame per arrival time."""
    return [gate.admit(round(a * MS), FRAME) for a in arrivals_ms]


def test_a_steady_stream_with_jitter_passes_whole() -> None:
    """Frames every 20 ms, a few ms early or late, all go on."""
    jitter = [0, 3, -2, 5, 1, -4, 2, 0, 6, -3]
    arrivals = [index * 20 + offset + 100 for index, offset in enumerate(jitter * 10)]
    assert all(_admitted(RealTimeGate(60), arrivals))


def test_a_backlog_flushed_at_connection_passes_only_its_first_frame() -> None:
    """Two seconds of audio in 5 ms at a stream's start: nothing stale reaches the listener."""
    gate = RealTimeGate(60)
    burst = _admitted(gate, [index * 0.05 for index in range(100)])
    assert burst == [True] + [False] * 99
    assert gate.refused == 99
    assert gate.refused_ns == 99 * FRAME
    # Then the stream goes on in real time, and all of it passes.
    assert all(_admitted(gate, [5 + 20 * index for index in range(1, 50)]))


def test_a_stall_mid_stream_passes_up_to_the_allowance() -> None:
    """After 200 ms without packets, the backlog passes up to 60 ms ahead; the rest is refused."""
    gate = RealTimeGate(60)
    assert all(_admitted(gate, [20 * index for index in range(50)]))  # up to 980 ms
    flushed = _admitted(gate, [1180 + 0.1 * index for index in range(10)])  # 1000..1180 at once
    assert flushed == [True] * 4 + [False] * 6  # 0, 20, 40 and 60 ms ahead
    assert all(_admitted(gate, [1180 + 20 * index for index in range(4, 30)]))


def test_no_limit_passes_everything() -> None:
    """An allowance of 0 turns the gate off."""
    gate = RealTimeGate(0)
    assert all(_admitted(gate, [0.0] * 100))


@given(st.lists(st.floats(min_value=0, max_value=50), min_size=1, max_size=200))
def test_what_passes_never_runs_further_ahead_than_allowed(gaps_ms: list[float]) -> None:
    """Whatever the arrivals, the admitted frames end at most 60 ms + one frame after arrival."""
    gate = RealTimeGate(60)
    arrival_ns = 0
    end_ns = 0
    for gap in gaps_ms:
        arrival_ns += round(gap * MS)
        if gate.admit(arrival_ns, FRAME):
            end_ns = max(arrival_ns, end_ns) + FRAME
            assert end_ns - arrival_ns <= 60 * MS + FRAME
