"""Read an Ogg Opus stream (RFC 7845) packet by packet with bounded memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from mediaserver.audio.ogg_page import NO_GRANULE_POSITION, OggPage, read_ogg_pages
from mediaserver.audio.opus_head import OpusHead, OpusTags, parse_opus_head, parse_opus_tags
from mediaserver.errors import OggError

# Bounds one packet's reassembly buffer: far above any Opus audio packet (RFC 6716 §3.4 caps a
# stream's packet near 61 KB) yet leaves room for OpusTags carrying cover art.
DEFAULT_MAX_PACKET_BYTES = 16 * 1024 * 1024
_SEQUENCE_MODULUS = 1 << 32


class OggOpusReader:
    """Parse the headers of one Ogg Opus stream, then iterate `(packet, granule or None)`."""

    # The granule position comes with the last packet that ends on its page (RFC 7845 §4);
    # other packets get None. Malformed, truncated, chained or multiplexed input raises OggError.

    def __init__(
        self,
        stream: BinaryIO,
        *,
        require_eos: bool = True,
        max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES,
    ) -> None:
        """Read pages up to the end of OpusTags; OggError if they are not Ogg Opus headers."""
        self._pages = read_ogg_pages(stream)
        self._require_eos = require_eos
        self._max_packet_bytes = max_packet_bytes
        self._partial = bytearray()
        self._has_partial = False
        self._eos_seen = False
        self._iterated = False
        self.last_granule_position: int | None = None
        """Granule position of the last page read that had one."""

        first_page = next(self._pages, None)
        if first_page is None:
            raise OggError("stream is empty: no Ogg page")
        if not first_page.is_bos or first_page.is_continued:
            raise OggError("first Ogg page does not begin a logical stream (no BOS flag)")
        self.serial = first_page.serial
        self._last_sequence = first_page.sequence
        packets = self._take_packets(first_page)
        # RFC 7845 §3: the identification header is alone on the first page.
        if len(packets) != 1 or self._has_partial:
            raise OggError("first Ogg page must hold the OpusHead packet and nothing else")
        self.head: OpusHead = parse_opus_head(packets[0][0])
        if first_page.is_eos:
            raise OggError("Ogg Opus stream ends after its OpusHead header")

        packets = []
        tags_page = first_page
        while not packets:
            page = self._next_page()
            if page is None or tags_page.is_eos:
                raise OggError("Ogg Opus stream ends before its OpusTags header")
            tags_page = page
            packets = self._take_packets(page)
        # RFC 7845 §3: audio starts on the page after the one where OpusTags ends.
        if len(packets) != 1 or self._has_partial:
            raise OggError("OpusTags header must end its Ogg page")
        self.tags: OpusTags = parse_opus_tags(packets[0][0])
        self._eos_seen = tags_page.is_eos
        self.last_granule_position = None

    def __iter__(self) -> Iterator[tuple[bytes, int | None]]:
        """Yield each audio packet with its page's granule position if it is the page's last."""
        if self._iterated:
            raise RuntimeError("an Ogg Opus stream can be iterated once")
        self._iterated = True
        while not self._eos_seen:
            page = self._next_page()
            if page is None:
                if self._has_partial:
                    raise OggError("Ogg Opus stream ends inside a packet")
                if self._require_eos:
                    raise OggError("Ogg Opus stream ends without an EOS page")
                return
            self._eos_seen = page.is_eos
            yield from self._take_packets(page)
        if self._has_partial:
            raise OggError("Ogg Opus stream ends inside a packet")
        if next(self._pages, None) is not None:
            raise OggError("data follows the EOS page: chained streams are not supported")

    def _next_page(self) -> OggPage | None:
        page = next(self._pages, None)
        if page is None:
            return None
        if page.serial != self.serial:
            raise OggError("Ogg page of another logical stream: multiplexed or chained streams")
        if page.is_bos:
            raise OggError("BOS flag on a page after the first")
        # RFC 3533 §6: sequence numbers go up by one; a jump means lost pages.
        expected_sequence = (self._last_sequence + 1) % _SEQUENCE_MODULUS
        if page.sequence != expected_sequence:
            raise OggError(f"Ogg page sequence jumps from {self._last_sequence} to {page.sequence}")
        self._last_sequence = page.sequence
        return page

    def _take_packets(self, page: OggPage) -> list[tuple[bytes, int | None]]:
        pieces, last_is_open = page.compute_segments()
        if page.is_continued != self._has_partial:
            raise OggError(
                "Ogg page continues a packet that was not begun"
                if page.is_continued
                else "Ogg page begins a new packet while one is unfinished"
            )
        if self._has_partial and pieces:
            self._partial += pieces[0]
            self._check_packet_size(len(self._partial))
            if len(pieces) == 1 and last_is_open:
                return []
            pieces[0] = bytes(self._partial)
            self._partial.clear()
            self._has_partial = False
        if last_is_open:
            self._check_packet_size(len(pieces[-1]))
            self._partial += pieces.pop()
            self._has_partial = True
        if not pieces:
            return []
        packets: list[tuple[bytes, int | None]] = [(piece, None) for piece in pieces]
        # RFC 3533 §6 / RFC 7845 §4: a page on which a packet ends carries a granule.
        if page.granule_position == NO_GRANULE_POSITION:
            raise OggError("Ogg page ends packets but has no granule position")
        packets[-1] = (pieces[-1], page.granule_position)
        self.last_granule_position = page.granule_position
        return packets

    def _check_packet_size(self, size_bytes: int) -> None:
        if size_bytes > self._max_packet_bytes:
            raise OggError(f"Ogg packet exceeds {self._max_packet_bytes} bytes")
