"""Send DTMF as RFC 4733 RTP with GStreamer's rtpdtmfsrc (run with the system python3 + gi)."""

# Usage: /usr/bin/python3 dtmf_sender.py PORT CLOCK_RATE_HZ PAYLOAD_TYPE DIGIT:MS[:GAP_MS] ...
# Each digit is pressed for MS milliseconds, then released for GAP_MS (default 100) before the
# next. rtpdtmfsrc is GStreamer's own RFC 4733 sender: an independent implementation of the
# packets (marker on the first, E on the last, sent three times here as RFC 4733 §2.5.1.4 asks)
# that the detector must read.

import sys
import time

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

EVENTS = {**{str(n): n for n in range(10)}, "*": 10, "#": 11, "A": 12, "B": 13, "C": 14, "D": 15}


def _dtmf_event(number: int, start: bool) -> Gst.Event:
    """The upstream event rtpdtmfsrc listens for."""
    fields = (
        f"dtmf-event, type=(int)1, number=(int){number}, volume=(int)10, start=(boolean){start}"
    )
    return Gst.Event.new_custom(
        Gst.EventType.CUSTOM_UPSTREAM, Gst.Structure.new_from_string(fields)
    )


def main() -> None:
    """Press the digits, then stop once the final packets have gone out."""
    port, clock_rate_hz, payload_type, *presses = sys.argv[1:]
    Gst.init(None)
    pipeline = Gst.parse_launch(
        f"rtpdtmfsrc name=dtmf packet-redundancy=3 ! application/x-rtp,clock-rate={clock_rate_hz},"
        f"payload={payload_type} ! udpsink host=127.0.0.1 port={port} sync=false async=false"
    )
    # The events go to the source pad: rtpdtmfsrc reads them there, as upstream events.
    source = pipeline.get_by_name("dtmf").get_static_pad("src")
    # async=false: the sink has nothing to preroll on until the first key is pressed.
    pipeline.set_state(Gst.State.PLAYING)
    pipeline.get_state(5 * Gst.SECOND)
    for press in presses:
        digit, held_ms, *gap = press.split(":")
        source.send_event(_dtmf_event(EVENTS[digit], True))
        time.sleep(int(held_ms) / 1000)
        source.send_event(_dtmf_event(EVENTS[digit], False))
        time.sleep(int(gap[0] if gap else 100) / 1000)
    time.sleep(0.3)  # the repeated end packets
    pipeline.set_state(Gst.State.NULL)


if __name__ == "__main__":
    main()
