"""The routes an application registers, as (METHOD, path template) pairs."""

from pathlib import Path

from aiohttp import web

from mediaserver.app import create_app

from server_harness import make_settings


def registered_operations(tmp_path: Path) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route, without the HEAD aiohttp adds beside each GET."""
    app = create_app(make_settings(tmp_path))
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if isinstance(route.resource, web.StaticResource):
            path += "/{filename}"  # a directory of files: one templated path in the document
        routes.add((route.method, path))
    return {
        (method, path)
        for method, path in routes
        if not (method == "HEAD" and ("GET", path) in routes)
    }
