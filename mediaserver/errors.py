"""The one exception hierarchy of the media server."""

from typing import Any


class MediaServerError(Exception):
    """Base of every error the media server raises on purpose."""


class RtpParseError(MediaServerError, ValueError):
    """An RTP or RTCP packet is malformed."""


class SdpParseError(MediaServerError, ValueError):
    """A session description (RFC 8866) is malformed or too large."""


class SdpNegotiationError(MediaServerError, ValueError):
    """An SDP offer has nothing this server can answer (no usable audio, no codec in common)."""


class TelephoneEventError(RtpParseError):
    """An RFC 4733 telephone-event payload is malformed."""


class OpusPacketError(MediaServerError, ValueError):
    """An Opus packet violates RFC 6716 framing."""


class OggError(MediaServerError, ValueError):
    """An Ogg stream is malformed or is not Ogg Opus."""


class JournalError(MediaServerError, ValueError):
    """A packet journal is malformed."""


class MergeError(MediaServerError):
    """Channel files could not be merged to stereo."""


class CallStateError(MediaServerError):
    """An operation does not fit the call's current state."""


class UnknownCallError(CallStateError, KeyError):
    """No call has the given id."""

    def __str__(self) -> str:
        """The message as given: KeyError's own str() shows the repr of its argument."""
        return str(self.args[0]) if self.args else ""


class StorageError(MediaServerError):
    """A storage backend failed to store, read or delete an object."""


class ObjectNotFoundError(StorageError):
    """The storage backend has no object under the given key."""


class InvalidKeyError(StorageError, ValueError):
    """An object key is empty, absolute or escapes the storage root."""


class SettingsError(MediaServerError, ValueError):
    """A setting has an invalid value."""


class PcapImportError(MediaServerError, ValueError):
    """A packet capture cannot be turned into a recording."""


class AgentProtocolError(MediaServerError, ValueError):
    """An agent's WebSocket message breaks the Twilio Media Streams protocol."""

    def __init__(self, message: str, *, close_code: int = 1007) -> None:
        super().__init__(message)
        self.close_code = close_code  # RFC 6455 §7.4.1; 1007 = invalid payload data


class AgentDialError(MediaServerError):
    """The agent's WebSocket could not be reached or refused the connection."""


class OverloadedError(MediaServerError):
    """The node takes no new call now: it is at its call limit or its load is too high."""

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DrainingError(OverloadedError):
    """The node is shutting down and takes no new call."""


class SdpError(MediaServerError, ValueError):
    """An SDP offer or fragment cannot be used."""


class MalformedSdpError(SdpError):
    """The SDP is not well-formed."""


class UnsupportedSdpError(SdpError):
    """Well-formed SDP asking for what this server does not do."""


class WebRtcSetupError(MediaServerError):
    """The server could not set up its side of a WebRTC connection (a configuration problem)."""


class PortsExhaustedError(OverloadedError):
    """Every port of the RTP range is in use."""


class JobFailedError(MediaServerError):
    """A post-call job cannot produce its result; the job's state shows `code` and the message."""

    def __init__(
        self, message: str, *, code: str = "job_failed", details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.details = dict(details or {})


class TranscriptionError(JobFailedError):
    """A transcription backend failed for good (its retries are spent, or the error is final)."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "transcription_failed",
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details)


class RecordingQueryError(MediaServerError, ValueError):
    """A recordings query names a parameter with a value it cannot have."""


class AgentUrlError(MediaServerError, ValueError):
    """An agent_url names no agent this server can reach (not ws://, wss:// or a built-in one)."""


class ClusterUnavailableError(MediaServerError):
    """The cluster's shared state (Redis) cannot be reached, or the node that owns a call."""


# Recording lifecycle and access: audit, retention, encryption.


class AuditError(MediaServerError):
    """The audit log cannot be written or read, or holds a malformed event."""


class RecordingHeldError(CallStateError):
    """A recording under legal hold cannot be deleted."""


class EncryptionError(MediaServerError):
    """Encrypted data cannot be written or read: a wrong key, a damaged or tampered object."""


class EncryptionKeyUnavailableError(EncryptionError):
    """This server has no private key to unwrap a recording's data key: it stores, cannot play."""
