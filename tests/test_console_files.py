"""The console's files: every test hook the issue names, nothing from another origin, wavesurfer."""

import re
from pathlib import Path

import pytest

from mediaserver.api.console import CONSOLE_DIR, PAGES

# The data-testid hooks the console promises to keep (their meaning is tested in the browser).
HOOKS = (
    "login-token",
    "login-submit",
    "recordings-row",
    "recording-waveform",
    "play-button",
    "mute-caller",
    "mute-agent",
    "transcript-line",
    "analysis-talk-time",
    "analysis-response-latency",
    "delete-recording",
    "live-call-row",
    "demo-start",
    "demo-hangup",
    "demo-recording-link",
)
# XML namespaces name no resource: the only absolute URLs allowed.
NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xhtml"}


def console_files() -> list[Path]:
    """Every page, script, style and image of the console."""
    return [
        path for path in CONSOLE_DIR.rglob("*") if path.suffix in (".html", ".js", ".css", ".svg")
    ]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_exists(hook: str) -> None:
    """Each hook is written in a page or handed to a script's data-testid."""
    sources = "\n".join(path.read_text() for path in console_files() if "vendor" not in path.parts)
    assert f'"{hook}"' in sources, hook


def test_nothing_is_loaded_from_another_origin() -> None:
    """No CDN, no fonts, no analytics: the console works offline."""
    for path in console_files():
        for url in re.findall(
            r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s\"')]*", path.read_text()
        ):
            assert url in NAMESPACES, (path, url)


def test_pages_exist_and_load_only_local_modules() -> None:
    """Every routed page is a file; its scripts are modules under /console/."""
    for file_name in PAGES.values():
        html = (CONSOLE_DIR / file_name).read_text()
        scripts = re.findall(r'<script[^>]*src="([^"]+)"', html)
        assert scripts, file_name
        assert all(src.startswith("/console/js/") for src in scripts), scripts
        assert all('type="module"' in tag for tag in re.findall(r"<script[^>]*>", html))
        assert "Live calls" in html or file_name == "login.html"


def test_wavesurfer_is_the_pinned_npm_release_with_its_license() -> None:
    """Vendored from the npm package by scripts/vendor-wavesurfer, BSD-3 license kept."""
    vendor = CONSOLE_DIR / "vendor" / "wavesurfer"
    assert "wavesurfer.js 8.0.1 (npm)" in (vendor / "VERSION").read_text()
    assert "BSD 3-Clause License" in (vendor / "LICENSE").read_text()
    for name in ("wavesurfer.esm.js", "regions.esm.js", "timeline.esm.js"):
        assert (vendor / name).stat().st_size > 5000, name
