"""The OpenAPI 3.1 description of the HTTP API, served from the JSON file beside this module."""

# openapi.json is written by hand and kept true by tests/test_openapi.py, which compares its paths
# and methods with the routes the application registers, both ways, and validates it against the
# OpenAPI 3.1 schema. The version is the installed package's, filled in when the module loads.

import json
from importlib import metadata, resources

from aiohttp import web

OPENAPI_PATH = "/v1/openapi.json"


def load_openapi_document() -> dict[str, object]:
    """The shipped document with info.version set to the package's version."""
    document: dict[str, object] = json.loads(
        (resources.files("mediaserver.api") / "openapi.json").read_text(encoding="utf-8")
    )
    info = document["info"]
    assert isinstance(info, dict)
    info["version"] = metadata.version("mediaserver")
    return document


_DOCUMENT_BYTES = json.dumps(load_openapi_document(), ensure_ascii=False).encode()


async def openapi_document(request: web.Request) -> web.Response:
    """GET /v1/openapi.json: this API's description."""
    return web.Response(body=_DOCUMENT_BYTES, content_type="application/json", charset="utf-8")


def add_routes(app: web.Application) -> None:
    """Register the description's route."""
    app.router.add_get(OPENAPI_PATH, openapi_document)
