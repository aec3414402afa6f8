"""The operator console: its pages at /, /recordings/{id}, /live, /try and /login, and its files."""

# Each page is its <main> (mediaserver/console/pages/) inside one layout: the head, the skip link
# and the top bar with its navigation are written once. Pages are built at start-up and served
# from memory; their scripts read the JSON API.

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from html import escape
from importlib import resources
from pathlib import Path
from string import Template
from urllib.parse import quote

from aiohttp import web

CONSOLE_DIR = Path(str(resources.files("mediaserver") / "console"))
# Nothing comes from another origin. Styles may be inline because wavesurfer.js styles its shadow
# DOM with <style> elements.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; media-src 'self' blob:; connect-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}
# (link, label, the scope a token needs to use that page: its link is hidden without it)
NAVIGATION = (
    ("/", "Recordings", "recordings:read"),
    ("/live", "Live calls", "calls"),
    ("/try", "Try it", "calls"),
)


@dataclass(frozen=True, slots=True)
class Page:
    """One console page: its route, title, body file, script and place in the navigation."""

    route: str
    title: str
    name: str  # pages/<name>.html and js/<name>.js
    section: str | None  # the navigation link it belongs to; None: no top bar (sign-in)


PAGES = (
    Page("/", "Recordings", "recordings", "/"),
    Page("/recordings/{call_id}", "Recording", "recording", "/"),
    Page("/live", "Live calls", "live", "/live"),
    Page("/try", "Try it", "try", "/try"),
    Page("/login", "Sign in", "login", None),
)


def build_topbar(section: str) -> str:
    """The bar on every signed-in page: brand, navigation (this page's link marked), sign-out."""
    current = ' aria-current="page"'
    links = "\n".join(
        f'    <a href="{href}" data-scope="{scope}"{current if href == section else ""}>{label}</a>'
        for href, label, scope in NAVIGATION
    )
    return (
        '<header class="topbar">\n  <a class="brand" href="/">mediaserver</a>\n'
        f'  <nav aria-label="Console">\n{links}\n  </nav>\n'
        '  <span class="identity" id="signed-in-as" data-testid="signed-in-as"></span>\n'
        '  <button type="button" class="signout" id="sign-out">Sign out</button>\n</header>'
    )


def build_page(layout: Template, page: Page, main: str) -> str:
    """A page's whole HTML from the layout and its <main>."""
    scripts = [f"/console/js/{page.name}.js"]
    if page.section is not None:
        scripts.insert(0, "/console/js/topbar.js")
    return layout.substitute(
        title=escape(page.title),
        scripts="\n".join(f'<script type="module" src="{src}"></script>' for src in scripts),
        topbar="" if page.section is None else build_topbar(page.section),
        main=main.rstrip("\n"),
    )


def _serve(html: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler that serves one built page with the console's security headers."""

    async def serve(request: web.Request) -> web.Response:
        """Serve the page (sign-in is checked by the auth middleware, except for /login)."""
        return web.Response(text=html, content_type="text/html", headers=SECURITY_HEADERS)

    return serve


async def demo_redirect(request: web.Request) -> web.Response:
    """GET /demo: the old browser caller is the console's Try-it page now."""
    # The query as it came, still percent-encoded; anything else a header cannot carry, encoded.
    query = quote(request.rel_url.raw_query_string, safe="=&%+;,/?:@-._~")
    location = "/try" + (f"?{query}" if query else "")
    return web.Response(status=308, headers={"Location": location})


def add_routes(app: web.Application) -> None:
    """Register the pages, the console's files under /console/ and the /demo redirect."""
    layout = Template((CONSOLE_DIR / "layout.html").read_text(encoding="utf-8"))
    for page in PAGES:
        main = (CONSOLE_DIR / "pages" / f"{page.name}.html").read_text(encoding="utf-8")
        app.router.add_get(page.route, _serve(build_page(layout, page, main)))
    app.router.add_get("/demo", demo_redirect)
    app.router.add_static("/console/", CONSOLE_DIR, follow_symlinks=False)
