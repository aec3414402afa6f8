"""The one packet type of the live path: an RTP packet with the server time it crossed the wire."""

from typing import NamedTuple


class MediaPacket(NamedTuple):
    """One RTP audio packet as received from a caller, or as sent to one, with its server time."""

    # Transports, the journal, the packet-capture importer and the timeline all pass this value;
    # a NamedTuple is built and unpacked at C speed on the per-packet path.
    arrival_ns: int  # server monotonic time it arrived (caller) or left (agent)
    rtp_timestamp: int
    sequence: int
    ssrc: int
    payload_type: int
    marker: bool
    payload: bytes
