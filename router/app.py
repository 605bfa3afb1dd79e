"""`create_app(settings)`: the gateway as an aiohttp application."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST

from router import admin, control, lorax_api, openai_api, ui
from router.context import (
    BUS,
    DISPATCHER,
    HEALTH,
    HOLDING,
    JOBS,
    METRICS,
    METRICS_TOKEN,
    POOL_CACHE,
    QUOTA_CACHE,
    SETTINGS,
    SPEC_CACHE,
    STORAGE,
    STORE,
    TOKEN_CACHE,
    UPSTREAM,
)
from router.dispatch import Dispatcher
from router.health import HealthRecorder
from router.holding import Holding
from router.jobs import JobRunner
from router.lookups import LoadingCache
from router.metrics import GatewayMetrics
from router.middlewares import auth_middleware, errors_middleware, ingress_middleware
from router.openapi import OPENAPI_PATH, openapi_document
from router.pipeline import wake_publisher
from router.pool import POOL_TTL_S, current_pool
from router.storage import StorageWatch
from wakegate import topics
from wakegate.bus import Bus
from wakegate.catalog import load_models_file
from wakegate.quotas import tenant_quotas
from wakegate.sealing import box_from_settings, read_secret
from wakegate.settings import Settings
from wakegate.store import Store

# A revoked or expired token is refused by every gateway within this (it is looked up in
# Redis again); a token that fails is never cached.
TOKEN_TTL_S = 1.0
SPEC_TTL_S = 1.0
# A changed quota reaches the data plane of other gateways within this (the control plane
# reads quotas fresh).
QUOTA_TTL_S = 5.0
# While requests wait, their deployment is re-read this often (once per deployment, whatever
# the number waiting): one that failed or was deleted answers them at once, not at the
# queue timeout.
RECHECK_S = 1.0


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if not settings.redis_url:
        raise RuntimeError("the gateway needs REDIS_URL (wakegate up sets it for you)")
    app[STORE] = Store.from_url(settings.redis_url, box=box_from_settings(settings.secret_key_file))
    # Deployments created before the per-tenant index existed count towards the quota too.
    await app[STORE].backfill_tenant_deployments()
    yield
    await app[STORE].close()


async def _health_ctx(app: web.Application) -> AsyncIterator[None]:
    # Requests' health counts, added to Redis once a second, and once more at shutdown.
    recorder = HealthRecorder(app[STORE])
    app[HEALTH] = recorder
    task = asyncio.create_task(recorder.flush_forever())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await recorder.close()


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    # One pooled client for every replica; generation can be slow, connecting must not be.
    app[UPSTREAM] = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=600.0),
        # Idle connections are dropped before the engines' own keep-alive timeout (uvicorn's
        # is 5 s): reusing one the server is closing at that moment fails the request.
        connector=aiohttp.TCPConnector(limit=2000, keepalive_timeout=2.0),
        raise_for_status=False,
        # Replicas set no cookies; a real jar is looked up on every call.
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    yield
    await app[UPSTREAM].close()


async def _dispatch_ctx(app: web.Application) -> AsyncIterator[None]:
    on_wake = wake_publisher(app)  # the sync and the async APIs' wakes alike
    dispatcher = Dispatcher(app[STORE], app[SETTINGS].lease_ms, on_wake=on_wake)
    app[DISPATCHER] = dispatcher
    spec_cache = app[SPEC_CACHE]
    holding = Holding(
        app[STORE],
        RECHECK_S,
        app[SETTINGS].keepalive_s,
        on_spec=lambda key, spec: spec_cache.__setitem__(key, spec),
        pool=lambda: current_pool(app[POOL_CACHE], app[STORE]),
    )
    app[HOLDING] = holding
    tasks = [
        asyncio.create_task(dispatcher.listen()),
        asyncio.create_task(dispatcher.tick_forever()),
        asyncio.create_task(holding.recheck_forever()),
        asyncio.create_task(holding.keepalive_forever()),
    ]
    bus: Bus | None = None
    mqtt_url = app[SETTINGS].mqtt_url
    if mqtt_url:

        async def on_event(kind: str, ev: topics.Event) -> None:
            # A replica became ready (anywhere): hand it our queued requests at once.
            if isinstance(ev, topics.ReplicaChanged) and ev.state == "ready":
                await dispatcher.assign_free_slots(ev.deployment)
            # Deleted (through any gateway): its series go from this gateway's /metrics.
            elif isinstance(ev, topics.ConfigChanged) and ev.change == "deleted":
                app[METRICS].forget(ev.deployment)
                app[HEALTH].forget(ev.deployment)

        bus = Bus(
            mqtt_url,
            "wakegate-gateway",
            [topics.all_of("replica"), topics.all_of("config")],
            on_event,
        )
        tasks.append(asyncio.create_task(bus.run()))
    app[BUS] = bus
    settings = app[SETTINGS]
    app[STORAGE] = StorageWatch(app[STORE], settings.storage_bulk_limit)
    jobs = JobRunner(
        app[STORE], app[UPSTREAM], on_wake, settings.lease_ms, settings.async_result_ttl_s,
        settings.queue_timeout_s, settings.request_log_max_bytes, app[STORAGE],
        lambda tenant: tenant_quotas(app[STORE], settings, tenant), app[HEALTH],
    )  # fmt: skip
    app[JOBS] = jobs
    tasks += [asyncio.create_task(jobs.listen()), asyncio.create_task(jobs.sweep_forever())]
    tasks.append(asyncio.create_task(app[STORAGE].run()))
    yield
    await jobs.close()
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    # Several workers' files keep deleted deployments' values: leave those series out.
    live = set(await request.app[STORE].deployment_keys()) if metrics.multiprocess else None
    body = metrics.exposition(live)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _plain_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every response: its content type is what it says (no sniffing), and no banner naming
    the server's software and versions."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.popall("Server", None)


async def health_handler(request: web.Request) -> web.Response:
    await request.app[STORE].redis.ping()
    return web.json_response({"status": "ok", "gateway": request.app[DISPATCHER].gateway_id})


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def create_app(settings: Settings, private_port: int | None = None) -> web.Application:
    """The gateway; `private_port`: the port of its private (direct-ingress) listener, whose
    requests reach the data plane only, every deployment's (router/__main__.py binds it)."""
    # Deployments naming a user's catalogue entry validate only once it is loaded.
    load_models_file(settings.models_file)
    middlewares: list[Middleware] = [errors_middleware, auth_middleware]
    if private_port is not None:
        # After the errors middleware (which names the route's family), before auth: a
        # control-plane path on the private listener is no route there, token or not.
        middlewares.insert(1, ingress_middleware(private_port))
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = GatewayMetrics()
    app[METRICS_TOKEN] = read_secret(settings.metrics_token_file)
    box_from_settings(settings.secret_key_file)  # an unreadable key fails here, at start-up
    # A revoked token stops working within TOKEN_TTL_S; a changed deployment is seen by
    # the data plane within SPEC_TTL_S (requests that wait re-read it fresh).
    app[TOKEN_CACHE] = LoadingCache(maxsize=10_000, ttl=TOKEN_TTL_S)
    app[SPEC_CACHE] = LoadingCache(maxsize=10_000, ttl=SPEC_TTL_S)
    app[QUOTA_CACHE] = LoadingCache(maxsize=10_000, ttl=QUOTA_TTL_S)
    app[POOL_CACHE] = LoadingCache(maxsize=1, ttl=POOL_TTL_S)
    app.cleanup_ctx.extend([_redis_ctx, _health_ctx, _upstream_ctx, _dispatch_ctx])
    app.on_response_prepare.append(_plain_headers)
    app.router.add_get("/healthz", health_handler)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get(OPENAPI_PATH, openapi_handler)
    app.add_routes(control.routes)
    app.add_routes(admin.routes)
    app.add_routes(lorax_api.routes)
    app.add_routes(openai_api.routes)
    app.add_routes(ui.routes)
    return app
