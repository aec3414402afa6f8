"""Symmetric RTP (RFC 4961): whose packets a leg hears, where it answers, when it follows a NAT."""

from __future__ import annotations

from typing import Any

import structlog

from mediaserver.errors import RtpParseError
from mediaserver.rtp.packet import is_rtcp, parse_rtp_header

log = structlog.get_logger(__name__)

Address = tuple[Any, ...]


class PeerLatch:
    """The one owner of who the caller is: latched from the first valid packet, re-latched later."""

    # `expected` is the only source ever heard (a bridge that said where it sends from);
    # `offered` (an SDP offer's address) only gets our audio until a valid packet latches its
    # real source. Once latched, another source takes over only after the latched one has been
    # silent `relatch_after_ns`: a NAT that rebinds moves the caller to a new source port, but a
    # stranger must never steal a live call.

    def __init__(
        self,
        *,
        expected: Address | None,
        offered: Address | None,
        relatch_after_ns: int,
        relatch_any_source: bool,
        port: int | None = None,
    ) -> None:
        self.expected = expected
        self.offered = offered
        self.relatch_after_ns = relatch_after_ns
        self.relatch_any_source = relatch_any_source
        self.port = port  # for the log lines
        self.peer: Address | None = None
        self.last_valid_ns = 0
        self.last_ssrc: int | None = None
        self.relatches = 0

    def heard(self, arrival_ns: int, ssrc: int) -> None:
        """A valid packet of the peer arrived."""
        self.last_valid_ns = arrival_ns
        self.last_ssrc = ssrc

    def may_be_peer(
        self, data: bytes, addr: Address, arrival_ns: int, payload_types: tuple[int | None, ...]
    ) -> bool:
        """Whether a datagram from another source than the latched peer may be the peer's."""
        if self.peer is None:
            # IPv6 sources carry flow info and scope id too: the expectation names host and port.
            return self.expected is None or addr[:2] == self.expected
        if self.expected is not None or arrival_ns - self.last_valid_ns < self.relatch_after_ns:
            return False  # never while the latched source is alive
        # The latched source has gone quiet: a NAT may have rebound the caller to a new port.
        if is_rtcp(data):
            return False
        try:
            header = parse_rtp_header(data)
        except RtpParseError:
            return False
        if header.payload_type not in payload_types:
            return False
        return self.relatch_any_source or header.ssrc == self.last_ssrc

    def latch(self, addr: Address) -> None:
        """Hear only this source from now on, and answer it."""
        previous, self.peer = self.peer, addr
        if previous is None:
            log.info("rtp.peer_latched", port=self.port, peer=f"{addr[0]}:{addr[1]}")
            return
        self.relatches += 1
        log.warning(
            "rtp.peer_relatched",
            port=self.port,
            previous=f"{previous[0]}:{previous[1]}",
            peer=f"{addr[0]}:{addr[1]}",
            relatches=self.relatches,
        )

    @property
    def destination(self) -> Address | None:
        """Where to send: the latched peer, else the expected or offered one."""
        if self.peer is not None:
            return self.peer
        return self.expected if self.expected is not None else self.offered

    @property
    def anyone_known(self) -> bool:
        """Whether a peer is latched or expected (an RTCP BYE from a stranger means nothing)."""
        return self.peer is not None or self.expected is not None
