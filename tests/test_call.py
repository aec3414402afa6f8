"""Call reference counting: finalized exactly once, errors on double ends."""

import pytest

from mediaserver.errors import CallStateError
from mediaserver.recording.call import Call, CallStatus, EndReason
from mediaserver.recording.channel import Channel, Codec


def _call() -> Call:
    return Call("c1", 0, 0, {Channel.CALLER: Codec.OPUS, Channel.AGENT: Codec.OPUS}, 0)


def test_call_starts_with_two_references() -> None:
    """A new call holds one reference per channel."""
    assert _call().refcount == 2


def test_last_end_reports_finalization_once() -> None:
    """Ending the first channel keeps the call; ending the second asks for finalization."""
    call = _call()
    assert call.end_channel(Channel.AGENT) is False
    assert call.status is CallStatus.RECORDING
    assert call.end_channel(Channel.CALLER, EndReason.EXPIRED) is True
    assert call.status is CallStatus.FINALIZING
    assert call.end_reason is EndReason.EXPIRED


def test_ending_a_channel_twice_is_an_error() -> None:
    """A second end of the same channel raises instead of finalizing twice."""
    call = _call()
    call.end_channel(Channel.CALLER)
    with pytest.raises(CallStateError, match="caller channel already ended"):
        call.end_channel(Channel.CALLER)
    assert call.end_channel(Channel.AGENT) is True
    with pytest.raises(CallStateError):
        call.end_channel(Channel.AGENT)


def test_idle_time_follows_activity() -> None:
    """Idle time counts from the last touch."""
    call = _call()
    call.touch(5_000)
    assert call.idle_ns(8_000) == 3_000
