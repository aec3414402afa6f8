"""A channel's packets held as columns over its journal's bytes: ~30 bytes a packet, not ~350."""

# Building a recording needs every packet of both channels at once (placement looks back and
# ahead). As MediaPacket tuples, with a bytes object and five ints each, a 30-minute call held
# ~110 MB; as typed arrays beside the journal's own bytes it holds ~20 MB. Packets are built
# on access, so code that takes a Sequence[MediaPacket] reads them as before.

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

from mediaserver.rtp.media_packet import MediaPacket


class PacketColumns(Sequence[MediaPacket]):
    """Packets as parallel arrays (arrival, timestamp, sequence, SSRC, type, marker, payload)."""

    __slots__ = (
        "_arrival",
        "_data",
        "_length",
        "_marker",
        "_offset",
        "_payload_type",
        "_sequence",
        "_ssrc",
        "_timestamp",
    )

    def __init__(self, data: bytes) -> None:
        """Empty columns over `data`, the bytes the payloads are sliced from."""
        self._data = data
        self._arrival = array("q")
        self._timestamp = array("L")
        self._sequence = array("H")
        self._ssrc = array("L")
        self._payload_type = array("B")
        self._marker = array("B")
        self._offset = array("Q")
        self._length = array("L")

    def append(
        self,
        arrival_ns: int,
        rtp_timestamp: int,
        sequence: int,
        ssrc: int,
        payload_type: int,
        marker: bool,
        offset: int,
        length: int,
    ) -> None:
        """Add one packet whose payload is `data[offset:offset + length]`."""
        self._arrival.append(arrival_ns)
        self._timestamp.append(rtp_timestamp)
        self._sequence.append(sequence)
        self._ssrc.append(ssrc)
        self._payload_type.append(payload_type)
        self._marker.append(1 if marker else 0)
        self._offset.append(offset)
        self._length.append(length)

    def select(self, indices: Iterable[int]) -> PacketColumns:
        """The packets at these positions, in this order (the payload bytes are shared)."""
        chosen = PacketColumns(self._data)
        for index in indices:
            chosen.append(*self._fields(index))
        return chosen

    def _fields(self, index: int) -> tuple[int, int, int, int, int, bool, int, int]:
        """One packet's columns."""
        return (
            self._arrival[index],
            self._timestamp[index],
            self._sequence[index],
            self._ssrc[index],
            self._payload_type[index],
            bool(self._marker[index]),
            self._offset[index],
            self._length[index],
        )

    def __len__(self) -> int:
        """How many packets."""
        return len(self._arrival)

    @overload
    def __getitem__(self, index: int) -> MediaPacket: ...

    @overload
    def __getitem__(self, index: slice) -> list[MediaPacket]: ...

    def __getitem__(self, index: int | slice) -> MediaPacket | list[MediaPacket]:
        """One packet, built now; or a list of them for a slice."""
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        offset = self._offset[index]
        return MediaPacket(
            self._arrival[index],
            self._timestamp[index],
            self._sequence[index],
            self._ssrc[index],
            self._payload_type[index],
            bool(self._marker[index]),
            self._data[offset : offset + self._length[index]],
        )

    def __iter__(self) -> Iterator[MediaPacket]:
        """Every packet in order."""
        for index in range(len(self)):
            yield self[index]

    def payload(self, index: int) -> bytes:
        """One packet's payload."""
        offset = self._offset[index]
        return self._data[offset : offset + self._length[index]]

    @property
    def arrivals_ns(self) -> Sequence[int]:
        """Every packet's arrival time."""
        return self._arrival
