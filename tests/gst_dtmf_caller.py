"""A GStreamer caller: Opus audio and RFC 4733 keys on one RTP stream (system python3 + gi)."""

# Usage: /usr/bin/python3 gst_dtmf_caller.py PORT AUDIO_PT DTMF_PT LEAD_MS DIGIT:MS:GAP ... TAIL_MS
# A 440 Hz tone is sent as Opus (rtpopuspay) from the start; after LEAD_MS each key is pressed for
# MS then released for GAP_MS (rtpdtmfsrc, GStreamer's own RFC 4733 sender); TAIL_MS of audio
# follows. rtpdtmfmux puts both on one SSRC, one timestamp base and one socket, as a telephone
# does, and drops the audio while a key is sent: the recording has a hole where each key was.

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
    """Send the tone, press the keys, send the tail, stop."""
    port, audio_pt, dtmf_pt, lead_ms, *presses, tail_ms = sys.argv[1:]
    Gst.init(None)
    pipeline = Gst.parse_launch(
        "rtpdtmfmux name=mux ! udpsink host=127.0.0.1 port=" + port + " sync=false async=false "
        "audiotestsrc is-live=true freq=440 volume=0.3 ! audio/x-raw,rate=48000,channels=1 "
        f"! audioconvert ! opusenc frame-size=20 ! rtpopuspay pt={audio_pt} ! mux.sink_0 "
        "rtpdtmfsrc name=dtmf packet-redundancy=3 "
        f"! application/x-rtp,clock-rate=48000,payload={dtmf_pt} ! mux.priority_sink_0"
    )
    source = pipeline.get_by_name("dtmf").get_static_pad("src")
    pipeline.set_state(Gst.State.PLAYING)
    pipeline.get_state(5 * Gst.SECOND)
    time.sleep(int(lead_ms) / 1000)
    for press in presses:
        digit, held_ms, gap_ms = press.split(":")
        source.send_event(_dtmf_event(EVENTS[digit], True))
        time.sleep(int(held_ms) / 1000)
        source.send_event(_dtmf_event(EVENTS[digit], False))
        time.sleep(int(gap_ms) / 1000)
    time.sleep(int(tail_ms) / 1000)
    pipeline.set_state(Gst.State.NULL)


if __name__ == "__main__":
    main()
