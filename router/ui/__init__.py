"""The status overview on the gateway: `GET /v2/status` (JSON, the token's tenant only) and
the status page at `/ui` that shows it (static files: no token needed to load the page; it
asks for one and sends it to the JSON routes)."""

from __future__ import annotations

import time
from importlib import resources

from aiohttp import web

from router.context import STORE
from router.errors import ApiError
from router.middlewares import UI_FILE, UI_PAGE, tenant_of
from wakegate.status import STATUS_PATH, overview

routes = web.RouteTableDef()

PAGE_PATH = UI_PAGE
FILE_PATH = UI_FILE
# The page's files: name -> content type. Nothing else under /ui is served.
ASSETS = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}
# The browser asks again after a change of wakegate (small files; no stale page after an upgrade).
NO_CACHE = {"Cache-Control": "no-cache"}


def _asset(name: str) -> bytes:
    return (resources.files(__package__) / "static" / name).read_bytes()


@routes.get(STATUS_PATH)
async def status(request: web.Request) -> web.Response:
    tenant = tenant_of(request)["code"]
    view = await overview(request.app[STORE], tenant, time.time())
    return web.json_response(text=view.to_json())


@routes.get(PAGE_PATH)
async def page(request: web.Request) -> web.Response:
    return web.Response(body=_asset("index.html"), content_type="text/html", headers=NO_CACHE)


@routes.get(FILE_PATH)
async def asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    if name not in ASSETS:
        raise ApiError(404, f"no file {name!r} on the status page", field="asset")
    return web.Response(body=_asset(name), content_type=ASSETS[name], headers=NO_CACHE)
