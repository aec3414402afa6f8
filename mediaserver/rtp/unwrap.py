"""Extend wrapping RTP sequence numbers and timestamps into ever-increasing integers."""

from __future__ import annotations

from typing import ClassVar


class _Unwrapper:
    """Unwraps a counter modulo 2**bits by comparing each value with the highest seen."""

    __slots__ = ("_highest",)
    _MODULUS: ClassVar[int]

    def __init__(self) -> None:
        """Start with nothing seen: the first value is returned as is."""
        self._highest: int | None = None

    @property
    def highest(self) -> int | None:
        """The highest extended value returned so far, None before the first."""
        return self._highest

    def unwrap(self, value: int) -> int:
        """Return `value` extended to the cycle that puts it nearest the highest value seen."""
        # A value up to half the range behind the highest is taken as reordered (RFC 3550
        # Appendix A.1 keeps the same cycle count for it), a jump of exactly half the range counts
        # as backward, and values from before the first one seen come out negative.
        if not 0 <= value < self._MODULUS:
            raise ValueError(f"{value} is outside 0-{self._MODULUS - 1}")
        if self._highest is None:
            self._highest = value
            return value
        half = self._MODULUS >> 1
        # Signed distance in [-half, half) from the highest value, modulo the counter's range.
        delta = (value - self._highest + half) % self._MODULUS - half
        extended = self._highest + delta
        if delta > 0:
            self._highest = extended
        return extended


class SequenceUnwrapper(_Unwrapper):
    """Extends 16-bit RTP sequence numbers (RFC 3550 §5.1)."""

    __slots__ = ()
    _MODULUS = 1 << 16


class TimestampUnwrapper(_Unwrapper):
    """Extends 32-bit RTP timestamps (RFC 3550 §5.1)."""

    __slots__ = ()
    _MODULUS = 1 << 32
