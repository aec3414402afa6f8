"""A short real call through a running server: RTP caller with a tone, an agent that answers."""

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from rtp_caller import open_caller
from rtp_sender import marker_template, silence_payload
from twilio_agent import dial_in

CALLER_HZ = 600.0
AGENT_HZ = 1100.0


@dataclass(frozen=True, slots=True)
class Token:
    """A scoped token: its secret and the [[tokens]] table that accepts it."""

    name: str
    secret: str
    scopes: tuple[str, ...]

    @property
    def headers(self) -> dict[str, str]:
        """The bearer header."""
        return {"Authorization": f"Bearer {self.secret}"}

    def toml(self) -> str:
        """The token's table in a tokens file."""
        digest = hashlib.sha256(self.secret.encode()).hexdigest()
        scopes = ", ".join(f'"{scope}"' for scope in self.scopes)
        return f'[[tokens]]\nname = "{self.name}"\nsha256 = "{digest}"\nscopes = [{scopes}]\n'


def write_tokens_file(path: Path, tokens: list[Token]) -> Path:
    """A tokens file accepting these tokens."""
    path.write_text("\n".join(token.toml() for token in tokens))
    return path


def _caller_payloads(total_s: float) -> list[bytes]:
    """Opus packets: silence with a caller tone half a second in."""
    payloads = [silence_payload()] * int(total_s / 0.02)
    template = marker_template(CALLER_HZ)
    payloads[15 : 15 + len(template)] = template
    return payloads


async def run_call(
    client: aiohttp.ClientSession,
    base: str,
    headers: dict[str, str],
    *,
    seconds: float = 2.0,
    body: dict[str, Any] | None = None,
) -> str:
    """Create a call, let a caller and an agent talk for `seconds`, end it; the call id."""
    async with client.post(f"{base}/v1/calls", json=body or {}, headers=headers) as response:
        assert response.status == 201, await response.text()
        call_id: str = (await response.json())["call_id"]
    ws_url = base.replace("http", "ws") + f"/v1/calls/{call_id}/agent"
    agent_session = aiohttp.ClientSession(headers=headers)
    async with agent_session, dial_in(agent_session, ws_url) as agent:
        await agent.wait_for("start")
        async with client.post(f"{base}/v1/calls/{call_id}/rtp", json={}, headers=headers) as r:
            assert r.status == 201, await r.text()
            leg = await r.json()
        caller = await open_caller(leg["host"], leg["port"], leg["payload_type"])
        sending = asyncio.create_task(caller.send_stream(_caller_payloads(seconds)))
        await asyncio.sleep(seconds / 2)
        await agent.send_tone(AGENT_HZ, 300)
        await sending
        assert caller.transport is not None
        caller.transport.close()
    async with client.delete(f"{base}/v1/calls/{call_id}", headers=headers) as response:
        assert response.status == 202, await response.text()
    return call_id
