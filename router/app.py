"""`create_app(settings)`: the gateway as an aiohttp application."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from router import control, data
from router.context import BUS, DISPATCHER, METRICS, SETTINGS, STORE, UPSTREAM
from router.dispatch import Dispatcher
from router.metrics import GatewayMetrics
from router.middlewares import auth_middleware, errors_middleware
from wakegate import topics
from wakegate.bus import Bus
from wakegate.settings import Settings
from wakegate.store import Store


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if not settings.redis_url:
        raise RuntimeError("the gateway needs REDIS_URL (wakegate up sets it for you)")
    app[STORE] = Store.from_url(settings.redis_url)
    yield
    await app[STORE].close()


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    # One pooled client for every replica; generation can be slow, connecting must not be.
    app[UPSTREAM] = httpx.AsyncClient(
        timeout=httpx.Timeout(connect=5.0, read=600.0, write=30.0, pool=30.0),
        # Idle connections are dropped before the engines' own keep-alive timeout (uvicorn's
        # is 5 s): reusing one the server is closing at that moment fails the request.
        limits=httpx.Limits(
            max_connections=1000, max_keepalive_connections=200, keepalive_expiry=2.0
        ),
    )
    yield
    await app[UPSTREAM].aclose()


async def _dispatch_ctx(app: web.Application) -> AsyncIterator[None]:
    dispatcher = Dispatcher(app[STORE], app[SETTINGS].lease_ms)
    app[DISPATCHER] = dispatcher
    tasks = [
        asyncio.create_task(dispatcher.listen()),
        asyncio.create_task(dispatcher.tick_forever()),
    ]
    bus: Bus | None = None
    mqtt_url = app[SETTINGS].mqtt_url
    if mqtt_url:

        async def on_event(kind: str, ev: topics.Event) -> None:
            # A replica became ready (anywhere): hand it our queued requests at once.
            if isinstance(ev, topics.ReplicaChanged) and ev.state == "ready":
                await dispatcher.kick(ev.deployment)

        bus = Bus(mqtt_url, "wakegate-gateway", [topics.all_of("replica")], on_event)
        tasks.append(asyncio.create_task(bus.run()))
    app[BUS] = bus
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def health_handler(request: web.Request) -> web.Response:
    await request.app[STORE].redis.ping()
    return web.json_response({"status": "ok", "gateway": request.app[DISPATCHER].gateway_id})


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[METRICS] = GatewayMetrics()
    app.cleanup_ctx.extend([_redis_ctx, _upstream_ctx, _dispatch_ctx])
    app.router.add_get("/healthz", health_handler)
    app.router.add_get("/metrics", metrics_handler)
    app.add_routes(control.routes)
    app.add_routes(data.routes)
    return app
