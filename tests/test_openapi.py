"""/v1/openapi.json: valid OpenAPI 3.1, served without a token, true to the registered routes."""

import json
from importlib import metadata
from pathlib import Path

import aiohttp
from app_routes import registered_operations
from openapi_spec_validator import validate

from mediaserver.api.openapi import OPENAPI_PATH, load_openapi_document

from server_harness import make_settings, running_server

DOCUMENT_FILE = Path(__file__).resolve().parents[1] / "mediaserver" / "api" / "openapi.json"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _documented_operations(document: dict[str, object]) -> set[tuple[str, str]]:
    """(METHOD, path template) of every operation the document describes."""
    paths = document["paths"]
    assert isinstance(paths, dict)
    return {
        (method.upper(), path)
        for path, item in paths.items()
        for method in item
        if method in HTTP_METHODS
    }


def test_document_is_valid_openapi_3_1() -> None:
    """The shipped file passes openapi-spec-validator as OpenAPI 3.1."""
    document = json.loads(DOCUMENT_FILE.read_text(encoding="utf-8"))
    assert document["openapi"].startswith("3.1.")
    validate(document)


def test_document_and_routes_agree_both_ways(tmp_path: Path) -> None:
    """Every registered route is described, and every described operation is registered."""
    registered = registered_operations(tmp_path)
    documented = _documented_operations(load_openapi_document())
    assert registered - documented == set(), "routes the document does not describe"
    assert documented - registered == set(), "described operations no route serves"


def test_every_operation_says_how_bad_requests_are_answered() -> None:
    """Operations that take a body or a path id list their 4xx answers."""
    document = load_openapi_document()
    paths = document["paths"]
    assert isinstance(paths, dict)
    for path, item in paths.items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            responses = operation["responses"]
            if "requestBody" in operation:
                assert "400" in responses or "415" in responses, (method, path)
            if "{call_id}" in path and method != "options":
                assert "404" in responses, (method, path)


async def test_served_without_a_token_with_the_package_version(tmp_path: Path) -> None:
    """GET /v1/openapi.json needs no token and returns the document, versioned like the package."""
    async with (
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession() as client,
        client.get(base + OPENAPI_PATH) as response,
    ):
        assert response.status == 200
        assert response.content_type == "application/json"
        served = await response.json()
    assert served["info"]["version"] == metadata.version("mediaserver")
    assert served["paths"] == json.loads(DOCUMENT_FILE.read_text(encoding="utf-8"))["paths"]
