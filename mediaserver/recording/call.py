"""What a recording's status can be, and why a call ended."""

from enum import Enum


class CallStatus(Enum):
    """Where a call's recording is in its life."""

    RECORDING = "recording"
    FINALIZING = "finalizing"
    STORED = "stored"
    UPLOAD_FAILED = "upload_failed"
    RECOVERED = "recovered"
    FAILED = "failed"
    EMPTY = "empty"  # the call carried no media: its manifest is all there is


class EndReason(Enum):
    """Why a call (or one of its legs) ended."""

    CALLER_HANGUP = "caller_hangup"  # the caller's transport closed (WebRTC closed or failed)
    WHIP_DELETE = "whip_delete"  # the WHIP client sent DELETE
    API = "api"  # DELETE /v1/calls/{id}
    RTCP_BYE = "rtcp_bye"  # the plain-RTP caller said BYE
    MEDIA_TIMEOUT = "media_timeout"  # the caller sent nothing for too long
    AGENT_EXIT = "agent_exit"  # the agent hung up and the call was set to end with it
    EXPIRED = "expired"  # idle past the retention; ended by the sweeper
    SHUTDOWN = "shutdown"  # the server drained past its timeout
    DIAL_FAILED = "dial_failed"  # the agent could not be dialled and the call ended with it
    SETUP_FAILED = "setup_failed"  # a leg could not be set up (no RTP port free, say)
    RECOVERED = "recovered"  # the process died; the spool was finalized at the next start
    INTERNAL_ERROR = "internal_error"  # a fault of the server ended the call
