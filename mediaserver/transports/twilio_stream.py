"""The server's side of one Media Streams stream: every message it sends, numbered and stamped."""

from collections.abc import Mapping

from mediaserver.transports.link import Pcm
from mediaserver.transports.twilio_protocol import (
    START_SEQUENCE_NUMBER,
    AudioFormat,
    build_connected,
    build_dtmf,
    build_mark,
    build_media,
    build_start,
    build_stop,
    encode_payload,
)


class OutboundStream:
    """Builds a stream's messages in order: one sequence number each, media chunks and times."""

    __slots__ = (
        "_chunk",
        "_next_timestamp_ms",
        "_sequence_number",
        "account_sid",
        "audio_format",
        "call_sid",
        "custom_parameters",
        "stream_sid",
    )

    def __init__(
        self,
        *,
        stream_sid: str,
        call_sid: str,
        account_sid: str,
        audio_format: AudioFormat,
        custom_parameters: Mapping[str, str],
    ) -> None:
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.account_sid = account_sid
        self.audio_format = audio_format
        self.custom_parameters = dict(custom_parameters)
        self._sequence_number = START_SEQUENCE_NUMBER  # `start`'s; `connected` has none
        self._chunk = 0
        self._next_timestamp_ms = 0

    def connected(self) -> str:
        """The first message of every stream."""
        return build_connected()

    def start(self) -> str:
        """`start`: the stream's ids, audio format and custom parameters."""
        return build_start(
            stream_sid=self.stream_sid,
            call_sid=self.call_sid,
            account_sid=self.account_sid,
            audio_format=self.audio_format,
            custom_parameters=self.custom_parameters,
        )

    def media(self, pcm: Pcm, elapsed_ms: int) -> str:
        """A `media` chunk of caller audio, `elapsed_ms` after the stream started."""
        # A presentation time: never before the end of the previous chunk, so timestamps rise
        # even when packets arrive in a burst, and a pause in the caller's audio shows as a gap.
        timestamp_ms = max(elapsed_ms, self._next_timestamp_ms)
        self._next_timestamp_ms = timestamp_ms + pcm.size * 1000 // self.audio_format.sample_rate_hz
        self._chunk += 1
        return build_media(
            sequence_number=self._next_sequence_number(),
            stream_sid=self.stream_sid,
            chunk=self._chunk,
            timestamp_ms=timestamp_ms,
            payload=encode_payload(pcm, self.audio_format),
        )

    def mark(self, name: str) -> str:
        """The echo of an agent's mark."""
        return build_mark(
            sequence_number=self._next_sequence_number(), stream_sid=self.stream_sid, name=name
        )

    def dtmf(self, digit: str) -> str:
        """A key the caller pressed."""
        return build_dtmf(
            sequence_number=self._next_sequence_number(), stream_sid=self.stream_sid, digit=digit
        )

    def stop(self) -> str:
        """The last message of the stream."""
        return build_stop(
            sequence_number=self._next_sequence_number(),
            stream_sid=self.stream_sid,
            call_sid=self.call_sid,
            account_sid=self.account_sid,
        )

    def _next_sequence_number(self) -> int:
        """Number the next message after `start`'s 1."""
        self._sequence_number += 1
        return self._sequence_number
