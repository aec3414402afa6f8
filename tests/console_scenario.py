"""The operator console in headless Chromium, start to end, inside a loopback-only namespace."""

# Usage: python tests/console_scenario.py OUT_DIR CALLER_WAV SHOTS_DIR
# Prints one JSON line: what was seen at each step. tests/test_console_browser.py asserts on it.

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))

import cdp
from audio_oracle import RATE_HZ, decode_ogg
from server_harness import TOKEN, auth, make_settings, running_server, wait_for_recording

ECHO_DELAY_MS = 1000
CALL_PACKETS = 450  # 9 s of the caller's 20 ms packets: the WAV's tone and speech, and their echo
WIDTHS = (1280, 390)
LEVEL_SAMPLES = 14  # level meter readings, 0.1 s apart


class Scenario:
    """One run: a server, a browser, and what was seen."""

    def __init__(self, base: str, client: aiohttp.ClientSession, shots: Path) -> None:
        self.base = base
        self.client = client
        self.shots = shots
        self.seen: dict[str, Any] = {"screenshots": {}}
        self.call_id = ""

    async def screenshot(self, page: cdp.Page, name: str) -> None:
        """The page at each width, saved as <name>-<width>.png."""
        for width in WIDTHS:
            path = await page.screenshot(self.shots / f"{name}-{width}.png", width)
            self.seen["screenshots"][f"{name}-{width}"] = str(path)

    async def sign_in(self, page: cdp.Page) -> None:
        """A wrong token first (its message), then the right one."""
        await page.goto(self.base + "/")
        self.seen["unsigned_landing"] = await page.evaluate("location.pathname + location.search")
        await self.screenshot(page, "login")
        await page.type_into("[data-testid=login-token]", "not-the-token")
        await page.click("[data-testid=login-submit]")
        self.seen["wrong_token_message"] = await page.wait_for(
            "(() => { const e = document.querySelector('[role=alert]');"
            " return e && !e.hidden && e.textContent; })()"
        )
        self.seen["after_wrong_token"] = await page.evaluate("location.pathname")
        await self.screenshot(page, "login-wrong-token")
        await page.type_into("[data-testid=login-token]", TOKEN)
        await page.click("[data-testid=login-submit]")
        await page.wait_for("location.pathname === '/' && document.readyState === 'complete'")
        self.seen["script_sees_cookie"] = await page.evaluate("document.cookie")
        cookies = (await page.send("Network.getCookies"))["cookies"]
        self.seen["cookies"] = [
            {key: cookie[key] for key in ("name", "httpOnly", "sameSite", "secure", "path")}
            | {"lifetime_s": cookie["expires"] - time.time()}
            for cookie in cookies
        ]

    async def try_it(self, browser: cdp.Browser, page: cdp.Page) -> str:
        """Call the echo agent from the fake microphone; watch the call on the live page."""
        await page.goto(self.base + "/try")
        await self.screenshot(page, "try")
        await page.click("[data-testid=demo-start]")
        call_id = await page.wait_for(
            "(() => { const c = document.getElementById('call-id').textContent;"
            " return document.getElementById('status').textContent === 'connected' && c; })()",
            timeout_s=45,
        )
        self.seen["try_call_id"] = call_id
        live = await browser.new_page("live")
        await live.goto(self.base + "/live")
        row = f"[data-testid=live-call-row][data-call-id='{call_id}']"
        self.seen["live_row_text"] = await live.wait_for(
            f"(() => {{ const r = document.querySelector({json.dumps(row)});"
            " return r && r.innerText; })()"
        )
        # A second call, made now through the API, shows up by itself and is ended from the page.
        async with self.client.post(f"{self.base}/v1/calls", json={"metadata": {"x": 1}}) as r:
            other = (await r.json())["call_id"]
        shown_at = time.monotonic()
        other_row = f"[data-testid=live-call-row][data-call-id='{other}']"
        await live.wait_for(f"!!document.querySelector({json.dumps(other_row)})", timeout_s=8)
        self.seen["live_refresh_s"] = time.monotonic() - shown_at
        await self.screenshot(live, "live")
        # The filter narrows the rows as one types (call id, metadata, transports).
        listed = (
            "[...document.querySelectorAll('[data-testid=live-call-row]')]"
            ".map(r => r.dataset.callId)"
        )
        filtered = {}
        for text, expected in ((other[:12], 1), ("WebRTC", 1), ('"x":1', 1)):
            await live.type_into("[data-testid=live-filter]", text)
            await live.wait_for(f"{listed}.length === {expected}", timeout_s=5)
            filtered[text] = await live.evaluate(listed)
        self.seen["live_filter_count"] = await live.evaluate(
            "document.getElementById('count').textContent"
        )
        await live.evaluate(
            "(() => { const f = document.querySelector('[data-testid=live-filter]');"
            " f.value = ''; f.dispatchEvent(new Event('input')); return true; })()"
        )
        await live.wait_for(f"{listed}.length === 2", timeout_s=5)
        filtered["(cleared)"] = await live.evaluate(listed)
        self.seen["live_filtered"] = filtered
        await live.click(f"{other_row} [data-testid=end-call]")
        await live.wait_for(f"!document.querySelector({json.dumps(other_row)})", timeout_s=8)
        async with self.client.get(f"{self.base}/v1/calls/{other}") as r:
            self.seen["ended_call_status"] = r.status
        self.seen["live_rows_after_end"] = await live.evaluate(
            "[...document.querySelectorAll('[data-testid=live-call-row]')]"
            ".map(r => r.dataset.callId)"
        )
        await browser.bring_to_front(page)
        await self._wait_for_caller_packets(call_id, CALL_PACKETS)
        await self.screenshot(page, "try-in-call")
        await page.click("[data-testid=demo-hangup]")
        href = await page.wait_for(
            "(() => { const a = document.querySelector('[data-testid=demo-recording-link]');"
            " return a && a.offsetParent && a.getAttribute('href'); })()",
            timeout_s=90,
        )
        self.seen["recording_link"] = href
        await self.screenshot(page, "try-done")
        return str(call_id)

    async def recordings_list(self, page: cdp.Page, call_id: str) -> None:
        """The new recording is listed; filters narrow the list."""
        await page.goto(self.base + "/")
        row = f"[data-testid=recordings-row][data-recording-id='{call_id}']"
        await page.wait_for(f"!!document.querySelector({json.dumps(row)})")
        self.seen["list_row_text"] = await page.evaluate(
            f"document.querySelector({json.dumps(row)}).innerText"
        )
        self.seen["list_ids"] = await self._listed_ids(page)
        await self.screenshot(page, "recordings")
        await page.type_into("input[name=min_duration_s]", "3600")
        await page.click("#filters button[type=submit]")
        await page.wait_for("!document.getElementById('empty').hidden")
        self.seen["list_ids_min_duration_3600"] = await self._listed_ids(page)
        await page.click("#clear-filters")
        await page.wait_for(f"!!document.querySelector({json.dumps(row)})")

    async def recording_page(self, page: cdp.Page, call_id: str, both_active_s: float) -> None:
        """Waveform, play, keyboard, speed, mute, analysis, transcript; then delete."""
        self.call_id = call_id
        await page.goto(f"{self.base}/recordings/{call_id}")
        await page.wait_for("document.getElementById('waveform').dataset.drawn === 'true'")
        self.seen["lanes"] = await page.evaluate(LANE_SCRIPT)
        self.seen["tab_order"] = await self._tab_order(page, 40)
        await page.click("[data-testid=play-button]")
        await page.wait_for(f"{AUDIO}.currentTime > 0.4 && !{AUDIO}.paused")
        self.seen["played_to_s"] = await page.evaluate(f"{AUDIO}.currentTime")
        await page.click("[data-testid=play-button]")
        await page.wait_for(f"{AUDIO}.paused")
        # Space plays and pauses when no control has the focus.
        await page.evaluate("document.activeElement.blur(); true")
        await page.press(" ")
        self.seen["space_plays"] = bool(await page.wait_for(f"!{AUDIO}.paused", timeout_s=5))
        await page.press(" ")
        self.seen["space_pauses"] = bool(await page.wait_for(f"{AUDIO}.paused", timeout_s=5))
        await self._levels(page, both_active_s)
        await self._speed(page)
        await self._analysis(page)
        await self._transcript(page)
        await page.evaluate("window.scrollTo(0, 0); true")
        await self.screenshot(page, "recording")
        await page.click("[data-testid=delete-recording]")
        await page.wait_for("location.pathname === '/'", timeout_s=20)
        await page.wait_for("document.getElementById('notice').textContent.includes('deleted')")
        self.seen["delete_dialogs"] = list(page.dialogs)
        self.seen["list_ids_after_delete"] = await self._listed_ids(page)
        async with self.client.get(f"{self.base}/v1/recordings/{call_id}") as r:
            self.seen["deleted_recording_status"] = r.status

    async def _levels(self, page: cdp.Page, at_s: float) -> None:
        """Level meters while both sides are heard, then with the caller muted."""
        duration_s = await page.evaluate(f"{AUDIO}.duration")
        for key, mute_first in (("levels_unmuted", False), ("levels_caller_muted", True)):
            await page.click_at("[data-testid=recording-waveform]", at_s / duration_s, 0.3)
            await page.wait_for(f"Math.abs({AUDIO}.currentTime - {at_s}) < 0.2")
            if mute_first:
                await page.click("[data-testid=mute-caller]")
            await page.click("[data-testid=play-button]")
            readings = []
            for _ in range(LEVEL_SAMPLES):
                await asyncio.sleep(0.1)
                readings.append(await page.evaluate(LEVELS_SCRIPT))
            await page.click("[data-testid=play-button]")
            self.seen[key] = readings
        self.seen["mute_caller_pressed"] = await page.evaluate(
            "document.querySelector('[data-testid=mute-caller]').getAttribute('aria-pressed')"
        )
        await page.click("[data-testid=mute-caller]")  # unmute again

    async def _speed(self, page: cdp.Page) -> None:
        """The speed control sets the playback rate."""
        await page.evaluate(
            "(() => { const s = document.getElementById('speed'); s.value = '1.5';"
            " s.dispatchEvent(new Event('change')); return true; })()"
        )
        self.seen["playback_rate"] = await page.evaluate(f"{AUDIO}.playbackRate")

    async def _analysis(self, page: cdp.Page) -> None:
        """The analysis figures, and the speech spans on each lane, once the job is done."""
        await page.wait_for(
            "!!document.querySelector('[data-testid=analysis-response-latency]')", timeout_s=120
        )
        self.seen["analysis_talk_time"] = await page.evaluate(
            "document.querySelector('[data-testid=analysis-talk-time]').innerText"
        )
        self.seen["analysis_response_latency"] = await page.evaluate(
            "document.querySelector('[data-testid=analysis-response-latency]').innerText"
        )
        self.seen["latency_bars"] = await page.evaluate(
            "document.querySelectorAll('[data-testid=analysis-response-latency] rect').length"
        )
        self.seen["lane_spans"] = await page.evaluate(SPANS_SCRIPT)
        async with self.client.get(f"{self.base}/v1/recordings/{self.call_id}/analysis") as r:
            self.seen["analysis"] = await r.json()

    async def _transcript(self, page: cdp.Page) -> None:
        """Lines with speaker and time; search narrows them; a click seeks to a line's start."""
        await page.wait_for(
            "document.querySelectorAll('[data-testid=transcript-line]').length > 1", timeout_s=150
        )
        starts: list[str] = await page.evaluate(
            "[...document.querySelectorAll('[data-testid=transcript-line]')]"
            ".map(n => n.dataset.startS)"
        )
        self.seen["transcript_starts_s"] = [float(start) for start in starts]
        self.seen["transcript_lines"] = await page.evaluate(
            "[...document.querySelectorAll('[data-testid=transcript-line]')]"
            ".map(n => [n.dataset.speaker, n.querySelector('.text').textContent])"
        )
        word = next(
            (w for _, text in self.seen["transcript_lines"] for w in text.split() if len(w) > 3),
            None,
        )
        if word is not None:
            await page.type_into("#transcript-search", word)
            await asyncio.sleep(0.2)
            self.seen["transcript_search"] = {
                "word": word,
                "count": await page.evaluate(
                    "document.getElementById('transcript-count').textContent"
                ),
                "visible": await page.evaluate(
                    "[...document.querySelectorAll('[data-testid=transcript-line]')]"
                    ".filter(n => !n.closest('li').hidden).map(n => n.textContent)"
                ),
                "marks": await page.evaluate(
                    "[...document.querySelectorAll('#transcript mark')].map(m => m.textContent)"
                ),
            }
            await page.type_into("#transcript-search", "")
            await page.evaluate(
                "document.getElementById('transcript-search').dispatchEvent(new Event('input'));"
                " true"
            )
        self.seen["downloads"] = await page.evaluate(
            "[...document.querySelectorAll('#downloads a')].map(a => a.getAttribute('href'))"
        )
        target = starts[len(starts) // 2]
        await page.click(f"[data-testid=transcript-line][data-start-s='{target}']")
        await asyncio.sleep(0.3)
        self.seen["transcript_click"] = {
            "start_s": float(target),
            "current_time_s": await page.evaluate(f"{AUDIO}.currentTime"),
            "highlighted": await page.evaluate(
                "document.querySelector('[data-testid=transcript-line].current')?.dataset.startS"
            ),
        }

    async def _listed_ids(self, page: cdp.Page) -> list[str]:
        """Recording ids in the list, once it has loaded."""
        await page.wait_for("!document.getElementById('rows').textContent.includes('…')")
        ids: list[str] = await page.evaluate(
            "[...document.querySelectorAll('[data-testid=recordings-row]')]"
            ".map(r => r.dataset.recordingId)"
        )
        return ids

    async def _tab_order(self, page: cdp.Page, presses: int) -> list[str]:
        """What the focus lands on, Tab after Tab, from the top of the page."""
        await page.evaluate("document.activeElement.blur(); window.scrollTo(0, 0); true")
        order = []
        for _ in range(presses):
            await page.press("Tab")
            order.append(await page.evaluate(FOCUS_SCRIPT))
        return order

    async def _wait_for_caller_packets(self, call_id: str, count: int) -> None:
        """Until the browser has sent `count` packets."""
        deadline = time.monotonic() + 60
        while True:
            async with self.client.get(f"{self.base}/v1/calls/{call_id}") as r:
                packets = int((await r.json())["legs"]["caller"]["packets"])
            if packets >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the browser sent {packets} packets")
            await asyncio.sleep(0.2)


AUDIO = "document.querySelector('[data-testid=recording-audio]')"
LEVELS_SCRIPT = """(() => ['caller', 'agent'].map(side => {
    const m = document.querySelector(`[data-testid=level-${side}]`);
    return [Number(m.dataset.level), Number(m.dataset.gain ?? 1)];
}))()"""
FOCUS_SCRIPT = """(() => {
    const a = document.activeElement;
    if (!a || a === document.body) return 'body';
    return a.dataset.testid || a.id || (a.tagName.toLowerCase() + ':' + (a.getAttribute('href')
        || a.textContent.trim().slice(0, 24)));
})()"""
# The regions drawn on the waveform (speech spans, interruptions), by lane.
SPANS_SCRIPT = """(() => {
    const root = document.querySelector('[data-testid=recording-waveform]')
        .firstElementChild.shadowRoot;
    const spans = [...root.querySelectorAll('[part~=region]')];
    return {
        caller: spans.filter(s => s.style.top === '0%').length,
        agent: spans.filter(s => s.style.top === '50%').length,
    };
})()"""
# Per lane (top half of the waveform box: caller; bottom: agent), the share of pixel columns
# where the drawn waveform is more than 4 px tall: a silent lane is only its 1-2 px centre line.
LANE_SCRIPT = """(() => {
    const box = document.querySelector('[data-testid=recording-waveform]');
    const root = box.firstElementChild.shadowRoot;
    const top = box.getBoundingClientRect().top;
    const half = box.getBoundingClientRect().height / 2;
    const lanes = [{columns: 0, tall: 0}, {columns: 0, tall: 0}];
    for (const canvas of root.querySelectorAll('canvas')) {
        if (canvas.closest('.progress')) continue;
        const r = canvas.getBoundingClientRect();
        if (!r.width || !r.height || !canvas.width) continue;
        const lane = lanes[(r.top + r.height / 2 - top) < half ? 0 : 1];
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        for (let x = 0; x < canvas.width; x++) {
            let painted = 0;
            for (let y = 0; y < canvas.height; y++) {
                if (data[(y * canvas.width + x) * 4 + 3] > 0) painted++;
            }
            lane.columns += 1;
            if (painted > 4 * devicePixelRatio) lane.tall += 1;
        }
    }
    return lanes.map(l => ({columns: l.columns, tall_share: l.columns ? l.tall / l.columns : 0}));
})()"""


async def run(out_dir: Path, wav: Path, shots: Path) -> dict[str, Any]:
    """The whole console walk; returns what was seen."""
    settings = make_settings(out_dir)
    flags = cdp.fake_microphone_flags(wav)
    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
        cdp.launch(flags) as browser,
    ):
        scenario = Scenario(base, client, shots)
        page = await browser.new_page("console")
        await scenario.sign_in(page)
        call_id = await scenario.try_it(browser, page)
        manifest = await wait_for_recording(client, base, call_id)
        async with client.get(f"{base}/v1/recordings/{call_id}/audio") as r:
            (out_dir / "stereo.opus").write_bytes(await r.read())
        scenario.seen["manifest"] = manifest
        both_active_s = find_both_active(out_dir)
        scenario.seen["both_active_s"] = both_active_s
        await scenario.recordings_list(page, call_id)
        await scenario.recording_page(page, call_id, both_active_s)
        scenario.seen["errors"] = {p.name: p.errors for p in browser.pages}
        scenario.seen["stereo"] = str(out_dir / "stereo.opus")
        return scenario.seen


def find_both_active(out_dir: Path) -> float:
    """A moment where both channels carry sound (the caller's speech and its echo overlap)."""
    audio = decode_ogg(out_dir / "stereo.opus")
    window = RATE_HZ // 20
    frames = audio[:, : audio.shape[1] // window * window].reshape(2, -1, window)
    active = (abs(frames).max(axis=2) > 0.02).all(axis=0)
    best_start, best_length, start = 0, 0, None
    for index, on in enumerate([*active, False]):
        if on and start is None:
            start = index
        elif not on and start is not None:
            if index - start > best_length:
                best_start, best_length = start, index - start
            start = None
    return (best_start + 2) / 20  # 0.1 s into the longest stretch


if __name__ == "__main__":
    shots_dir = Path(sys.argv[3])
    shots_dir.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run(Path(sys.argv[1]), Path(sys.argv[2]), shots_dir))
    print(json.dumps(result))
