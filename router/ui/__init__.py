"""The status overview on the gateway: `GET /v2/status` (JSON, the token's tenant only), a
deployment's health `GET /v2/deployments/{name}/health` (wakegate/health.py), and the status
page at `/ui` that shows them and manages deployments through the control-plane API (static
files: no token needed to load the page; it asks for one and sends it to the JSON routes)."""

from __future__ import annotations

import time
from collections import Counter
from importlib import resources

from aiohttp import web

from router.context import STORE
from router.errors import ApiError
from router.middlewares import UI_FILE, UI_PAGE, tenant_of
from wakegate.health import BadWindow, health_view, parse_window
from wakegate.spec import valid_name
from wakegate.status import REPLICA_STATES, STATUS_PATH, HistoryPoint, history_window, overview

routes = web.RouteTableDef()

HEALTH_PATH = "/v2/deployments/{name}/health"
PAGE_PATH = UI_PAGE
FILE_PATH = UI_FILE
# The page's files: name -> content type. Nothing else under /ui is served.
ASSETS = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
    # The page links it, so the browser does not ask for /favicon.ico (which needs a token).
    "favicon.svg": "image/svg+xml",
}
# The browser asks again after a change of wakegate (small files; no stale page after an upgrade).
# The page runs only its own files (no inline script or style, nothing from elsewhere), talks
# only to this origin, is never framed and sends no referrer: it holds a bearer token.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _asset(name: str) -> bytes:
    return (resources.files(__package__) / "static" / name).read_bytes()


@routes.get(STATUS_PATH)
async def status(request: web.Request) -> web.Response:
    tenant = tenant_of(request)["code"]
    view = await overview(request.app[STORE], tenant, time.time())
    return web.json_response(text=view.to_json())


@routes.get(HEALTH_PATH)
async def deployment_health(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    try:
        window_s = parse_window(request.query.get("window"))
    except BadWindow as exc:
        raise ApiError(400, f"window: {exc}", field="window") from None
    if not valid_name(name):
        raise ApiError(404, f"deployment {name!r} not found")
    key = f"{tenant_of(request)['code']}/{name}"
    row = await request.app[STORE].health_row(key)
    if row is None or row.spec.status == "deleting":
        raise ApiError(404, f"deployment {name} not found")
    now = time.time()
    counts = Counter(r.state for r in row.replicas)
    live = HistoryPoint(
        at=now,
        queued=row.queued,
        in_flight=row.in_flight,
        **{s: counts[s] for s in REPLICA_STATES},
    )
    view = health_view(name, row.rows, history_window(row.history, live, window_s), now, window_s)
    return web.json_response(text=view.to_json())


@routes.get(PAGE_PATH)
async def page(request: web.Request) -> web.Response:
    return web.Response(body=_asset("index.html"), content_type="text/html", headers=PAGE_HEADERS)


@routes.get(FILE_PATH)
async def asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    if name not in ASSETS:
        raise ApiError(404, f"no file {name!r} on the status page", field="asset")
    return web.Response(body=_asset(name), content_type=ASSETS[name], headers=PAGE_HEADERS)
