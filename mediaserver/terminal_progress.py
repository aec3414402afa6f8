"""A progress line on a terminal: rewritten in place, one line per phase of a long command."""

from typing import TextIO

# Phases the import-pcap passes report, as a person reads them.
_PHASE_NAMES = {
    "scanning": "finding the streams",
    "journalling": "reading the chosen streams",
    "building": "building the recording",
}


class TerminalProgress:
    """Writes `phase: 42% of 120.5 MB` over itself; a new phase starts a new line."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._phase: str | None = None
        self._shown = ""

    def __call__(self, phase: str, done_bytes: int, total_bytes: int) -> None:
        """Show how far a phase has come (total 0: a phase without a measure)."""
        if phase != self._phase:
            if self._phase is not None:
                self._out.write("\n")
            self._phase = phase
            self._shown = ""
        name = _PHASE_NAMES.get(phase, phase)
        if total_bytes:
            text = f"{name}: {100 * done_bytes // total_bytes:3d}% of {total_bytes / 1e6:.1f} MB"
        else:
            text = f"{name}..."
        if text != self._shown:
            self._out.write("\r" + text)
            self._out.flush()
            self._shown = text

    def finish(self) -> None:
        """End the last line."""
        if self._phase is not None:
            self._out.write("\n")
            self._out.flush()
            self._phase = None
