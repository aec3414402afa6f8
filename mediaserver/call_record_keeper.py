"""The call's account of its legs, kept as they connect and end, and given to its recording."""

from collections.abc import Mapping
from typing import Any

from mediaserver.agent_bridge import AgentBridge
from mediaserver.call_recording import CallRecording
from mediaserver.clock import Clock
from mediaserver.recording.call import EndReason
from mediaserver.recording.channel import Codec
from mediaserver.recording.manifest import format_utc
from mediaserver.transports.agent import compute_close_code
from mediaserver.transports.link import AgentLink, CallerLink


class CallRecordKeeper:
    """What each leg was and how it ended, plus notes: the manifest's `legs` and `notes`."""

    def __init__(self, recording: CallRecording, clock: Clock) -> None:
        self._recording = recording
        self._clock = clock
        self._caller: dict[str, Any] = {}
        self._agent: dict[str, Any] = {}
        self._notes: list[str] = []
        self.agent_url: str | None = None  # what the server dials (or builtin:echo)
        self.agent_error: str | None = None  # why the dial-out failed

    # -- as things happen ----------------------------------------------------------------------

    def caller_connected(self, codec: Codec) -> None:
        """A caller transport was attached."""
        self._caller = {"codec": codec.value, "connected_at": self._now()}

    def agent_connected(self) -> None:
        """An agent was attached."""
        self._agent["connected_at"] = self._now()

    def agent_dialled(self, url: str) -> None:
        """The server dials (or runs) the call's agent at `url`."""
        self.agent_url = url
        self._agent["url"] = url

    def agent_dial_failed(self, error: str) -> None:
        """The agent could not be dialled."""
        self.agent_error = error
        self._agent["error"] = error
        self._notes.append(f"the agent could not be dialled: {error}")

    def note(self, text: str) -> None:
        """Something worth telling in the manifest's notes."""
        self._notes.append(text)

    def caller_ended(self, caller: CallerLink | None, reason: EndReason) -> None:
        """The caller leg ended: its transport as it was at the end."""
        if caller is not None:
            self._caller.update(caller.describe())
        self._caller.update(end_reason=reason.value, disconnected_at=self._now())

    def agent_ended(self, bridge: AgentBridge | None, reason: EndReason) -> None:
        """The agent leg ended: its connection as it was, and the close about to be sent."""
        if bridge is not None:
            stats = bridge.stats
            self._agent.update(
                _describe_agent(bridge.agent, reason),
                caller_frames_sent=stats.caller_frames_to_agent,
                agent_frames_encoded=stats.agent_frames_encoded,
                marks_echoed=stats.marks_echoed,
                clears=stats.clears,
            )
        self._agent.update(end_reason=reason.value, disconnected_at=self._now())

    # -- reading -------------------------------------------------------------------------------

    def agent(self) -> dict[str, Any]:
        """The agent leg's record so far (url, error, times), for the API."""
        return dict(self._agent)

    def summary(self, dropped: Mapping[str, int]) -> dict[str, Any]:
        """The call's record of itself, written when the call ends."""
        notes = list(self._notes)
        caller = self._caller
        dtmf = caller.get("dtmf_payload_type")
        events = "" if dtmf is None else f" (telephone-event {dtmf})"
        for payload_type, count in (caller.get("unexpected_payload_types") or {}).items():
            notes.append(
                f"{count} caller packets with payload type {payload_type} were dropped:"
                f" the leg negotiated {caller.get('payload_type')}{events}"
            )
        if foreign := caller.get("foreign_packets_in"):  # WebRTC: not the negotiated Opus
            notes.append(
                f"{foreign} caller packets of another payload type than Opus"
                f" ({caller.get('payload_type')}) were dropped"
            )
        return {
            "legs": {"caller": dict(caller), "agent": dict(self._agent)},
            "dropped": {reason: count for reason, count in dropped.items() if count},
            "notes": notes,
        }

    def _now(self) -> str:
        """Now, as a UTC time people read, on the call's clock."""
        recording = self._recording
        now_ns = self._clock.monotonic_ns()
        return format_utc(recording.wall_start_ns + now_ns - recording.mono_start_ns)


def _describe_agent(agent: AgentLink, reason: EndReason) -> dict[str, Any]:
    """The agent connection as it is when its leg ends; the close the server is about to send."""
    described = agent.describe()
    if "close_code" in described and described.get("closed_by") is None:
        described.update(
            close_code=compute_close_code(reason.value),
            close_reason=reason.value,
            closed_by="server",
        )
    return described
