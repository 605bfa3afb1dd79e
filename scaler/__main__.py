"""`python -m scaler`: run one scaler instance with its /metrics and /healthz endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scaler.backends import BackendUnavailable, create_backend
from scaler.service import Scaler
from wakegate.catalog import CatalogError, load_models_file
from wakegate.logs import setup_logging
from wakegate.sealing import SecretKeyError, box_from_settings, read_secret
from wakegate.settings import Settings, load_settings_or_exit
from wakegate.store import Store

log = logging.getLogger("scaler")


def _http_app(scaler: Scaler, store: Store, metrics_token: str) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        # Operators only (the series name every tenant's deployments): the metrics token
        # (Prometheus) or an admin token.
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return web.json_response(
                {"error": "missing token: send 'Authorization: Bearer <metrics or admin token>'"},
                status=401,
            )
        if not (metrics_token and hmac.compare_digest(token.encode(), metrics_token.encode())):
            if await store.admin_for_token(token) is None:
                return web.json_response({"error": "invalid metrics token"}, status=401)
        body = generate_latest(scaler.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"instance": scaler.instance_id, "leader": scaler.is_leader})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", health)
    return app


async def serve(settings: Settings) -> None:
    if not settings.redis_url:
        raise SystemExit("the scaler needs REDIS_URL (wakegate up sets it for you)")
    try:
        # Replicas of a user's catalogue entry need it to find their engine and weights.
        load_models_file(settings.models_file)
    except CatalogError as exc:
        raise SystemExit(str(exc)) from None
    try:
        backend = create_backend(settings)
    except (ValueError, BackendUnavailable) as exc:
        raise SystemExit(f"scaler: {exc}") from None
    try:
        box = box_from_settings(settings.secret_key_file)
        metrics_token = read_secret(settings.metrics_token_file)
    except SecretKeyError as exc:
        raise SystemExit(f"scaler: {exc}") from None
    store = Store.from_url(settings.redis_url, box=box)
    scaler = Scaler(settings, store, backend)
    runner = web.AppRunner(_http_app(scaler, store, metrics_token), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.scaler_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "scaler %s serving metrics on http://%s:%s/metrics",
        scaler.instance_id,
        settings.host,
        settings.scaler_port,
    )
    task = asyncio.create_task(scaler.run())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    # Replicas keep running: a restarted scaler adopts them instead of paying cold starts.
    task.cancel()
    stopper.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    if task.done() and not task.cancelled() and task.exception():
        log.error("scaler stopped on an error", exc_info=task.exception())
    await scaler.close()
    await runner.cleanup()
    await store.close()


def main() -> None:
    settings = load_settings_or_exit()
    setup_logging(settings.log_level, "scaler")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
