"""GET /v1/nodes: the nodes serving calls, their state and load."""

from aiohttp import web

from mediaserver.api.keys import LOCAL_NODE, REGISTRY


async def list_nodes(request: web.Request) -> web.Response:
    """GET /v1/nodes: every node of the cluster (this one alone without Redis)."""
    if REGISTRY in request.app:
        records = await request.app[REGISTRY].nodes()
    else:
        records = [request.app[LOCAL_NODE].record()]
    return web.json_response({"nodes": [record.to_dict() for record in records]})


def add_routes(app: web.Application) -> None:
    """Register the nodes route."""
    app.router.add_get("/v1/nodes", list_nodes)
