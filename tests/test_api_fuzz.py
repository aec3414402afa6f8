"""Thousands of random requests at every route: no 5xx, and calls they do not own live on."""

import asyncio
import http.client
import json
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server_harness import TOKEN, auth, make_settings, running_server

EXAMPLES = 2500
OWNED = "\x00owned\x00"  # stands for the id of a call the fuzzer itself created
OWNED_USES_PER_CALL = 20
SOCKET_TIMEOUT_S = 10.0  # a request that hangs fails the test instead of stalling it

# -- what a request is made of ------------------------------------------------------------------

_texts = st.text(max_size=40)
_raw = st.binary(max_size=40)
# Path and query values: the fuzzer's own calls, plausible text, or any bytes, percent-encoded
# (most of the time) or raw on the request line.
_values = st.one_of(
    st.just(OWNED),
    st.sampled_from(["", "0", "-1", "1e3", "%C2%B2", "²", "x", "9" * 5000, "..", "a/b", "stereo"]),
    _texts,
    _raw,
)
_query_names = st.one_of(
    st.sampled_from(["limit", "cursor", "from", "to", "channel", "rate", "format", "call_id"]),
    _texts,
)
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | _texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_texts, children, max_size=4),
    max_leaves=12,
)
_call_fields = st.fixed_dictionaries(
    {},
    optional={
        "call_id": st.one_of(st.just(OWNED), _texts, _json_values),
        "caller_codec": st.one_of(st.sampled_from(["opus", "pcmu", "pcma", "g729"]), _json_values),
        "codec": st.one_of(st.sampled_from(["opus", "pcmu", "pcma"]), _json_values),
        "agent_url": st.one_of(
            # Port 9 (discard) on loopback refuses at once: the dial-out fails, the call goes on.
            st.sampled_from(["ws://127.0.0.1:9/agent", "http://x", "ws://", "wss://[::1"]),
            _json_values,
        ),
        "agent_format": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "encoding": st.one_of(
                        st.sampled_from(["audio/x-l16", "audio/x-mulaw"]), _texts
                    ),
                    "sample_rate": st.one_of(
                        st.sampled_from([8000, 16000, 24000, 1e999, -1]), _json_values
                    ),
                },
            ),
            _json_values,
        ),
        "metadata": _json_values,
        "colour": _json_values,
    },
)
_NASTY_BODIES = [
    b"[" * 5000 + b"]" * 5000,
    b'{"metadata":' + b'{"a":' * 5000 + b"1" + b"}" * 5001,
    b'{"metadata":{"x":' + b"9" * 5000 + b"}}",
    b'{"metadata":{"x":1e999}}',
    b'{"metadata":{"x":NaN}}',
    b'{"metadata":{"x":-Infinity}}',
    b'{"metadata":{"x":"\\ud800"}}',
    b'"\\',
    b'"' + b'\\"' * 2000,
    b"\xef\xbb\xbf{}",
    b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\n\xff\xfe\r\n",
    b"v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n",
    b"a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n",
]
_sdp_lines = st.one_of(
    st.sampled_from(
        [
            "v=0",
            "o=- 0 0 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            "c=IN IP4 127.0.0.1",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "m=audio 5004 RTP/AVP 97 0 8 101",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
            "a=rtpmap:111 opus/48000/2",
            "a=rtpmap:x opus/48000/2",
            "a=mid:0",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:0123456789012345678901",
            "a=fingerprint:sha-256 00:11",
            "a=setup:actpass",
            "a=sendrecv",
            "a=end-of-candidates",
            "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host",
        ]
    ),
    _texts,
)
_bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=300),
    _json_values.map(lambda value: json.dumps(value).encode()),
    _call_fields.map(lambda value: json.dumps(value).encode()),
    st.sampled_from(_NASTY_BODIES),
    st.lists(_sdp_lines, max_size=12).map(
        lambda lines: "\r\n".join(lines).encode("utf-8", "replace")
    ),
)
_authorization = st.one_of(
    st.just(f"Bearer {TOKEN}".encode()),
    st.just(f"Bearer {TOKEN}".encode()),
    st.just(f"Bearer {TOKEN}".encode()),
    st.sampled_from(
        [
            f"bearer {TOKEN}".encode(),
            f"BEARER   {TOKEN}".encode(),
            b"Bearer \xff",
            b"Bearer " + "é".encode(),
            b"Basic dXNlcjpwYXNz",
            b"Bearer",
            b"",
            TOKEN.encode(),
        ]
    ),
    _raw.map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"")),
)
_content_types = st.one_of(
    st.sampled_from(
        [
            b"application/json",
            b"application/json; charset=utf-8",
            b"application/json; charset=UTF-8",
            b"application/json; charset=bogus",
            b"application/json; charset=latin-1",
            b"application/sdp",
            b"application/sdp; charset=bogus",
            b"application/trickle-ice-sdpfrag",
            b"text/plain",
            b"multipart/form-data; boundary=x",
            b"application/x-www-form-urlencoded",
            b'application/json; charset="\xff"',
            b"application/json; charset",
            b";;;",
        ]
    ),
    _raw.map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"")),
)
_header_values = st.one_of(
    st.sampled_from(
        [
            b"bytes=0-10",
            b"bytes=-5",
            b"bytes=" + b"9" * 40 + b"-",
            b"bytes=5-1",
            b'"abc"',
            b"*",
            b"websocket",
            b"Upgrade",
            b"13",
            b"dGhlIHNhbXBsZSBub25jZQ==",
        ]
    ),
    _raw.map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"")),
)
_header_names = st.sampled_from(
    [
        b"Range",
        b"If-Range",
        b"If-None-Match",
        b"If-Match",
        b"Upgrade",
        b"Connection",
        b"Sec-WebSocket-Key",
        b"Sec-WebSocket-Version",
        b"Accept",
        b"Origin",
        b"X-Anything",
    ]
)


@dataclass(frozen=True)
class FuzzRequest:
    """One request as drawn: its parts before the fuzzer's own call ids are filled in."""

    method: str
    path_parts: tuple[tuple[str | bytes, bool], ...]  # (piece, drawn?) in order
    query: tuple[tuple[str | bytes, str | bytes, bool], ...]  # name, value, percent-encode?
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


@dataclass
class Tally:
    """What the fuzzer saw."""

    statuses: Counter[int] = field(default_factory=Counter)
    created: set[str] = field(default_factory=set)  # calls the fuzzer's requests created
    owned: list[str] = field(default_factory=list)  # calls made for the fuzzer to target
    owned_uses: int = 0


def _template_parts(canonical: str) -> list[str | None]:
    """A route's path as literal pieces, None where a variable goes."""
    parts: list[str | None] = []
    for piece in canonical.split("/")[1:]:
        parts.append("/")
        parts.append(None if piece.startswith("{") else piece)
    return parts


@st.composite
def fuzz_requests(draw: st.DrawFn, routes: list[tuple[str, str]]) -> FuzzRequest:
    """A random request at one of the app's routes (or, now and then, at none of them)."""
    method, canonical = draw(st.sampled_from(routes))
    if draw(st.integers(0, 19)) == 0:
        method = draw(st.sampled_from(["PUT", "TRACE", "PROPFIND", "GET", "POST", "DELETE"]))
    path_parts: list[tuple[str | bytes, bool]] = []
    for piece in _template_parts(canonical):
        path_parts.append((draw(_values), True) if piece is None else (piece, False))
    if draw(st.integers(0, 29)) == 0:
        path_parts += [("/", False), (draw(_values), True)]  # past the route's end
    query = tuple(draw(st.lists(st.tuples(_query_names, _values, st.booleans()), max_size=3)))
    headers: list[tuple[bytes, bytes]] = []
    authorization = draw(_authorization)
    if authorization:
        headers.append((b"Authorization", authorization))
    if draw(st.booleans()):
        headers.append((b"Content-Type", draw(_content_types)))
    headers += draw(st.lists(st.tuples(_header_names, _header_values), max_size=3))
    return FuzzRequest(method, tuple(path_parts), query, tuple(headers), draw(_bodies))


# -- sending ------------------------------------------------------------------------------------


def _send(
    port: int, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection, as raw bytes; the status, headers and body back."""
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [name + b": " + value for name, value in headers]
    lines += [b"Connection: close", b"Content-Length: " + str(len(body)).encode()]
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        if response.status == 101:  # an agent WebSocket was accepted: hang up at once
            return 101, dict(response.getheaders()), b""
        return response.status, dict(response.getheaders()), response.read()


def _owned_call(port: int, tally: Tally) -> str:
    """A call the fuzzer made for itself: a new one every few uses (requests end some)."""
    tally.owned_uses += 1
    if tally.owned_uses % OWNED_USES_PER_CALL == 1:
        status, _, body = _send(
            port,
            "POST",
            b"/v1/calls",
            [
                (b"Authorization", f"Bearer {TOKEN}".encode()),
                (b"Content-Type", b"application/json"),
            ],
            b"{}",
        )
        assert status == 201, body
        tally.owned.append(json.loads(body)["call_id"])
    return tally.owned[-1]


def _encode(value: str | bytes, owned: str, percent: bool) -> bytes:
    """A path or query value as it goes on the request line."""
    text = owned if value == OWNED else value
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if percent:
        return quote(raw, safe="").encode()
    # Raw bytes on the request line, save those that would end it (they would make it another
    # request, not a stranger one).
    return raw.translate(None, b" \r\n#?&=") or b"x"


def _target(request: FuzzRequest, owned: str, percent_path: bool) -> bytes:
    """The request target: path, then query."""
    path = b"".join(
        _encode(piece, owned, percent_path) if drawn else str(piece).encode()
        for piece, drawn in request.path_parts
    )
    if not request.query:
        return path
    pairs = [
        _encode(name, owned, percent) + b"=" + _encode(value, owned, percent)
        for name, value, percent in request.query
    ]
    return path + b"?" + b"&".join(pairs)


def _check_error_body(method: str, status: int, headers: dict[str, str], body: bytes) -> None:
    """An error from the app is {"error": {"code", "message"}} with a message, not a repr."""
    if (
        method == "HEAD"
        or status < 400
        or not headers.get("Content-Type", "").startswith("application/json")
    ):
        return
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message"}, body
    assert error["message"], body
    assert not error["message"].startswith(("'", '"')), body  # never a Python repr


async def test_random_requests_never_get_a_5xx_nor_touch_other_calls(tmp_path: Path) -> None:
    """Random bytes, JSON, headers and queries at every route: no 5xx; other calls live on."""
    server_settings = make_settings(tmp_path, max_body_bytes=64 * 1024, rtp_media_timeout_s=600.0)
    async with (
        running_server(server_settings) as (server, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        routes = sorted(
            {(route.method, route.resource.canonical) for route in server.app.router.routes()}
        )
        assert len(routes) >= 15, routes

        # Bystanders: calls the fuzzer never names. One has a plain-RTP leg.
        bystanders: dict[str, dict[str, Any]] = {}
        for body in ({}, {"caller_codec": "pcmu", "metadata": {"who": "bystander"}}):
            async with client.post(f"{base}/v1/calls", json=body) as response:
                assert response.status == 201
                call_id = (await response.json())["call_id"]
            async with client.post(f"{base}/v1/calls/{call_id}/rtp", json={}) as response:
                assert response.status == 201
            async with client.get(f"{base}/v1/calls/{call_id}") as response:
                bystanders[call_id] = await response.json()

        tally = Tally()

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(request=fuzz_requests(routes), percent_path=st.integers(0, 4))
        def one_request(request: FuzzRequest, percent_path: int) -> None:
            uses_owned = (OWNED, True) in request.path_parts or any(
                OWNED in (name, value) for name, value, _ in request.query
            )
            owned = _owned_call(server.port, tally) if uses_owned else ""
            target = _target(request, owned, percent_path != 0)
            status, headers, body = _send(
                server.port, request.method, target, list(request.headers), request.body
            )
            tally.statuses[status] += 1
            assert status < 500, (status, request.method, target, request.headers, body)
            _check_error_body(request.method, status, headers, body)
            if status == 201 and request.method == "POST":
                location = headers.get("Location", "")
                path = urlsplit(location).path
                if path.startswith(("/v1/calls/", "/whip/")) and path.count("/") <= 3:
                    tally.created.add(path.rsplit("/", 1)[-1])

        started_s = time.monotonic()
        await asyncio.to_thread(one_request)
        elapsed_s = time.monotonic() - started_s

        async with client.get(f"{base}/v1/calls") as response:
            assert response.status == 200
            live = {call["call_id"]: call for call in (await response.json())["calls"]}
        print(
            f"{sum(tally.statuses.values())} requests over {len(routes)} routes"
            f" in {elapsed_s:.1f} s;"
            f" statuses {dict(sorted(tally.statuses.items()))};"
            f" calls created by them {len(tally.created)}, made to target {len(tally.owned)}"
        )
        assert set(bystanders) <= set(live)
        assert set(live) - set(bystanders) <= tally.created | set(tally.owned)
        for call_id, before in bystanders.items():
            assert live[call_id] == before  # not a counter moved
        assert max(tally.statuses) < 500
