"""Tests for RTP sequence number and timestamp unwrapping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediaserver.rtp.unwrap import SequenceUnwrapper, TimestampUnwrapper

UNWRAPPERS = [
    pytest.param(SequenceUnwrapper, 1 << 16, id="sequence"),
    pytest.param(TimestampUnwrapper, 1 << 32, id="timestamp"),
]
Unwrapper = type[SequenceUnwrapper] | type[TimestampUnwrapper]


def unwrap_all(unwrapper: SequenceUnwrapper | TimestampUnwrapper, values: list[int]) -> list[int]:
    """Unwrap values in arrival order."""
    return [unwrapper.unwrap(value) for value in values]


def test_sequence_forward_across_wrap() -> None:
    """Sequence numbers keep increasing from 65534 through 0."""
    assert unwrap_all(SequenceUnwrapper(), [65534, 65535, 0, 1]) == [65534, 65535, 65536, 65537]


def test_timestamp_forward_across_wrap_in_20_ms_steps() -> None:
    """48 kHz timestamps stepping 960 keep increasing across 2**32."""
    start = (1 << 32) - 1920
    values = [(start + 960 * index) % (1 << 32) for index in range(5)]
    assert unwrap_all(TimestampUnwrapper(), values) == [start + 960 * index for index in range(5)]


def test_sequence_reordered_from_before_wrap() -> None:
    """A packet from before the wrap that arrives after it stays in the earlier cycle."""
    assert unwrap_all(SequenceUnwrapper(), [65534, 0, 65535, 1]) == [65534, 65536, 65535, 65537]


def test_timestamp_reordered_from_before_wrap() -> None:
    """A timestamp from before the wrap that arrives after it stays in the earlier cycle."""
    values = [(1 << 32) - 960, 0, (1 << 32) - 480, 960]
    assert unwrap_all(TimestampUnwrapper(), values) == [
        (1 << 32) - 960,
        1 << 32,
        (1 << 32) - 480,
        (1 << 32) + 960,
    ]


def test_sequence_backward_across_wrap_goes_negative() -> None:
    """Packets older than the first one, across a wrap backwards, come out negative."""
    assert unwrap_all(SequenceUnwrapper(), [1, 0, 65535, 65534, 2]) == [1, 0, -1, -2, 2]


def test_duplicate_returns_same_value_and_keeps_highest() -> None:
    """A repeated value unwraps to the same extended value and does not advance the highest."""
    unwrapper = SequenceUnwrapper()
    assert unwrap_all(unwrapper, [10, 11, 11, 10]) == [10, 11, 11, 10]
    assert unwrapper.highest == 11


@pytest.mark.parametrize(("unwrapper_class", "modulus"), UNWRAPPERS)
def test_half_range_jump_counts_as_backward(unwrapper_class: Unwrapper, modulus: int) -> None:
    """A jump of exactly half the range is ambiguous and taken as a step backwards."""
    unwrapper = unwrapper_class()
    assert unwrapper.unwrap(0) == 0
    assert unwrapper.unwrap(modulus // 2) == -(modulus // 2)
    assert unwrapper.unwrap(modulus // 2 - 1) == modulus // 2 - 1


@pytest.mark.parametrize(("unwrapper_class", "modulus"), UNWRAPPERS)
def test_many_wraps_forward(unwrapper_class: Unwrapper, modulus: int) -> None:
    """Steps of a third of the range carry the value through several cycles."""
    step = modulus // 3
    unwrapper = unwrapper_class()
    expected = [step * index for index in range(10)]
    assert unwrap_all(unwrapper, [value % modulus for value in expected]) == expected


@pytest.mark.parametrize(("unwrapper_class", "modulus"), UNWRAPPERS)
@pytest.mark.parametrize("past_end", [False, True])
def test_rejects_values_outside_the_counter_range(
    unwrapper_class: Unwrapper, modulus: int, past_end: bool
) -> None:
    """Values that no RTP field can carry are refused."""
    value = modulus if past_end else -1
    with pytest.raises(ValueError, match=f"{value} is outside 0-{modulus - 1}"):
        unwrapper_class().unwrap(value)


@st.composite
def true_counter_runs(draw: st.DrawFn, modulus: int) -> list[int]:
    """Extended values whose every step lies less than half the range from the highest so far."""
    half = modulus // 2
    # Mostly small forward steps, sometimes reorders, duplicates and large jumps either way.
    deltas = draw(
        st.lists(
            st.one_of(
                st.integers(1, 3),
                st.integers(-50, 0),
                st.integers(-half + 1, half - 1),
            ),
            max_size=100,
        )
    )
    values = [draw(st.integers(0, modulus - 1))]
    highest = values[0]
    for delta in deltas:
        values.append(highest + delta)
        highest = max(highest, values[-1])
    return values


@pytest.mark.parametrize(("unwrapper_class", "modulus"), UNWRAPPERS)
@given(data=st.data())
def test_matches_reference_model(
    unwrapper_class: Unwrapper, modulus: int, data: st.DataObject
) -> None:
    """Fed the wrapped form of a run of true values, the unwrapper gives back the true values."""
    true_values = data.draw(true_counter_runs(modulus))
    unwrapper = unwrapper_class()
    assert unwrap_all(unwrapper, [value % modulus for value in true_values]) == true_values
    assert unwrapper.highest == max(true_values)
