"""The console's files: every test hook the issue names, nothing from another origin, wavesurfer."""

import re
from pathlib import Path
from string import Template

import pytest

from mediaserver.api.console import CONSOLE_DIR, PAGES, build_page

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


def test_pages_load_only_local_modules_and_link_live_calls() -> None:
    """Every page is the layout around its <main>; scripts are modules under /console/js/."""
    layout = Template((CONSOLE_DIR / "layout.html").read_text())
    for page in PAGES:
        main = (CONSOLE_DIR / "pages" / f"{page.name}.html").read_text()
        html = build_page(layout, page, main)
        scripts = re.findall(r"<script[^>]*>", html)
        assert scripts, page
        assert all('type="module"' in tag for tag in scripts), scripts
        assert all(src.startswith("/console/js/") for src in re.findall(r'src="([^"]+)"', html))
        assert (CONSOLE_DIR / "js" / f"{page.name}.js").is_file(), page
        assert html.count('<main id="main"') == 1, page
        if page.section is not None:
            assert '<a href="/live"' in html  # "Live calls", linked from every page
            assert html.count('aria-current="page"') == 1, page


def test_wavesurfer_is_the_pinned_npm_release_with_its_license() -> None:
    """Vendored from the npm package by scripts/vendor-wavesurfer, BSD-3 license kept."""
    vendor = CONSOLE_DIR / "vendor" / "wavesurfer"
    assert "wavesurfer.js 8.0.1 (npm)" in (vendor / "VERSION").read_text()
    assert "BSD 3-Clause License" in (vendor / "LICENSE").read_text()
    for name in ("wavesurfer.esm.js", "regions.esm.js", "timeline.esm.js"):
        assert (vendor / name).stat().st_size > 5000, name
