"""The sim host: one process, one event loop, every simulated replica and the GPU pool.

    python -m scaler.sim.host --host 127.0.0.1 --port 0 --state-dir DIR \\
        --pool "cpu=1000,a10_24gb=64" --acquire-s 0 --time-scale 1

Each simulated replica (scaler/sim/replica.py) is its own HTTP server on its own port; the
pool and the GPU leases are in scaler/sim/pool.py, the engine's parameters in
wakegate/engines/sim_timing.py.

Control API (JSON) on --port:

    POST   /replicas           {"replica_id","deployment","revision","accelerator","params",
                                "api_key"?}
                               waits --acquire-s, takes the GPUs, returns the replica
                               (409 when the pool has no room, 422 on bad input); with
                               api_key, the replica answers 401 without
                               `Authorization: Bearer <api_key>` (but /health and /stats)
    DELETE /replicas/{id}      ?grace_s=: in-flight requests get that long, then it closes
    GET    /replicas           [{replica_id, deployment, revision, url, accelerator, state,
                                 requested_at, acquired_at, params}]
                               state: loading (health 503), ready, draining; requested_at:
                               when its POST was received (before --acquire-s), acquired_at:
                               when it took its GPUs
    GET    /replicas/{id}      one of them, with its request counters
    GET    /pool               {sku: {total, free, used}}
    GET    /usage              GPU lease intervals (all, and per deployment) with GPU-seconds
                               per deployment; wall-clock seconds (requested_at,
                               acquired_at, released_at), released_at null if held
    GET    /health             liveness, pid, CPU seconds and RSS of this process
    POST   /shutdown           ?grace_s=: stop every replica, then exit

Every route but /health needs `Authorization: Bearer <token>`, the token the host makes at
start and keeps in <state-dir>/sim-host.json (readable by its owner only): the replicas of
every tenant are listed and stopped here.

The pool counts GPUs per SKU (an accelerator id in --pool counts for its SKU); a replica on
accelerator `a10_24gb_400` takes 4 `a10_24gb` GPUs, a `cpu` replica one `cpu` slot. The host
writes its address to <state-dir>/sim-host.json, and it and its replicas outlive the scaler
that started them, like local replicas do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import re
import resource
import secrets
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from scaler.sim.pool import Lease, Pool, PoolError, parse_pool
from scaler.sim.replica import ReplicaParams, SimReplica, bind_socket, json_error
from wakegate.logs import setup_logging

log = logging.getLogger("scaler.sim.host")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATE_FILE = "sim-host.json"
REPLICA_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


class SimHost:
    """Every simulated replica of this host, the GPU pool and the lease record."""

    def __init__(
        self,
        *,
        pool: dict[str, int],
        acquire_s: float,
        time_scale: float,
        bind_host: str,
        advertise_host: str,
        state_dir: Path,
    ) -> None:
        self.pool = Pool(pool)
        self.acquire_s = acquire_s
        self.time_scale = time_scale
        self.bind_host = bind_host
        self.advertise_host = advertise_host
        self.state_dir = state_dir
        self.replicas: dict[str, SimReplica] = {}
        self.leases: list[Lease] = []
        self.token_totals: dict[str, list[int]] = {}  # deployment -> [prompt, cached]
        self.started_at = time.time()
        self.exit = asyncio.Event()
        self._starting: set[str] = set()
        self._cancelled: set[str] = set()
        self._stopping: dict[str, asyncio.Task[None]] = {}

    # --- replicas ---------------------------------------------------------------------------

    async def create(self, body: Any, requested_at: float | None = None) -> web.Response:
        """Start a replica; `requested_at`: when its request was received (default: now)."""
        requested_at = time.time() if requested_at is None else requested_at
        if not isinstance(body, dict):
            return json_error(422, "body must be a JSON object")
        rid = body.get("replica_id")
        deployment = body.get("deployment")
        revision = body.get("revision", 0)
        accelerator = body.get("accelerator", "cpu")
        if not isinstance(rid, str) or not REPLICA_ID_RE.fullmatch(rid):
            return json_error(422, "replica_id: want 1-200 letters, digits, '.', '_' or '-'")
        if not isinstance(deployment, str) or not deployment:
            return json_error(422, "deployment: want a non-empty string")
        if not isinstance(revision, int) or isinstance(revision, bool):
            return json_error(422, "revision: want an integer")
        if not isinstance(accelerator, str):
            return json_error(422, "accelerator: want a string")
        api_key = body.get("api_key")
        if api_key is not None and (not isinstance(api_key, str) or not api_key):
            return json_error(422, "api_key: want a non-empty string")
        try:
            params = ReplicaParams.from_json(body.get("params"))
            Pool.demand(accelerator)
        except (ValueError, PoolError) as exc:
            return json_error(422, str(exc))
        existing = self.replicas.get(rid)
        if existing is not None:
            if existing.stopping:
                return json_error(409, f"replica {rid} is stopping")
            return web.json_response(existing.describe())  # starting twice is starting once
        if rid in self._starting:
            return json_error(409, f"replica {rid} is already starting")
        self._starting.add(rid)
        try:
            if self.acquire_s > 0:
                await asyncio.sleep(self.acquire_s / self.time_scale)
            if rid in self._cancelled:
                return json_error(409, f"replica {rid} was deleted while acquiring its GPUs")
            try:
                sku, units, gpus = self.pool.take(accelerator)
            except PoolError as exc:
                log.warning("refused %s of %s: %s", rid, deployment, exc)
                return json_error(409, str(exc), reason="pool_exhausted")
            lease = Lease(
                rid, deployment, accelerator, sku, units, gpus, time.time(), None, requested_at
            )
            replica = SimReplica(
                replica_id=rid,
                deployment=deployment,
                revision=revision,
                accelerator=accelerator,
                params=params,
                time_scale=self.time_scale,
                bind_host=self.bind_host,
                advertise_host=self.advertise_host,
                lease=lease,
                totals=self.token_totals,
                api_key=api_key,
            )
            try:
                await replica.start()
            except OSError as exc:
                self.pool.give(sku, units)
                return json_error(500, f"replica {rid} could not listen: {exc}")
            self.replicas[rid] = replica
            self.leases.append(lease)
        finally:
            self._starting.discard(rid)
            self._cancelled.discard(rid)
        log.info("started %s of %s on %s at %s", rid, deployment, accelerator, replica.url)
        return web.json_response(replica.describe())

    def stop(self, rid: str, grace_s: float) -> asyncio.Task[None] | None:
        """Stop a replica and release its GPUs; one task per replica however often asked."""
        task = self._stopping.get(rid)
        if task is not None:
            return task
        replica = self.replicas.get(rid)
        if replica is None:
            return None

        async def retire() -> None:
            try:
                await replica.stop(grace_s)
            finally:
                replica.lease.released_at = time.time()
                self.pool.give(replica.lease.sku, replica.lease.units)
                self.replicas.pop(rid, None)
                self._stopping.pop(rid, None)
                log.info("stopped %s of %s", rid, replica.deployment)

        task = asyncio.create_task(retire())
        self._stopping[rid] = task
        return task

    async def stop_all(self, grace_s: float) -> int:
        self._cancelled.update(self._starting)
        tasks = [t for rid in list(self.replicas) if (t := self.stop(rid, grace_s)) is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)

    def usage(self) -> dict[str, Any]:
        now = time.time()
        by_deployment: dict[str, list[dict[str, Any]]] = {}
        gpu_seconds: dict[str, float] = {}
        for lease in self.leases:
            by_deployment.setdefault(lease.deployment, []).append(lease.to_json())
            gpu_seconds[lease.deployment] = gpu_seconds.get(
                lease.deployment, 0.0
            ) + lease.gpu_seconds(now)
        return {
            "now": now,
            "time_scale": self.time_scale,
            "intervals": [lease.to_json() for lease in self.leases],  # all, in start order
            "usage": by_deployment,
            "gpu_seconds": gpu_seconds,
            "tokens": {
                d: {"prompt_tokens": t[0], "cached_tokens": t[1]}
                for d, t in self.token_totals.items()
            },
        }

    # --- control API ------------------------------------------------------------------------

    def app(self, token: str) -> web.Application:
        """The control API; every route but /health needs `token` as a bearer token."""
        expected = f"Bearer {token}".encode()

        @web.middleware
        async def authenticated(request: web.Request, handler: Handler) -> web.StreamResponse:
            given = request.headers.get("Authorization", "").encode()
            if request.path != "/health" and not hmac.compare_digest(given, expected):
                return json_error(401, "the sim host's token is needed (sim-host.json)")
            return await handler(request)

        app = web.Application(middlewares=[authenticated])
        app.router.add_post("/replicas", self._h_create)
        app.router.add_get("/replicas", self._h_list)
        app.router.add_get("/replicas/{id}", self._h_get)
        app.router.add_delete("/replicas/{id}", self._h_delete)
        app.router.add_get("/pool", self._h_pool)
        app.router.add_get("/usage", self._h_usage)
        app.router.add_get("/health", self._h_health)
        app.router.add_post("/shutdown", self._h_shutdown)
        return app

    @staticmethod
    def _grace(request: web.Request, default: float = 10.0) -> float:
        try:
            return max(0.0, float(request.query.get("grace_s", default)))
        except ValueError:
            raise web.HTTPUnprocessableEntity(
                text=json.dumps({"detail": "grace_s must be a number"}),
                content_type="application/json",
            ) from None

    async def _h_create(self, request: web.Request) -> web.Response:
        requested_at = time.time()  # before the body is read: when the backend asked
        try:
            body = await request.json()
        except ValueError:
            return json_error(400, "request body is not valid JSON")
        return await self.create(body, requested_at)

    async def _h_list(self, _: web.Request) -> web.Response:
        return web.json_response([r.describe() for r in self.replicas.values()])

    async def _h_get(self, request: web.Request) -> web.Response:
        replica = self.replicas.get(request.match_info["id"])
        if replica is None:
            return json_error(404, "no such replica")
        return web.json_response({**replica.describe(), "stats": replica.stats()})

    async def _h_delete(self, request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        grace_s = self._grace(request)
        if rid in self._starting:
            self._cancelled.add(rid)
            return web.json_response({"replica_id": rid, "state": "cancelled"})
        if request.query.get("crash") in ("1", "true") and (victim := self.replicas.get(rid)):
            victim.crash()
            grace_s = 0.0
        task = self.stop(rid, grace_s)
        if task is None:
            return json_error(404, f"no replica {rid}")
        await asyncio.shield(task)
        return web.json_response({"replica_id": rid, "state": "stopped"})

    async def _h_pool(self, _: web.Request) -> web.Response:
        return web.json_response(self.pool.snapshot())

    async def _h_usage(self, _: web.Request) -> web.Response:
        return web.json_response(self.usage())

    async def _h_health(self, _: web.Request) -> web.Response:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return web.json_response(
            {
                "status": "ok",
                "pid": os.getpid(),
                "state_dir": str(self.state_dir),
                "started_at": self.started_at,
                "replicas": len(self.replicas),
                "time_scale": self.time_scale,
                "cpu_s": ru.ru_utime + ru.ru_stime,
                "rss_mib": _rss_mib(),
                "max_rss_mib": ru.ru_maxrss / 1024,
            }
        )

    async def _h_shutdown(self, request: web.Request) -> web.Response:
        stopped = await self.stop_all(self._grace(request))
        self.exit.set()
        return web.json_response({"stopped": stopped})


def _rss_mib() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _raise_fd_limit() -> None:
    # Hundreds of replicas: a listening socket each, plus their connections.
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            target = 65536 if hard == resource.RLIM_INFINITY else hard
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))


def state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def _write_state(path: Path, record: dict[str, Any]) -> None:
    """The record, readable by its owner only (it holds the control API's token)."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(record))
    tmp.replace(path)


async def serve(args: argparse.Namespace) -> None:
    state_dir = Path(args.state_dir)
    host = SimHost(
        pool=parse_pool(args.pool),
        acquire_s=args.acquire_s,
        time_scale=args.time_scale,
        bind_host=args.host,
        advertise_host=args.advertise_host or args.host,
        state_dir=state_dir,
    )
    token = secrets.token_urlsafe(24)
    runner = web.AppRunner(host.app(token), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    sock = bind_socket(args.host, args.port)
    port = int(sock.getsockname()[1])
    await web.SockSite(runner, sock).start()
    url = f"http://{args.advertise_host or args.host}:{port}"
    record = {
        "pid": os.getpid(),
        "url": url,
        "token": token,
        "port": port,
        "state_dir": str(state_dir),
        "started_at": host.started_at,
        "pool": host.pool.total,
        "acquire_s": args.acquire_s,
        "time_scale": args.time_scale,
    }
    path = state_path(state_dir)
    _write_state(path, record)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, host.exit.set)
    log.info("sim host %s serving at %s, pool %s", os.getpid(), url, host.pool.total)
    try:
        await host.exit.wait()
        await host.stop_all(grace_s=args.grace_s)
    finally:
        await runner.cleanup()
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        log.info("sim host %s stopped", os.getpid())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scaler.sim.host", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--advertise-host", default=None)
    parser.add_argument("--port", type=int, default=0, help="control API port (0: any free)")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--pool", default="cpu=1000")
    parser.add_argument("--acquire-s", type=float, default=0.0)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--grace-s", type=float, default=5.0, help="grace when stopped by signal")
    parser.add_argument("--log-level", default=os.environ.get("WAKEGATE_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    if args.time_scale <= 0 or args.acquire_s < 0:
        parser.error("--time-scale must be > 0 and --acquire-s >= 0")
    try:
        parse_pool(args.pool)
    except ValueError as exc:
        parser.error(str(exc))
    setup_logging(args.log_level, "simhost")
    _raise_fd_limit()
    Path(args.state_dir).mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
