"""The console in real headless Chromium shows only what the signed-in token may do."""

from pathlib import Path
from typing import Any

import aiohttp
import pytest

import cdp
from operator_keys import write_key_pair
from server_harness import TOKEN, auth, make_settings, running_server, wait_for_recording
from short_call import Token, run_call, write_tokens_file

READER = Token("reader", "reader-secret-6b0d2f", ("recordings:read",))
JANITOR = Token("janitor", "janitor-secret-91c3aa", ("recordings:read", "recordings:delete"))
AUDITOR = Token("auditor", "auditor-secret-4e7f10", ("admin",))
KEEPER = Token("keeper", "keeper-secret-a1b2c3", ("recordings:read", "admin"))

_PAGE_STATE = """(() => {
  const visible = (e) => Boolean(e) && !e.hidden && e.offsetParent !== null;
  const nav = [...document.querySelectorAll('.topbar nav a')].filter(visible);
  return {
    who: document.getElementById('signed-in-as').textContent,
    nav: nav.map((a) => a.textContent),
    delete_button: visible(document.querySelector('[data-testid=delete-recording]')),
    hold_button: visible(document.querySelector('[data-testid=hold-toggle]')),
    retention: (document.querySelector('[data-testid=retention]') || {}).textContent || '',
    notice: (document.getElementById('notice') || {}).textContent || '',
    table: visible(document.getElementById('recordings')),
  };
})()"""


async def _sign_in(page: cdp.Page, base: str, token: Token, path: str) -> dict[str, Any]:
    """Sign in with a token, open `path`, and read what the page shows once it has settled."""
    await page.goto(f"{base}/login?next={path}")
    await page.type_into("[data-testid=login-token]", token.secret)
    await page.click("[data-testid=login-submit]")
    await page.wait_for(f"location.pathname === '{path}' && document.readyState === 'complete'")
    await page.wait_for(f"document.getElementById('signed-in-as').textContent === '{token.name}'")
    if path.startswith("/recordings/"):
        await page.wait_for("document.getElementById('summary').textContent.length > 0")
    else:
        await page.wait_for(
            "document.getElementById('notice').textContent.length > 0"
            " || document.querySelectorAll('[data-testid=recordings-row]').length > 0"
        )
    state: dict[str, Any] = await page.evaluate(_PAGE_STATE)
    return state


@pytest.mark.timeout(240)
async def test_each_token_sees_only_what_it_may_do(tmp_path: Path) -> None:
    """Read-only: no delete or hold button, no call pages; delete scope: the delete button;
    admin: the hold button, which holds; admin alone: no list."""
    tokens_path = write_tokens_file(tmp_path / "tokens.toml", [READER, JANITOR, AUDITOR, KEEPER])
    settings = make_settings(tmp_path, api_tokens_path=str(tokens_path))
    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
        cdp.launch() as browser,
    ):
        call_id = await run_call(client, base, auth())
        await wait_for_recording(client, base, call_id)
        page = await browser.new_page("console")
        reader = await _sign_in(page, base, READER, f"/recordings/{call_id}")
        janitor = await _sign_in(page, base, JANITOR, f"/recordings/{call_id}")
        auditor = await _sign_in(page, base, AUDITOR, "/")
        keeper = await _sign_in(page, base, KEEPER, f"/recordings/{call_id}")
        await page.click("[data-testid=hold-toggle]")
        held_text = await page.wait_for(
            "(() => { const t = document.querySelector('[data-testid=retention]').textContent;"
            " return t.startsWith('Under legal hold') && t; })()"
        )
        async with client.get(f"{base}/v1/recordings/{call_id}") as response:
            hold = (await response.json())["retention"]["hold"]
        errors = page.errors

    assert reader["nav"] == ["Recordings"]
    assert reader["delete_button"] is False
    assert reader["hold_button"] is False
    assert reader["retention"] == "Kept forever (the server's retention)."
    assert keeper["hold_button"] is True
    assert keeper["delete_button"] is False
    assert "(by keeper)" in held_text
    assert hold["by"] == "keeper"
    assert janitor["delete_button"] is True
    assert auditor["nav"] == []
    assert auditor["table"] is False
    assert "cannot read recordings" in auditor["notice"]
    assert errors == []


@pytest.mark.timeout(240)
async def test_a_store_only_server_says_why_it_cannot_play(tmp_path: Path) -> None:
    """Encrypted without the private key: the recording page explains, and shows no player."""
    public, _ = write_key_pair(tmp_path, "operator")
    settings = make_settings(
        tmp_path, encryption="envelope", encryption_public_key_path=str(public)
    )
    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
        cdp.launch() as browser,
    ):
        call_id = await run_call(client, base, auth())
        await wait_for_recording(client, base, call_id)
        page = await browser.new_page("console")
        await page.goto(f"{base}/login?next=/recordings/{call_id}")
        await page.type_into("[data-testid=login-token]", TOKEN)
        await page.click("[data-testid=login-submit]")
        notice = await page.wait_for(
            "(() => { const t = document.getElementById('notice').textContent;"
            " return t.includes('encrypted') && t; })()"
        )
        player_hidden = await page.evaluate("document.getElementById('player').hidden")
        # Resources answering 409 (encrypted) and 404 (no analysis queued) are expected.
        errors = [e for e in page.errors if e["kind"] != "log"]
    assert "cannot be played on this server" in notice
    assert "mediaserver decrypt" in notice
    assert player_hidden is True
    assert errors == []
