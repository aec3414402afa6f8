"""Scoped tokens: each route needs its scope (403 names it); table, routes and OpenAPI agree."""

import asyncio
import io
import logging
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import structlog
from app_routes import registered_operations

from mediaserver.access.tokens import Scope, TokenTable, compute_token_digest, parse_tokens_file
from mediaserver.api.openapi import load_openapi_document
from mediaserver.api.route_scopes import OPEN, ROUTE_SCOPES
from mediaserver.api.token_registry import TokenRegistry
from mediaserver.errors import SettingsError

from server_harness import make_settings, running_server, wait_for_recording
from short_call import Token, run_call, write_tokens_file

BRIDGE = Token("bridge", "bridge-secret-5d1c9e0a7b", ("calls",))
READER = Token("reader", "reader-secret-0f4e2a9c11", ("recordings:read",))
JANITOR = Token("janitor", "janitor-secret-77ab13ce50", ("recordings:read", "recordings:delete"))
AUDITOR = Token("auditor", "auditor-secret-c0ffee4242", ("admin",))
TOKENS = [BRIDGE, READER, JANITOR, AUDITOR]
HTTP_METHODS = {"get", "put", "post", "delete", "patch"}


def test_every_route_has_its_scope_chosen(tmp_path: Path) -> None:
    """The scope table lists exactly the registered routes (a new route must pick its scope)."""
    registered = {(m, p) for m, p in registered_operations(tmp_path) if m != "HEAD"}
    assert registered - set(ROUTE_SCOPES) == set(), "routes without a scope (they need admin)"
    assert set(ROUTE_SCOPES) - registered == set(), "scopes of routes that do not exist"


def test_openapi_names_each_operations_scope() -> None:
    """x-required-scope equals the table; open routes need no security; scoped ones list 403."""
    document = load_openapi_document()
    paths = document["paths"]
    assert isinstance(paths, dict)
    for path, item in paths.items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            scope = ROUTE_SCOPES[(method.upper(), path)]
            if scope == OPEN:
                assert operation.get("security") == [], (method, path)
                assert "x-required-scope" not in operation, (method, path)
                continue
            assert not isinstance(scope, str)
            expected = "any" if scope is None else scope.value
            assert operation.get("x-required-scope") == expected, (method, path)
            if scope is not None:
                assert "403" in operation["responses"], (method, path)


def test_tokens_file_errors_name_the_problem(tmp_path: Path) -> None:
    """Bad files stop the server at start with a message that says what and where."""
    cases = {
        "tokens = 3": "tokens must be [[tokens]] tables",
        '[[tokens]]\nname = "a b"\nsha256 = "' + "0" * 64 + '"\nscopes = ["calls"]': "name must",
        '[[tokens]]\nname = "a"\nsha256 = "abc"\nscopes = ["calls"]': "sha256 must",
        '[[tokens]]\nname = "a"\nsha256 = "' + "0" * 64 + '"\nscopes = ["root"]': "unknown scope",
        '[[tokens]]\nname = "a"\nsha256 = "' + "0" * 64 + '"\nscopes = []': "non-empty list",
        '[[tokens]]\nname = "a"\nsecret = "x"': "unknown key",
        "[[tokens": "not valid TOML",
    }
    for text, message in cases.items():
        with pytest.raises(SettingsError, match=re.escape(message)):
            parse_tokens_file(text, "tokens.toml")
    twice = write_tokens_file(tmp_path / "twice.toml", [READER, READER])
    with pytest.raises(SettingsError, match="unique: reader"):
        TokenRegistry("", twice)
    with pytest.raises(SettingsError, match="cannot read tokens file"):
        TokenRegistry("", tmp_path / "missing.toml")


def test_secrets_are_matched_by_digest_only() -> None:
    """The table holds digests; a secret finds its own token, nothing else does."""
    table = TokenTable(parse_tokens_file("\n".join(t.toml() for t in TOKENS), "t.toml"))
    principal = table.authenticate(READER.secret)
    assert principal is not None
    assert principal.name == "reader"
    assert principal.scopes == frozenset({Scope.RECORDINGS_READ})
    assert table.authenticate(READER.secret + "x") is None
    assert table.authenticate(compute_token_digest(READER.secret).hex()) is None
    assert all(READER.secret.encode() not in entry.digest for entry in table.entries)


async def test_each_token_can_do_what_its_scopes_say(tmp_path: Path) -> None:
    """calls runs a call but gets 403 on recordings; read-only cannot delete; admin reads audit."""
    tokens_path = write_tokens_file(tmp_path / "tokens.toml", TOKENS)
    settings = make_settings(tmp_path, api_tokens_path=str(tokens_path))
    async with running_server(settings) as (_, base), aiohttp.ClientSession() as client:
        call_id = await run_call(client, base, BRIDGE.headers)
        await wait_for_recording(client, base, call_id)
        recording = f"{base}/v1/recordings/{call_id}"

        async with client.get(f"{recording}/audio", headers=BRIDGE.headers) as response:
            refused = await response.json()
            assert response.status == 403
            assert refused["error"]["code"] == "insufficient_scope"
            assert "recordings:read" in refused["error"]["message"]
            assert 'scope="recordings:read"' in response.headers["WWW-Authenticate"]
        async with client.get(f"{base}/v1/recordings", headers=BRIDGE.headers) as response:
            assert response.status == 403
        async with client.post(f"{base}/v1/calls", json={}, headers=READER.headers) as response:
            assert response.status == 403
            assert "calls" in (await response.json())["error"]["message"]

        async with client.get(f"{recording}/audio", headers=READER.headers) as response:
            assert response.status == 200
            assert (await response.read())[:4] == b"OggS"
        async with client.delete(recording, headers=READER.headers) as response:
            assert response.status == 403
            assert "recordings:delete" in (await response.json())["error"]["message"]
        async with client.get(f"{base}/v1/audit", headers=READER.headers) as response:
            assert response.status == 403
            assert "admin" in (await response.json())["error"]["message"]

        async with client.get(f"{base}/v1/whoami", headers=JANITOR.headers) as response:
            assert await response.json() == {
                "name": "janitor",
                "scopes": ["recordings:delete", "recordings:read"],
            }
        async with client.delete(recording, headers=JANITOR.headers) as response:
            assert response.status == 204

        async with client.get(
            f"{base}/v1/audit", params={"recording_id": call_id}, headers=AUDITOR.headers
        ) as response:
            assert response.status == 200
            events = (await response.json())["events"]
    seen = [(e["actor"], e["action"], e["status"]) for e in events]
    assert ("bridge", "recording.download", 403) in seen
    assert ("reader", "recording.download", 200) in seen
    assert ("reader", "recording.delete", 403) in seen
    assert ("janitor", "recording.delete", 204) in seen
    assert all(e["remote"] == "127.0.0.1" for e in events)


async def test_an_edited_tokens_file_applies_without_a_restart(tmp_path: Path) -> None:
    """A token removed from the file stops working; one added starts to (checked every 2 s)."""
    tokens_path = write_tokens_file(tmp_path / "tokens.toml", [READER])
    settings = make_settings(tmp_path, api_tokens_path=str(tokens_path))
    async with running_server(settings) as (_, base), aiohttp.ClientSession() as client:
        async with client.get(f"{base}/v1/recordings", headers=READER.headers) as response:
            assert response.status == 200
        write_tokens_file(tokens_path, [JANITOR])
        async with asyncio.timeout(10):
            while True:
                async with client.get(f"{base}/v1/recordings", headers=READER.headers) as r:
                    if r.status == 401:
                        break
                await asyncio.sleep(0.2)
        async with client.get(f"{base}/v1/recordings", headers=JANITOR.headers) as response:
            assert response.status == 200


async def test_secrets_never_reach_the_log(tmp_path: Path) -> None:
    """Signing in and calling the API with good and bad tokens logs no secret."""
    tokens_path = write_tokens_file(tmp_path / "tokens.toml", TOKENS)
    settings = make_settings(tmp_path, api_tokens_path=str(tokens_path), log_level="debug")
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    logging.getLogger().addHandler(handler)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(captured))
    try:
        async with running_server(settings) as (_, base), aiohttp.ClientSession() as client:
            origin = {"Origin": base}
            for token in (READER.secret, "wrong-" + READER.secret):
                await client.post(f"{base}/login", json={"token": token}, headers=origin)
                await client.get(
                    f"{base}/v1/recordings", headers={"Authorization": f"Bearer {token}"}
                )
    finally:
        logging.getLogger().removeHandler(handler)
        structlog.reset_defaults()
    text = captured.getvalue()
    assert "console.sign_in_refused" in text  # the log was captured
    assert READER.secret not in text


def _mediaserver(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed `mediaserver` command."""
    command = [sys.executable, "-m", "mediaserver", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)


def test_new_token_prints_a_secret_and_the_table_that_accepts_it() -> None:
    """`mediaserver new-token` output pasted into a tokens file accepts the printed secret."""
    result = _mediaserver("new-token", "bridge", "--scope", "calls", "--scope", "calls")
    assert result.returncode == 0, result.stderr
    output = result.stdout
    secret = output.splitlines()[0].rsplit(" ", 1)[1]
    table = TokenTable(parse_tokens_file(output, "stdout"))
    principal = table.authenticate(secret)
    assert principal is not None
    assert (principal.name, principal.scope_names()) == ("bridge", ["calls"])
    assert len(secret) >= 43
    refused = _mediaserver("new-token", "no spaces", "--scope", "calls")
    assert refused.returncode == 2
    assert "token name must be" in refused.stderr
