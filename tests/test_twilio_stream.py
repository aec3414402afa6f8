"""The server's side of a Media Streams stream: numbering and media times."""

import json

import numpy as np

from mediaserver.transports.twilio_protocol import MULAW_8K
from mediaserver.transports.twilio_stream import OutboundStream


def make_stream() -> OutboundStream:
    """A stream with fixed ids."""
    return OutboundStream(
        stream_sid="MZ" + "1" * 32,
        call_sid="call-1",
        account_sid="AC" + "0" * 32,
        audio_format=MULAW_8K,
        custom_parameters={"campaign": "x"},
    )


def test_every_message_after_start_takes_the_next_sequence_number() -> None:
    """`start` is 1; media, marks, keys and `stop` count on from it, one each."""
    stream = make_stream()
    chunk = np.zeros(160, np.int16)
    messages = [
        json.loads(text)
        for text in (
            stream.start(),
            stream.media(chunk, 0),
            stream.mark("m1"),
            stream.dtmf("5"),
            stream.media(chunk, 20),
            stream.stop(),
        )
    ]
    assert [m["sequenceNumber"] for m in messages] == ["1", "2", "3", "4", "5", "6"]
    assert [m["event"] for m in messages] == ["start", "media", "mark", "dtmf", "media", "stop"]
    assert messages[0]["start"]["customParameters"] == {"campaign": "x"}
    assert messages[5]["stop"]["callSid"] == "call-1"
    assert "sequenceNumber" not in json.loads(stream.connected())


def test_media_times_never_go_back_and_show_pauses() -> None:
    """A burst is stamped back to back; a pause in the caller's audio is a gap in the times."""
    stream = make_stream()
    chunk = np.zeros(160, np.int16)  # 20 ms at 8 kHz
    stamps = [
        json.loads(stream.media(chunk, elapsed_ms))["media"] for elapsed_ms in (0, 1, 2, 500, 501)
    ]
    assert [m["timestamp"] for m in stamps] == ["0", "20", "40", "500", "520"]
    assert [m["chunk"] for m in stamps] == ["1", "2", "3", "4", "5"]
