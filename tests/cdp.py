"""Headless Chromium driven over the DevTools protocol (JSON over aiohttp's WebSocket client)."""

import asyncio
import base64
import contextlib
import json
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = "/usr/lib/chromium/chromium"
# Flags from NOTES.md: headless, no sandbox (root in CI), nothing reaching out to the network.
BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    "--window-size=1280,900",
)
# windowsVirtualKeyCode, code and text of the keys the tests press.
KEYS = {
    "Tab": (9, "Tab", ""),
    " ": (32, "Space", " "),
    "Enter": (13, "Enter", "\r"),
    "ArrowRight": (39, "ArrowRight", ""),
    "Escape": (27, "Escape", ""),
}


def fake_microphone_flags(wav: Path) -> list[str]:
    """Flags that make `wav` the microphone, granted without asking (NOTES.md)."""
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
    ]


class CdpError(RuntimeError):
    """A DevTools command failed, or a page script threw."""


class Connection:
    """One DevTools WebSocket: commands by id, events to listeners."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._reader = asyncio.create_task(self._read())

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        """Send a command and wait for its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        await self._ws.send_str(json.dumps(message))
        return await asyncio.wait_for(future, 60)

    def listen(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call `callback` with every event."""
        self._listeners.append(callback)

    async def close(self) -> None:
        """Stop reading and close the socket."""
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._ws.close()

    async def _read(self) -> None:
        """Dispatch results to their commands and events to the listeners."""
        async for frame in self._ws:
            if frame.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(frame.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is None or future.done():
                    continue
                if "error" in data:
                    future.set_exception(CdpError(f"{data['error']}"))
                else:
                    future.set_result(data.get("result", {}))
            else:
                for listener in self._listeners:
                    listener(data)


class Page:
    """One tab: navigation, script evaluation, real mouse and keyboard input, screenshots."""

    def __init__(self, connection: Connection, session_id: str, name: str) -> None:
        self._connection = connection
        self.session_id = session_id
        self.name = name
        self.errors: list[dict[str, Any]] = []  # console errors, exceptions, failed loads
        self.dialogs: list[str] = []
        connection.listen(self._on_event)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """A DevTools command in this tab."""
        return await self._connection.send(method, params, self.session_id)

    async def start(self) -> None:
        """Turn on the domains the helpers use."""
        for domain in ("Page", "Runtime", "Log"):
            await self.send(f"{domain}.enable")

    async def goto(self, url: str, *, timeout_s: float = 20.0) -> None:
        """Navigate and wait until the document has loaded."""
        await self.send("Page.navigate", url=url)
        await asyncio.sleep(0.05)
        await self.wait_for("document.readyState === 'complete'", timeout_s=timeout_s)

    async def evaluate(self, expression: str) -> Any:
        """The value of a script (awaited if it is a promise); CdpError if it threw."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"{expression[:80]!r} threw: {text}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, timeout_s: float = 15.0) -> Any:
        """Poll a script until it returns something truthy; its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                value = await self.evaluate(expression)
            except CdpError:
                value = None  # e.g. the page is navigating
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {expression!r} still false after {timeout_s} s")
            await asyncio.sleep(0.1)

    async def click(self, selector: str) -> None:
        """Scroll an element into view and click its centre with the mouse."""
        box = await self.wait_for(
            f"""(() => {{
                const node = document.querySelector({json.dumps(selector)});
                if (!node || node.disabled) return null;
                node.scrollIntoView({{block: "center"}});
                const r = node.getBoundingClientRect();
                return r.width && r.height ? [r.left + r.width / 2, r.top + r.height / 2] : null;
            }})()"""
        )
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    async def click_at(self, selector: str, fraction_x: float, fraction_y: float = 0.5) -> None:
        """Click an element at a point given as fractions of its width and height."""
        box = await self.wait_for(
            f"""(() => {{
                const node = document.querySelector({json.dumps(selector)});
                if (!node) return null;
                node.scrollIntoView({{block: "center"}});
                const r = node.getBoundingClientRect();
                return [r.left + r.width * {fraction_x}, r.top + r.height * {fraction_y}];
            }})()"""
        )
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    async def type_into(self, selector: str, text: str) -> None:
        """Focus a field, clear it and type text as keyboard input."""
        await self.evaluate(
            f"(() => {{ const n = document.querySelector({json.dumps(selector)});"
            " n.focus(); n.select && n.select(); return true; })()"
        )
        await self.send("Input.insertText", text=text)

    async def press(self, key: str, *, shift: bool = False) -> None:
        """Press and release one key."""
        key_code, code, text = KEYS[key]
        modifiers = 8 if shift else 0
        common = {"key": key, "code": code, "windowsVirtualKeyCode": key_code}
        await self.send(
            "Input.dispatchKeyEvent", type="keyDown", text=text, modifiers=modifiers, **common
        )
        await self.send("Input.dispatchKeyEvent", type="keyUp", modifiers=modifiers, **common)

    async def screenshot(self, path: Path, width: int, *, height: int = 900) -> Path:
        """A full-page PNG at `width` CSS pixels (a phone layout below 600)."""
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=width < 600,
        )
        await asyncio.sleep(0.6)  # relayout, redraw the waveform canvases
        metrics = await self.send("Page.getLayoutMetrics")
        content = metrics["cssContentSize"]
        shot = await self.send(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": width, "height": content["height"], "scale": 1},
        )
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))
        await self.send("Emulation.clearDeviceMetricsOverride")
        return path

    def _on_event(self, event: dict[str, Any]) -> None:
        """Collect errors; accept confirm() dialogs."""
        if event.get("sessionId") != self.session_id:
            return
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            texts = [str(arg.get("value", arg.get("description", ""))) for arg in params["args"]]
            self.errors.append({"kind": "console", "text": " ".join(texts)})
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append({"kind": "exception", "text": text})
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            self.errors.append({"kind": "log", "text": entry["text"], "url": entry.get("url")})
        elif method == "Page.javascriptDialogOpening":
            self.dialogs.append(params["message"])
            asyncio.get_running_loop().create_task(
                self.send("Page.handleJavaScriptDialog", accept=True)
            )


class Browser:
    """A Chromium process and its DevTools connection."""

    def __init__(self, process: asyncio.subprocess.Process, connection: Connection) -> None:
        self.process = process
        self.connection = connection
        self.pages: list[Page] = []

    async def new_page(self, name: str) -> Page:
        """Open a tab (the window is 1280 x 900) and attach to it."""
        target = await self.connection.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.connection.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self.connection, attached["sessionId"], name)
        await page.start()
        self.pages.append(page)
        return page

    async def bring_to_front(self, page: Page) -> None:
        """Make a tab the visible one (background tabs get throttled timers and frames)."""
        await page.send("Page.bringToFront")


@contextlib.asynccontextmanager
async def launch(extra_flags: Sequence[str] = ()) -> AsyncIterator[Browser]:
    """Start headless Chromium on a fresh profile; close it afterwards."""
    # Chromium's helpers may still write to the profile as it exits: cleanup is best effort.
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as profile:
        command = [
            CHROMIUM,
            *BASE_FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            *extra_flags,
            "about:blank",
        ]
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
                if process.returncode is not None or time.monotonic() > deadline:
                    raise CdpError("Chromium did not open its DevTools port")
                await asyncio.sleep(0.05)
            port, path = port_file.read_text().splitlines()[:2]
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
                connection = Connection(ws)
                try:
                    yield Browser(process, connection)
                finally:
                    with contextlib.suppress(CdpError, TimeoutError):
                        await asyncio.wait_for(connection.send("Browser.close"), 5)
                    await connection.close()
        finally:
            if process.returncode is None:
                process.terminate()
            await asyncio.wait_for(process.wait(), 20)
