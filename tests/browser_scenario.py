"""A browser call inside a loopback-only network namespace: server, agent, headless Chromium."""

# Usage: python tests/browser_scenario.py OUT_DIR CALLER_WAV; prints one JSON line of results.

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))

import cdp
from server_harness import TOKEN, auth, make_settings, running_server, wait_for_recording
from twilio_agent import dial_in

AGENT_HZ = 1300.0


async def run(out_dir: Path, wav: Path) -> dict[str, object]:
    """Call the server from the browser, let the agent answer, return what was recorded."""
    settings = make_settings(out_dir)
    flags = cdp.fake_microphone_flags(wav)
    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        async with client.post(f"{base}/v1/calls", json={"metadata": {"via": "chromium"}}) as r:
            call_id = (await r.json())["call_id"]
        ws_url = base.replace("http", "ws") + f"/v1/calls/{call_id}/agent"
        async with dial_in(client, ws_url) as agent, cdp.launch(flags) as browser:
            await agent.wait_for("start")
            page = await browser.new_page("try")
            await page.goto(f"{base}/login")
            await page.type_into("[data-testid=login-token]", TOKEN)
            await page.click("[data-testid=login-submit]")
            await page.wait_for("location.pathname === '/'")
            # The old demo address still works: it leads to the console's Try it page.
            await page.goto(f"{base}/demo?call_id={call_id}&autostart=1")
            landed = await page.evaluate("location.pathname")
            packets = await _wait_for_caller_packets(client, base, call_id, 150)
            agent_sent_s = time.monotonic()
            await agent.send_tone(AGENT_HZ, 400)
            await asyncio.sleep(2.0)  # the browser plays the agent's answer
            heard = agent.caller_audio()
            async with client.delete(f"{base}/v1/calls/{call_id}") as r:
                assert r.status == 202
        manifest = await wait_for_recording(client, base, call_id)
        async with client.get(f"{base}/v1/recordings/{call_id}/audio") as r:
            (out_dir / "stereo.opus").write_bytes(await r.read())
    return {
        "call_id": call_id,
        "landed_on": landed,
        "caller_packets_before_answer": packets,
        "agent_sent_s": agent_sent_s,
        "stereo": str(out_dir / "stereo.opus"),
        "manifest": manifest,
        "agent_heard_samples": int(heard.size),
        "agent_heard_peak": int(abs(heard).max(initial=0)),
    }


async def _wait_for_caller_packets(
    client: aiohttp.ClientSession, base: str, call_id: str, count: int, timeout_s: float = 45.0
) -> int:
    """Poll the calls API until the browser's audio is flowing."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with client.get(f"{base}/v1/calls/{call_id}") as r:
            packets = int((await r.json())["legs"]["caller"]["packets"])
        if packets >= count:
            return packets
        if time.monotonic() > deadline:
            raise TimeoutError(f"the browser sent {packets} packets in {timeout_s} s")
        await asyncio.sleep(0.2)


if __name__ == "__main__":
    result = asyncio.run(run(Path(sys.argv[1]), Path(sys.argv[2])))
    print(json.dumps(result))
