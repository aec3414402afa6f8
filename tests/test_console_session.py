"""Console sign-in: a signed, expiring HttpOnly cookie for the API token; Origin on changes."""

from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from mediaserver.access.sign_in_limiter import SignInLimiter
from mediaserver.access.tokens import TokenTable, compute_token_digest
from mediaserver.api.console_session import (
    CONSOLE_SESSIONS,
    COOKIE_NAME,
    build_session_value,
    check_session_value,
    derive_session_key,
    is_same_origin,
    safe_next_path,
)
from mediaserver.app import create_app
from mediaserver.clock import ManualClock
from mediaserver.settings import Settings

from server_harness import make_settings

TOKEN = "console-token-0123456789"
NOW_NS = 1_800_000_000 * 10**9


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    """A test server's settings (server_harness), with its own token and a 1-hour session."""
    defaults: dict[str, Any] = {"api_token": TOKEN, "console_session_ttl_s": 3600.0}
    return make_settings(tmp_path, **(defaults | overrides))


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The real application on 127.0.0.1, its sessions on a manual clock."""
    app = create_app(settings_for(tmp_path))
    app[CONSOLE_SESSIONS].clock = ManualClock(wall_ns=NOW_NS)
    test_client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(app, host="127.0.0.1", port=0)
    )
    await test_client.start_server()
    yield test_client
    await test_client.close()


def origin(client: TestClient[web.Request, web.Application]) -> dict[str, str]:
    """The Origin header a page of this server sends."""
    return {"Origin": f"http://{client.host}:{client.port}"}


async def sign_in(client: TestClient[web.Request, web.Application]) -> str:
    """Sign in with the token; the cookie's value."""
    response = await client.post("/login", json={"token": TOKEN}, headers=origin(client))
    assert response.status == 200, await response.text()
    morsel = SimpleCookie(response.headers["Set-Cookie"])[COOKIE_NAME]
    client.session.cookie_jar.clear()  # each test sends the cookie it means, explicitly
    return morsel.value


def with_cookie(value: str, **headers: str) -> dict[str, str]:
    """Request headers carrying the session cookie."""
    return {"Cookie": f"{COOKIE_NAME}={value}", **headers}


async def test_the_right_token_gets_an_http_only_strict_cookie(
    client: TestClient[web.Request, web.Application],
) -> None:
    """The cookie's attributes; Secure when the browser came over HTTPS through a proxy."""
    response = await client.post(
        "/login", json={"token": TOKEN, "next": "/live"}, headers=origin(client)
    )
    header = response.headers["Set-Cookie"]
    morsel = SimpleCookie(header)[COOKIE_NAME]
    proxied = await client.post(
        "/login", json={"token": TOKEN}, headers=origin(client) | {"X-Forwarded-Proto": "https"}
    )

    assert response.status == 200
    assert await response.json() == {"next": "/live"}
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/"
    assert morsel["max-age"] == "3600"
    assert not morsel["secure"]
    assert TOKEN not in header
    assert SimpleCookie(proxied.headers["Set-Cookie"])[COOKIE_NAME]["secure"] is True


async def test_a_wrong_token_is_refused_with_a_clear_message(
    client: TestClient[web.Request, web.Application],
) -> None:
    """401, a message a person understands, no cookie."""
    response = await client.post("/login", json={"token": "guess"}, headers=origin(client))
    body = await response.json()
    assert response.status == 401
    assert body["error"] == {
        "code": "unauthorized",
        "message": "That is not this server's API token.",
    }
    assert "Set-Cookie" not in response.headers


async def test_the_cookie_opens_reads_and_same_origin_changes(
    client: TestClient[web.Request, web.Application],
) -> None:
    """GETs (pages, list, audio, peaks) pass; DELETE passes only from this origin."""
    value = await sign_in(client)
    for path in ("/v1/recordings", "/v1/calls", "/", "/live", "/recordings/abc"):
        response = await client.get(path, headers=with_cookie(value))
        assert response.status == 200, path
    for path in ("/v1/recordings/abc/audio", "/v1/recordings/abc/peaks"):
        response = await client.get(path, headers=with_cookie(value))
        assert response.status == 404, path  # past authentication: there is no such recording
    same = await client.delete("/v1/calls/abc", headers=with_cookie(value, **origin(client)))
    foreign = await client.delete(
        "/v1/calls/abc", headers=with_cookie(value, Origin="http://evil.example")
    )
    none = await client.delete("/v1/calls/abc", headers=with_cookie(value))
    created = await client.post("/v1/calls", json={}, headers=with_cookie(value, **origin(client)))

    assert same.status == 404  # authorized; the call does not exist
    assert foreign.status == 403
    assert none.status == 403
    assert (await foreign.json())["error"]["code"] == "forbidden"
    assert created.status == 201


async def test_expired_forged_and_foreign_cookies_are_refused(
    client: TestClient[web.Request, web.Application], tmp_path: Path
) -> None:
    """After the TTL, with a changed signature, or signed for another token: 401."""
    value = await sign_in(client)
    expires, nonce, name, signature = value.split(".")
    forged = f"{int(expires) + 10_000}.{nonce}.{name}.{signature}"
    other_key = derive_session_key("another-token")
    foreign = build_session_value(
        other_key,
        expires_at_s=int(expires),
        nonce=nonce,
        name=name,
        token_digest=compute_token_digest(TOKEN),
    )
    for bad in (forged, foreign, "", "1.2", value + "0"):
        response = await client.get("/v1/recordings", headers=with_cookie(bad))
        assert response.status == 401, bad
    clock = client.app[CONSOLE_SESSIONS].clock
    assert isinstance(clock, ManualClock)
    clock.advance(3599.0)
    assert (await client.get("/v1/recordings", headers=with_cookie(value))).status == 200
    clock.advance(1.0)
    assert (await client.get("/v1/recordings", headers=with_cookie(value))).status == 401


async def test_the_bearer_token_still_works_and_websockets_ignore_cookies(
    client: TestClient[web.Request, web.Application],
) -> None:
    """API clients keep their token; an agent WebSocket cannot ride on a console cookie."""
    value = await sign_in(client)
    bearer = await client.get("/v1/recordings", headers={"Authorization": f"Bearer {TOKEN}"})
    upgrade = await client.get(
        "/v1/calls/abc/agent",
        headers=with_cookie(value, Upgrade="websocket", Connection="Upgrade"),
    )
    assert bearer.status == 200
    assert upgrade.status == 401


async def test_pages_send_browsers_to_sign_in_and_api_clients_get_401(
    client: TestClient[web.Request, web.Application],
) -> None:
    """Without a session: pages redirect to /login?next=...; JSON callers get JSON."""
    page = await client.get(
        "/recordings/abc?x=1", headers={"Accept": "text/html"}, allow_redirects=False
    )
    api = await client.get("/v1/recordings", headers={"Accept": "application/json"})
    login = await client.get("/login")
    script = await client.get("/console/js/recording.js")
    demo = await client.get("/demo?call_id=abc&autostart=1", allow_redirects=False)
    injected = await client.get("/demo?x=%0D%0ASet-Cookie:%20a=b", allow_redirects=False)

    assert page.status == 303
    assert page.headers["Location"] == "/login?next=/recordings/abc%3Fx%3D1"
    assert api.status == 401
    assert (await api.json())["error"]["code"] == "unauthorized"
    assert login.status == 200
    assert "default-src 'self'" in login.headers["Content-Security-Policy"]
    assert login.headers["X-Content-Type-Options"] == "nosniff"
    assert script.status == 200
    assert demo.status == 308
    assert demo.headers["Location"] == "/try?call_id=abc&autostart=1"
    assert injected.headers["Location"] == "/try?x=%0D%0ASet-Cookie:%20a=b"
    assert "Set-Cookie" not in injected.headers


async def test_sign_in_from_another_site_or_without_a_body_is_refused(
    client: TestClient[web.Request, web.Application],
) -> None:
    """Login CSRF: a foreign Origin is 403; a missing token is 400; odd bodies are 415."""
    foreign = await client.post(
        "/login", json={"token": TOKEN}, headers={"Origin": "http://evil.example"}
    )
    missing = await client.post("/login", json={}, headers=origin(client))
    text = await client.post("/login", data=b"token", headers=origin(client))
    assert foreign.status == 403
    assert "Set-Cookie" not in foreign.headers
    assert missing.status == 400
    assert text.status == 415


async def test_a_plain_form_signs_in_with_redirects(
    client: TestClient[web.Request, web.Application],
) -> None:
    """Without scripts: 303 to `next` (only ever a local path), or back with an error."""
    good = await client.post(
        "/login",
        data={"token": TOKEN, "next": "/live"},
        headers=origin(client),
        allow_redirects=False,
    )
    bad = await client.post(
        "/login",
        data={"token": "nope", "next": "//evil.example/x"},
        headers=origin(client),
        allow_redirects=False,
    )
    assert good.status == 303
    assert good.headers["Location"] == "/live"
    assert COOKIE_NAME in good.headers["Set-Cookie"]
    assert bad.status == 303
    assert bad.headers["Location"] == "/login?error=wrong_token&next=%2F"


async def wrong_tokens(
    client: TestClient[web.Request, web.Application],
    session: aiohttp.ClientSession,
    count: int,
) -> list[int]:
    """Post `count` wrong tokens through `session` (its own source address); the statuses."""
    statuses = []
    for attempt in range(count):
        async with session.post(
            client.make_url("/login"), json={"token": f"guess-{attempt}"}, headers=origin(client)
        ) as response:
            statuses.append(response.status)
    return statuses


async def test_repeated_wrong_tokens_from_one_address_get_429_with_retry_after(
    client: TestClient[web.Request, web.Application],
) -> None:
    """Five wrong tokens from 127.0.0.2 in a minute: then 429 + Retry-After, even for the right
    token; 127.0.0.3 is not affected; once the window has passed, the right token signs in."""
    clock = client.server.app[CONSOLE_SESSIONS].clock
    assert isinstance(clock, ManualClock)
    guesser = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))
    other = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.3", 0)))
    async with guesser, other:
        first = await wrong_tokens(client, guesser, 5)
        clock.advance(10)
        async with guesser.post(
            client.make_url("/login"), json={"token": TOKEN}, headers=origin(client)
        ) as refused:
            refused_body = await refused.json()
        from_elsewhere = await wrong_tokens(client, other, 1)
        async with other.post(
            client.make_url("/login"), json={"token": TOKEN}, headers=origin(client)
        ) as elsewhere_right:
            elsewhere_status = elsewhere_right.status
        clock.advance(50)  # the first failure, 60 s old now, leaves the window
        async with guesser.post(
            client.make_url("/login"), json={"token": TOKEN}, headers=origin(client)
        ) as later:
            later_status = later.status
        # Signed in: the address's failures are forgotten, five more wrong tokens are answered.
        again = await wrong_tokens(client, guesser, 6)
    assert first == [401] * 5
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "50"
    assert refused_body["error"]["code"] == "too_many_requests"
    assert "try again in 50 s" in refused_body["error"]["message"]
    assert "Set-Cookie" not in refused.headers
    assert from_elsewhere == [401]
    assert elsewhere_status == 200
    assert later_status == 200
    assert again == [401] * 5 + [429]


def test_sign_in_limiter_forgets_old_failures_and_stays_bounded() -> None:
    """A sliding window per address; at most max_clients addresses, the stalest dropped first."""
    limiter = SignInLimiter(max_failures=3, window_s=60.0, max_clients=100)
    for at_s in (0.0, 20.0, 40.0):
        assert limiter.retry_after_s("a", at_s) == 0
        limiter.record_failure("a", at_s)
    assert limiter.retry_after_s("a", 40.0) == 20
    assert limiter.retry_after_s("a", 59.5) == 1
    assert limiter.retry_after_s("a", 60.0) == 0  # the failure at 0 s has left the window
    for number in range(1000):
        limiter.record_failure(f"10.0.{number // 256}.{number % 256}", 61.0)
    assert limiter.tracked_clients == 100
    assert limiter.retry_after_s("a", 61.0) == 0  # forgotten: the stalest address went first
    assert limiter.retry_after_s("10.0.3.231", 200.0) == 0  # and old entries expire


async def test_sign_out_forgets_the_cookie(
    client: TestClient[web.Request, web.Application],
) -> None:
    """POST /logout expires the cookie in the browser."""
    await sign_in(client)
    response = await client.post("/logout", headers=origin(client))
    morsel = SimpleCookie(response.headers["Set-Cookie"])[COOKIE_NAME]
    assert response.status == 204
    assert morsel.value == ""
    assert morsel["max-age"] == "0"


async def test_without_a_token_the_console_is_open(tmp_path: Path) -> None:
    """A loopback server with no token needs no sign-in."""
    app = create_app(settings_for(tmp_path, api_token=""))
    test_client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(app, host="127.0.0.1", port=0)
    )
    await test_client.start_server()
    try:
        page = await test_client.get("/", headers={"Accept": "text/html"}, allow_redirects=False)
        assert page.status == 200
    finally:
        await test_client.close()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "/"),
        ("/recordings/abc?x=1", "/recordings/abc?x=1"),
        ("//evil.example", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("live", "/"),
        ("/x\r\nSet-Cookie: a=b", "/"),
        ("/caf\u00e9", "/"),
    ],
)
def test_next_paths_stay_on_this_server(value: str | None, expected: str) -> None:
    """No open redirect after sign-in."""
    assert safe_next_path(value) == expected


@pytest.mark.parametrize(
    ("header", "host", "same"),
    [
        ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
        ("https://Console.Example", "console.example", True),
        ("http://127.0.0.1:8081", "127.0.0.1:8080", False),
        ("null", "127.0.0.1:8080", False),
        (None, "127.0.0.1:8080", False),
        ("file://127.0.0.1:8080", "127.0.0.1:8080", False),
    ],
)
def test_origin_must_name_the_host(header: str | None, host: str, same: bool) -> None:
    """Only this server's own pages pass the Origin check."""
    assert is_same_origin(header, host) is same


@given(st.text(max_size=80))
def test_no_text_but_a_signed_value_passes(value: str) -> None:
    """Random cookie values never check out."""
    tokens = TokenTable.build(TOKEN)
    assert check_session_value(derive_session_key(TOKEN), value, now_s=0, tokens=tokens) is None
