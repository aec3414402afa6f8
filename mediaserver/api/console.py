"""The operator console: its pages at /, /recordings/{id}, /live, /try and /login, and its files."""

from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

CONSOLE_DIR = Path(str(resources.files("mediaserver") / "console"))
# Pages are static shells; their scripts read the JSON API. Nothing comes from another origin.
# Styles may be inline because wavesurfer.js styles its shadow DOM with <style> elements.
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
PAGES = {
    "/": "recordings.html",
    "/recordings/{call_id}": "recording.html",
    "/live": "live.html",
    "/try": "try.html",
    "/login": "login.html",
}


def _page(file_name: str) -> Callable[[web.Request], Awaitable[web.FileResponse]]:
    """A handler that serves one page with the console's security headers."""
    path = CONSOLE_DIR / file_name

    async def serve(request: web.Request) -> web.FileResponse:
        """Serve the page (sign-in is checked by the auth middleware, except for /login)."""
        return web.FileResponse(path, headers=SECURITY_HEADERS)

    return serve


async def demo_redirect(request: web.Request) -> web.Response:
    """GET /demo: the old browser caller is the console's Try-it page now."""
    # The query as it came, still percent-encoded; anything else a header cannot carry, encoded.
    query = quote(request.rel_url.raw_query_string, safe="=&%+;,/?:@-._~")
    location = "/try" + (f"?{query}" if query else "")
    return web.Response(status=308, headers={"Location": location})


def add_routes(app: web.Application) -> None:
    """Register the pages, the console's files under /console/ and the /demo redirect."""
    for route, file_name in PAGES.items():
        app.router.add_get(route, _page(file_name))
    app.router.add_get("/demo", demo_redirect)
    app.router.add_static("/console/", CONSOLE_DIR, follow_symlinks=False)
