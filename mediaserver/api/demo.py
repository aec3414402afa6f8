"""A small page that calls the server from a browser over WHIP."""

from importlib import resources

from aiohttp import web

_PAGE_HTML = (resources.files("mediaserver") / "static" / "demo.html").read_text(encoding="utf-8")


async def demo_page(request: web.Request) -> web.Response:
    """GET /demo: the browser caller."""
    return web.Response(text=_PAGE_HTML, content_type="text/html")


def add_routes(app: web.Application) -> None:
    """Register the demo page."""
    app.router.add_get("/demo", demo_page)
