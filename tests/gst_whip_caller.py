"""A WHIP caller built on GStreamer's webrtcbin (run with the system python3 + gi, not the venv).

Usage: /usr/bin/python3 gst_whip_caller.py WHIP_URL TOKEN SECONDS TICK_INTERVAL_S TICK_MS

A real third-party WebRTC stack, written the way GStreamer's own examples (webrtc-sendrecv) use
webrtcbin: a live `audiotestsrc` playing a 500 Hz tone of TICK_MS every TICK_INTERVAL_S, Opus at
20 ms, offered sendrecv. Debian has no `whipsink`, so the WHIP exchange is done here (RFC 9725
§4.2: POST the offer with all its candidates, apply the 201's answer). ICE gathers on 127.0.0.1
only (libnice leaves loopback out unless told). What the server sends back is decoded and played
by an appsink in real time. The last line of output is JSON: when the connection came up and when
each tick's echo was heard, both on this process's monotonic clock.
"""

import array
import json
import sys
import threading
import time
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

OPUS_PAYLOAD_TYPE = 111
HEARD_LEVEL = 3000  # int16 peak that counts as the tone being heard


def main() -> None:
    """Call, play the ticks for SECONDS, print what happened."""
    whip_url, token, seconds, interval_s, tick_ms = sys.argv[1:6]
    Gst.init(None)
    started_ns = time.monotonic_ns()
    events: dict[str, object] = {"started_ns": started_ns}
    periods = int(500 * int(tick_ms) / 1000)
    pipeline = Gst.parse_launch(
        "webrtcbin name=webrtc bundle-policy=max-bundle "
        "audiotestsrc is-live=true wave=ticks freq=500 volume=0.4 "
        f"sine-periods-per-tick={periods} tick-interval={int(float(interval_s) * 1e9)} "
        "! audioconvert ! audioresample ! opusenc frame-size=20 "
        f"! rtpopuspay pt={OPUS_PAYLOAD_TYPE} "
        f"! application/x-rtp,media=audio,encoding-name=OPUS,payload={OPUS_PAYLOAD_TYPE},"
        "clock-rate=48000 ! webrtc."
    )
    webrtc = pipeline.get_by_name("webrtc")
    ice = webrtc.get_property("ice-agent")
    ice.set_property("ice-tcp", False)
    ice.emit("add-local-ip-address", "127.0.0.1")
    loop = GLib.MainLoop()
    heard: list[tuple[int, int]] = []  # (monotonic ns, peak) per decoded buffer
    answered = threading.Event()

    def on_sample(sink: Gst.Element) -> Gst.FlowReturn:
        buffer = sink.emit("pull-sample").get_buffer()
        ok, info = buffer.map(Gst.MapFlags.READ)
        if ok:
            samples = array.array("h", bytes(info.data))
            buffer.unmap(info)
            heard.append((time.monotonic_ns(), max(map(abs, samples), default=0)))
        return Gst.FlowReturn.OK

    def on_pad_added(_: Gst.Element, pad: Gst.Pad) -> None:
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        playback = Gst.parse_bin_from_description(
            "rtpopusdepay ! opusdec ! audioconvert ! audioresample "
            "! audio/x-raw,format=S16LE,rate=48000,channels=1 "
            "! appsink name=ear emit-signals=true sync=true",
            True,
        )
        pipeline.add(playback)
        playback.sync_state_with_parent()
        playback.get_by_name("ear").connect("new-sample", on_sample)
        pad.link(playback.get_static_pad("sink"))

    def post_offer() -> None:
        offer = webrtc.get_property("local-description").sdp.as_text()
        request = urllib.request.Request(
            whip_url,
            data=offer.encode(),
            method="POST",
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer_sdp = response.read().decode()
        _, message = GstSdp.SDPMessage.new_from_text(answer_sdp)
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        webrtc.emit("set-remote-description", answer, None)
        events["answered_ns"] = time.monotonic_ns()
        answered.set()

    def on_gathering(*_: object) -> None:
        state = webrtc.get_property("ice-gathering-state")
        if state == GstWebRTC.WebRTCICEGatheringState.COMPLETE and not answered.is_set():
            # No trickle: the offer goes out once it holds every candidate.
            post_offer()

    def on_offer(promise: Gst.Promise, _: object) -> None:
        # The reply owns the offer: held in a name until the offer is used, or PyGObject frees
        # it first and webrtcbin gets an empty description.
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        webrtc.emit("set-local-description", offer, None)
        del reply

    def create_offer() -> bool:
        # webrtcbin can only describe its audio once caps have reached its sink pad; asked
        # earlier (on-negotiation-needed comes that early), it answers with no offer.
        if not any(pad.has_current_caps() for pad in webrtc.sinkpads):
            return True  # a GLib source: ask again at the next interval
        webrtc.emit("create-offer", None, Gst.Promise.new_with_change_func(on_offer, None))
        return False

    def on_connection_state(*_: object) -> None:
        state = webrtc.get_property("connection-state")
        if state == GstWebRTC.WebRTCPeerConnectionState.CONNECTED:
            events["connected_ns"] = time.monotonic_ns()

    webrtc.connect("pad-added", on_pad_added)
    webrtc.connect("notify::ice-gathering-state", on_gathering)
    webrtc.connect("notify::connection-state", on_connection_state)
    pipeline.set_state(Gst.State.PLAYING)
    GLib.timeout_add(20, create_offer)
    GLib.timeout_add(int(float(seconds) * 1000), loop.quit)
    loop.run()
    pipeline.set_state(Gst.State.NULL)
    events["heard_ns"] = [t for t, peak in heard if peak >= HEARD_LEVEL]
    print(json.dumps(events))


if __name__ == "__main__":
    main()
