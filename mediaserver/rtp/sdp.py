"""SDP session descriptions (RFC 8866): text parsed into plain values and built back from them."""

# Only the lines that describe where RTP goes and what it carries are kept: v, o, s, c, b, t, a
# and m (with their media-level c, b and a). The other letters RFC 8866 §5 defines (i, u, e, p,
# r, z, k) are read and dropped; a letter it does not define makes the whole description invalid
# (RFC 8866 §5 has a parser ignore the whole description in that case). Line order within a
# section is not enforced, as
# most parsers do not enforce it either; lines may end in CRLF or LF (RFC 8866 §5 asks parsers to
# accept both).
#
# Input is bounded before any work: characters, lines, media sections and formats per m-line.
# Parsing is one pass over the lines, each split once, so time and memory are linear in the
# input and nothing grows quadratically with lines or candidates.

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mediaserver.errors import SdpParseError

MAX_SDP_CHARS = 64 * 1024
MAX_SDP_LINES = 1024
MAX_MEDIA_SECTIONS = 32
MAX_FORMATS = 128  # RTP payload types run 0-127 (RFC 3550 §5.1)
# RFC 8866 §5: the letters a description may use; the ones not modelled are dropped.
_KNOWN_TYPES = frozenset("vosiuepcbtrzkam")
_DROPPED_TYPES = frozenset("iuepzkr")
# RFC 8866 §9: token = 1*(token-char); attribute names are tokens.
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_PORT = re.compile(r"[0-9]{1,5}")
_NUMBER = re.compile(r"[0-9]{1,20}")


@dataclass(frozen=True, slots=True)
class Attribute:
    """One a= line: a property `name` or a value attribute `name:value` (RFC 8866 §5.13)."""

    name: str
    value: str | None = None


@dataclass(frozen=True, slots=True)
class Connection:
    """A c= line (RFC 8866 §5.7): `IN IP4 192.0.2.1`; the address keeps any /ttl suffix."""

    address: str
    address_type: str = "IP4"
    network_type: str = "IN"


@dataclass(frozen=True, slots=True)
class Origin:
    """The o= line (RFC 8866 §5.2); the numeric ids stay text (they may exceed 64 bits)."""

    username: str = "-"
    session_id: str = "0"
    session_version: str = "0"
    network_type: str = "IN"
    address_type: str = "IP4"
    address: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class MediaDescription:
    """One m= section (RFC 8866 §5.14) with its own c=, b= and a= lines."""

    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    port_count: int | None = None  # m=audio 49170/2 ...
    connection: Connection | None = None
    bandwidths: tuple[str, ...] = ()  # b= values as written, e.g. "AS:64"
    attributes: tuple[Attribute, ...] = ()


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A whole description: the session-level lines and the media sections in order."""

    origin: Origin = field(default_factory=Origin)
    session_name: str = "-"
    connection: Connection | None = None
    bandwidths: tuple[str, ...] = ()
    times: tuple[tuple[str, str], ...] = (("0", "0"),)  # t= start and stop (RFC 8866 §5.9)
    attributes: tuple[Attribute, ...] = ()
    media: tuple[MediaDescription, ...] = ()


class _MediaBuilder:
    """The lines of one m= section while it is being read."""

    __slots__ = ("attributes", "bandwidths", "connection", "head")

    def __init__(self, head: MediaDescription) -> None:
        """Start with the m= line itself."""
        self.head = head
        self.connection: Connection | None = None
        self.bandwidths: list[str] = []
        self.attributes: list[Attribute] = []

    def build(self) -> MediaDescription:
        """The finished section."""
        return MediaDescription(
            media=self.head.media,
            port=self.head.port,
            proto=self.head.proto,
            formats=self.head.formats,
            port_count=self.head.port_count,
            connection=self.connection,
            bandwidths=tuple(self.bandwidths),
            attributes=tuple(self.attributes),
        )


def parse_sdp(text: str) -> SessionDescription:
    """Parse a session description; SdpParseError that names the line otherwise."""
    if len(text) > MAX_SDP_CHARS:
        raise SdpParseError(f"SDP is {len(text)} characters, more than {MAX_SDP_CHARS}")
    lines = text.split("\n")
    if len(lines) > MAX_SDP_LINES:
        raise SdpParseError(f"SDP has {len(lines)} lines, more than {MAX_SDP_LINES}")
    origin: Origin | None = None
    session_name: str | None = None
    session_connection: Connection | None = None
    session_bandwidths: list[str] = []
    times: list[tuple[str, str]] = []
    session_attributes: list[Attribute] = []
    media: list[_MediaBuilder] = []
    seen_version = False
    for number, raw_line in enumerate(lines, start=1):
        line = raw_line[:-1] if raw_line.endswith("\r") else raw_line
        if not line:
            continue  # a final line break, or a stray blank line: nothing to read
        kind, equals, value = line[0], line[1:2], line[2:]
        if equals != "=":
            raise SdpParseError(f"SDP line {number} is not <type>=<value>")
        if kind not in _KNOWN_TYPES:
            raise SdpParseError(f"SDP line {number} has a type letter RFC 8866 does not define")
        if "\r" in value or "\x00" in value:
            raise SdpParseError(f"SDP line {number} contains CR or NUL (RFC 8866 §9)")
        if not seen_version:
            # RFC 8866 §5.1: the description starts with v=0.
            if kind != "v" or value != "0":
                raise SdpParseError("SDP does not start with v=0")
            seen_version = True
            continue
        if kind in _DROPPED_TYPES:
            continue
        current = media[-1] if media else None
        if kind == "m":
            if len(media) == MAX_MEDIA_SECTIONS:
                raise SdpParseError(f"SDP has more than {MAX_MEDIA_SECTIONS} media sections")
            media.append(_MediaBuilder(_parse_media_line(value, number)))
        elif kind == "a":
            attribute = _parse_attribute(value, number)
            (current.attributes if current else session_attributes).append(attribute)
        elif kind == "c":
            connection = _parse_connection(value, number)
            if current is None:
                session_connection = connection
            else:
                current.connection = connection
        elif kind == "b":
            if ":" not in value:
                raise SdpParseError(f"SDP line {number}: b= is not <bwtype>:<bandwidth>")
            (current.bandwidths if current else session_bandwidths).append(value)
        elif current is not None:
            raise SdpParseError(f"SDP line {number}: {kind}= belongs before the first m= line")
        elif kind == "o":
            origin = _parse_origin(value, number)
        elif kind == "s":
            session_name = value
        elif kind == "t":
            start, _, stop = value.partition(" ")
            if not _NUMBER.fullmatch(start) or not _NUMBER.fullmatch(stop):
                raise SdpParseError(f"SDP line {number}: t= is not <start> <stop>")
            times.append((start, stop))
        else:
            raise SdpParseError(f"SDP line {number}: v= appears twice")
    if not seen_version:
        raise SdpParseError("SDP does not start with v=0")
    if origin is None:
        raise SdpParseError("SDP has no o= line (RFC 8866 §5.2)")
    return SessionDescription(
        origin=origin,
        session_name="-" if session_name is None else session_name,
        connection=session_connection,
        bandwidths=tuple(session_bandwidths),
        times=tuple(times) or (("0", "0"),),
        attributes=tuple(session_attributes),
        media=tuple(builder.build() for builder in media),
    )


def _parse_origin(value: str, number: int) -> Origin:
    """o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>."""
    fields = value.split(" ")
    if len(fields) != 6 or not all(fields):
        raise SdpParseError(f"SDP line {number}: o= does not have six fields")
    username, session_id, session_version, network_type, address_type, address = fields
    if not _NUMBER.fullmatch(session_id) or not _NUMBER.fullmatch(session_version):
        raise SdpParseError(f"SDP line {number}: o= session id and version must be numbers")
    return Origin(username, session_id, session_version, network_type, address_type, address)


def _parse_connection(value: str, number: int) -> Connection:
    """c=<nettype> <addrtype> <connection-address>."""
    fields = value.split(" ")
    if len(fields) != 3 or not all(fields):
        raise SdpParseError(f"SDP line {number}: c= does not have three fields")
    network_type, address_type, address = fields
    return Connection(address, address_type, network_type)


def _parse_media_line(value: str, number: int) -> MediaDescription:
    """m=<media> <port>[/<number of ports>] <proto> <fmt> ..."""
    fields = value.split(" ")
    if len(fields) < 4 or not all(fields):
        raise SdpParseError(f"SDP line {number}: m= needs media, port, proto and a format")
    if len(fields) - 3 > MAX_FORMATS:
        raise SdpParseError(f"SDP line {number}: m= lists more than {MAX_FORMATS} formats")
    media, port_text, proto, *formats = fields
    port_text, slash, count_text = port_text.partition("/")
    if not _PORT.fullmatch(port_text) or int(port_text) > 0xFFFF:
        raise SdpParseError(f"SDP line {number}: m= port is not 0-65535")
    port_count: int | None = None
    if slash:
        if not _PORT.fullmatch(count_text) or int(count_text) == 0:
            raise SdpParseError(f"SDP line {number}: m= number of ports is not a positive number")
        port_count = int(count_text)
    return MediaDescription(media, int(port_text), proto, tuple(formats), port_count)


def _parse_attribute(value: str, number: int) -> Attribute:
    """a=<name> or a=<name>:<value>."""
    name, colon, attribute_value = value.partition(":")
    if not _TOKEN.fullmatch(name):
        raise SdpParseError(f"SDP line {number}: a= attribute name is not a token")
    return Attribute(name, attribute_value if colon else None)


def build_sdp(description: SessionDescription) -> str:
    """The description as text, lines in RFC 8866 §5 order, each ended by CRLF."""
    origin = description.origin
    lines = [
        "v=0",
        f"o={origin.username} {origin.session_id} {origin.session_version}"
        f" {origin.network_type} {origin.address_type} {origin.address}",
        f"s={description.session_name}",
    ]
    if description.connection is not None:
        lines.append(_connection_line(description.connection))
    lines += [f"b={bandwidth}" for bandwidth in description.bandwidths]
    lines += [f"t={start} {stop}" for start, stop in description.times]
    lines += [_attribute_line(attribute) for attribute in description.attributes]
    for media in description.media:
        port = f"{media.port}" if media.port_count is None else f"{media.port}/{media.port_count}"
        lines.append(f"m={media.media} {port} {media.proto} {' '.join(media.formats)}")
        if media.connection is not None:
            lines.append(_connection_line(media.connection))
        lines += [f"b={bandwidth}" for bandwidth in media.bandwidths]
        lines += [_attribute_line(attribute) for attribute in media.attributes]
    return "\r\n".join(lines) + "\r\n"


def _connection_line(connection: Connection) -> str:
    """A c= line."""
    return f"c={connection.network_type} {connection.address_type} {connection.address}"


def _attribute_line(attribute: Attribute) -> str:
    """An a= line."""
    if attribute.value is None:
        return f"a={attribute.name}"
    return f"a={attribute.name}:{attribute.value}"
