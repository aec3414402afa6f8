"""Each bad input of issue 10 gets its own clear 4xx on a real server; the parsers behind them."""

import asyncio
import json
import socket
import threading
from collections.abc import Iterator

import pytest

from mediaserver.api.auth import read_bearer_token
from mediaserver.api.body import MAX_JSON_DEPTH, check_json_depth, parse_json
from mediaserver.api.errors import ApiError
from mediaserver.errors import UnknownCallError

from server_harness import TOKEN, make_settings, running_server

BEARER_HEADER = f"Authorization: Bearer {TOKEN}".encode()
JSON = b"application/json"


def _raw_request(port: int, method: str, target: bytes, headers: list[bytes], body: bytes) -> bytes:
    """Send raw bytes (headers a client library would refuse) and read the whole answer."""
    head = [
        method.encode() + b" " + target + b" HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Connection: close",
    ]
    head += [*headers, b"Content-Length: " + str(len(body)).encode()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _status_and_body(answer: bytes) -> tuple[int, bytes]:
    """The status code and body of a raw HTTP/1.1 answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


CASES = [
    # (name, method, target, headers, body, status, words the message must contain)
    ("non-ascii token", "GET", b"/v1/calls", [b"Authorization: Bearer \xff"], b"", 401, "bearer"),
    ("utf-8 token", "GET", b"/v1/calls", ["Authorization: Bearer é".encode()], b"", 401, "bearer"),
    ("basic scheme", "GET", b"/v1/calls", [b"Authorization: Basic eDp5"], b"", 401, "bearer"),
    (
        "nested 5000 deep",
        "POST",
        b"/v1/calls",
        [BEARER_HEADER, b"Content-Type: " + JSON],
        b'{"metadata":' + b'{"a":' * 5000 + b"1" + b"}" * 5001,
        400,
        f"deeper than {MAX_JSON_DEPTH}",
    ),
    (
        "array 5000 deep",
        "POST",
        b"/v1/calls",
        [BEARER_HEADER, b"Content-Type: " + JSON],
        b"[" * 5000 + b"]" * 5000,
        400,
        "deeper",
    ),
    (
        "5000-digit integer",
        "POST",
        b"/v1/calls",
        [BEARER_HEADER, b"Content-Type: " + JSON],
        b'{"metadata": {"x": ' + b"7" * 5000 + b"}}",
        400,
        "send larger values as strings",
    ),
    (
        "1e999",
        "POST",
        b"/v1/calls",
        [BEARER_HEADER, b"Content-Type: " + JSON],
        b'{"metadata": {"x": 1e999}}',
        400,
        "1e999 is too large to be finite",
    ),
    (
        "NaN",
        "POST",
        b"/v1/calls",
        [BEARER_HEADER, b"Content-Type: " + JSON],
        b'{"metadata": {"x": NaN}}',
        400,
        "NaN is not a JSON number",
    ),
    (
        "Infinity in agent_format",
        "POST",
        b"/v1/calls",
        [BEARER_HEADER, b"Content-Type: " + JSON],
        b'{"agent_format": {"encoding": "audio/x-l16", "sample_rate": Infinity}}',
        400,
        "Infinity is not a JSON number",
    ),
    (
        "lone surrogate",
        "POST",
        b"/v1/calls",
        [BEARER_HEADER, b"Content-Type: " + JSON],
        b'{"metadata": {"x": "\\udc00"}}',
        400,
        "unpaired surrogate",
    ),
    (
        "invalid utf-8 json",
        "POST",
        b"/v1/calls",
        [BEARER_HEADER, b"Content-Type: " + JSON],
        b'{"metadata": {"x": "\xc3"}}',
        400,
        "not valid UTF-8 (byte 0xc3 at offset 20)",
    ),
    (
        "charset=bogus json",
        "POST",
        b"/v1/calls",
        [BEARER_HEADER, b"Content-Type: application/json; charset=bogus"],
        b"{}",
        415,
        "charset bogus is not supported",
    ),
    (
        "charset=bogus sdp",
        "POST",
        b"/whip",
        [BEARER_HEADER, b"Content-Type: application/sdp; charset=bogus"],
        b"v=0\r\n",
        415,
        "must be UTF-8",
    ),
    (
        "sdp with invalid utf-8",
        "POST",
        b"/whip",
        [BEARER_HEADER, b"Content-Type: application/sdp"],
        b"v=0\r\ns=\xff\r\n",
        400,
        "SDP body is not valid UTF-8 (byte 0xff at offset 7)",
    ),
    (
        "limit=x",
        "GET",
        b"/v1/recordings?limit=x",
        [BEARER_HEADER],
        b"",
        400,
        "limit must be an integer from 1 to 500",
    ),
    (
        "limit=9999",
        "GET",
        b"/v1/recordings?limit=9999",
        [BEARER_HEADER],
        b"",
        400,
        "limit must be an integer",
    ),
    ("unknown call", "GET", b"/v1/calls/abc", [BEARER_HEADER], b"", 404, "no live call abc"),
]


@pytest.fixture(scope="module")
def server_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real server shared by this module's tests, run on its own loop in a thread."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()
    ports: list[int] = []

    async def run() -> None:
        async with running_server(make_settings(tmp_path_factory.mktemp("bad-input"))) as (
            server,
            _,
        ):
            ports.append(server.port)
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),))
    thread.start()
    assert ready.wait(30), "the server did not start"
    yield ports[0]
    loop.call_soon_threadsafe(stop.set)
    thread.join(60)
    loop.close()


@pytest.mark.parametrize(
    ("method", "target", "headers", "body", "status", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_bad_input_gets_a_clear_4xx(
    server_port: int,
    method: str,
    target: bytes,
    headers: list[bytes],
    body: bytes,
    status: int,
    words: str,
) -> None:
    """The request gets the status and a JSON error whose message says what was wrong."""
    got, answer = _status_and_body(_raw_request(server_port, method, target, headers, body))
    assert got == status, answer
    message = json.loads(answer)["error"]["message"]
    assert words in message
    assert not message.startswith(("'", '"'))  # never a Python repr


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER", b"bEaReR"])
def test_auth_scheme_is_case_insensitive(server_port: int, scheme: bytes) -> None:
    """RFC 9110 §11.1: any case of "Bearer" with the right token is let in."""
    answer = _raw_request(
        server_port, "GET", b"/v1/calls", [b"Authorization: " + scheme + b" " + TOKEN.encode()], b""
    )
    assert _status_and_body(answer)[0] == 200


def test_agent_socket_rate_that_is_not_ascii_digits_is_refused(server_port: int) -> None:
    """?rate=%C2%B2 ("²", which str.isdigit() accepts) on the agent socket: 400, not 500."""
    created = _raw_request(
        server_port,
        "POST",
        b"/v1/calls",
        [BEARER_HEADER, b"Content-Type: " + JSON],
        b"{}",
    )
    call_id = json.loads(_status_and_body(created)[1])["call_id"]
    upgrade = [
        BEARER_HEADER,
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Sec-WebSocket-Version: 13",
    ]
    for query, words in (
        (b"format=l16&rate=%C2%B2", "rate must be a whole number"),
        (b"format=l16&rate=" + b"1" * 5000, "rate must be a whole number"),
        (b"format=opus", "format must be one of"),
    ):
        target = f"/v1/calls/{call_id}/agent?".encode() + query
        status, body = _status_and_body(_raw_request(server_port, "GET", target, upgrade, b""))
        assert status == 400, body
        assert words in json.loads(body)["error"]["message"]


def test_agent_socket_handshake_headers_that_are_not_utf8_are_refused(server_port: int) -> None:
    """Upgrade, Connection or version headers holding bytes that are not UTF-8: 400, not 500."""
    created = _raw_request(
        server_port, "POST", b"/v1/calls", [BEARER_HEADER, b"Content-Type: " + JSON], b"{}"
    )
    call_id = json.loads(_status_and_body(created)[1])["call_id"]
    good = {
        b"Upgrade": b"websocket",
        b"Connection": b"Upgrade",
        b"Sec-WebSocket-Version": b"13",
    }
    for name, words in (
        (b"Upgrade", "Upgrade: websocket"),
        (b"Connection", "Connection: Upgrade"),
        (b"Sec-WebSocket-Version", "Sec-WebSocket-Version: 13"),
    ):
        headers = [BEARER_HEADER, b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]
        headers += [
            key + b": " + (b"\xfe\xd6" if key == name else value) for key, value in good.items()
        ]
        target = f"/v1/calls/{call_id}/agent".encode()
        status, body = _status_and_body(_raw_request(server_port, "GET", target, headers, b""))
        assert status == 400, body
        assert words in json.loads(body)["error"]["message"]


# -- the parsers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", b"abc"),
        ("bearer abc", b"abc"),
        ("BEARER   abc", b"abc"),  # RFC 9110 §11.4: 1*SP after the scheme
        ("Bearer abc ", b"abc"),
        ("Bearer", None),
        ("Basic abc", None),
        ("Bearerabc", None),
        ("Bearer \udcff", None),  # how aiohttp hands over a 0xff byte
        ("Bearer é", None),
        ("", None),
    ],
)
def test_read_bearer_token(header: str, token: bytes | None) -> None:
    """The token is read from any case of the scheme; anything that is not ASCII is no token."""
    assert read_bearer_token(header) == token


@pytest.mark.parametrize(
    "data",
    [
        b"{}",
        b'{"a": [1, {"b": "[[[[{{{{"}]}',  # brackets inside strings do not count
        b'"\\"[[[["',  # nor after an escaped quote
        b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH,
    ],
)
def test_json_within_the_depth_limit_passes(data: bytes) -> None:
    """Nesting up to the limit is accepted, whatever brackets the strings contain."""
    check_json_depth(data)


@pytest.mark.parametrize(
    "data",
    [
        b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1),
        b"[" * 100_000,
        b"{" * (MAX_JSON_DEPTH + 1),
    ],
)
def test_json_past_the_depth_limit_is_refused(data: bytes) -> None:
    """One level too deep, or more unclosed brackets than the limit, is a 400 before parsing."""
    with pytest.raises(ApiError) as raised:
        check_json_depth(data)
    assert raised.value.status_code == 400


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b'{"n": 9007199254740991}', {"n": 9007199254740991}),
        (b'{"n": -9007199254740991}', {"n": -9007199254740991}),
        (b'{"n": 1.5e300}', {"n": 1.5e300}),
        (b'{"s": "\\ud83d\\ude00"}', {"s": "\U0001f600"}),  # a surrogate pair is one character
        (b"[]", []),
    ],
)
def test_parse_json_accepts_what_is_interoperable(data: bytes, value: object) -> None:
    """Integers within ±(2**53 - 1), finite floats and paired surrogates come through."""
    assert parse_json(data) == value


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b'{"n": 9007199254740992}', "outside"),
        (b'{"n": ' + b"1" * 4301 + b"}", "outside"),  # past CPython's int digit limit
        (b'{"n": -1e400}', "finite"),
        (b'{"n": Infinity}', "Infinity is not a JSON number"),
        (b'{"n": -Infinity}', "-Infinity is not a JSON number"),
        (b"{", "line 1 column 2"),
        (b'{"a": [1, 2}', "line 1 column 12"),  # a few unclosed brackets: json.loads says where
        (b"\xff", "byte 0xff at offset 0"),
        (b'"\\udc00"', "unpaired surrogate"),
    ],
)
def test_parse_json_refuses_with_a_reason(data: bytes, words: str) -> None:
    """Each refusal is a 400 that says what was wrong."""
    with pytest.raises(ApiError) as raised:
        parse_json(data)
    assert raised.value.status_code == 400
    assert words in raised.value.message


def test_unknown_call_error_reads_as_its_message() -> None:
    """str() of UnknownCallError is the message, not KeyError's quoted repr."""
    assert str(UnknownCallError("no live call abc")) == "no live call abc"


def test_a_megabyte_of_escaped_quotes_is_one_string() -> None:
    """The scan that skips strings handles a megabyte of escapes (no backtracking blow-up)."""
    data = b'"' + b'\\"' * 500_000 + b'"'
    check_json_depth(data)
    assert parse_json(data) == '"' * 500_000
