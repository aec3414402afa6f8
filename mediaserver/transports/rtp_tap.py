"""The one module that reaches into aiortc's private receive path, to see inbound RTP undecoded."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import Enum

from aiortc import RTCRtpReceiver
from aiortc.rtp import RtpPacket

# aiortc 1.16 hands every SRTP-decrypted inbound packet to this coroutine method of the receiver
# it is routed to (RTCDtlsTransport._handle_rtp_data → RtpRouter → receiver). Both names are
# private: tests pin their signatures so an aiortc upgrade that changes them fails loudly.
HANDLE_RTP_PACKET = "_handle_rtp_packet"
# Stops the receiver's decoder thread (aiortc calls it when the DTLS transport goes away).
HANDLE_DISCONNECT = "_handle_disconnect"

RtpPacketHandler = Callable[[RtpPacket], None]
_ReceiveMethod = Callable[[RtpPacket, int], Awaitable[None]]


class AiortcReceivePath(Enum):
    """What aiortc itself still does with an inbound packet once the tap has seen it."""

    # Jitter buffer and RTCP receiver statistics, so the caller still gets receiver reports
    # (loss and jitter feed its encoder's adaptation).
    STATISTICS = "statistics"
    # Nothing: the receiver never sees the packet, and its receiver reports stay empty.
    NONE = "none"


def tap_receiver(
    receiver: RTCRtpReceiver, on_packet: RtpPacketHandler, aiortc_path: AiortcReceivePath
) -> None:
    """Call `on_packet` with every RTP packet routed to `receiver`, before aiortc handles it."""
    # aiortc's decoder thread is stopped either way: its frames would only pile up on a remote
    # track nobody reads, as the caller's audio is decoded once, from the tapped packets.
    aiortc_handle: _ReceiveMethod = getattr(receiver, HANDLE_RTP_PACKET)
    stop_decoder: Callable[[], None] = getattr(receiver, HANDLE_DISCONNECT)
    decoder_running = True

    async def handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
        nonlocal decoder_running
        on_packet(packet)
        if decoder_running:
            # The receiver starts its decoder thread before it is routed any packet, so
            # stopping it at the first packet leaves it nothing to decode.
            stop_decoder()
            decoder_running = False
        if aiortc_path is AiortcReceivePath.STATISTICS:
            await aiortc_handle(packet, arrival_time_ms)

    # The router looks the method up on the instance for every packet, so an instance
    # attribute shadows the class's method for this receiver only.
    setattr(receiver, HANDLE_RTP_PACKET, handle_rtp_packet)
