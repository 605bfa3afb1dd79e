"""`python -m router`: run the gateway, as one process or as N workers on one port.

    python -m router [--workers N]

Each gateway process serves two listeners: the public one (`host`:`port`) and, unless
`private_port` is none, the private data-plane one (`private_host`:`private_port`, direct
ingress: README). With N > 1 this process only supervises: it starts N gateway processes
that all bind both ports with SO_REUSEPORT (the kernel spreads connections over them),
restarts one that dies, and stops them all on SIGTERM or Ctrl-C. The workers keep their
metrics in files of one folder (prometheus_client's multiprocess mode), so whichever worker
answers /metrics reports all of them. Each worker is a gateway of its own, with its own
id, queue leases and assignment channel, exactly as if it ran on another machine: the queue
in Redis keeps the global order across them, and a worker that dies frees its entries when
their leases run out.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from types import FrameType

import uvloop
from aiohttp import web
from prometheus_client.multiprocess import mark_process_dead

from router.app import create_app
from router.metrics import MULTIPROC_ENV
from wakegate.catalog import CatalogError
from wakegate.logs import setup_logging
from wakegate.procs import child_setup
from wakegate.sealing import SecretKeyError
from wakegate.settings import Settings, load_settings_or_exit

log = logging.getLogger("router")

WORKER_FLAG = "--worker"
RESTART_BACKOFF_S = 1.0
SHUTDOWN_TIMEOUT_S = 10
PRIVATE_BACKLOG = 128  # as aiohttp's own listener
# CPython collects its youngest generation every 700 new container objects. A request makes
# hundreds and a relayed token several (its event's dict, list and strings), nearly all
# short-lived, so collections ran every few tokens, and every older-generation pass walked the
# objects of the gateway's start-up too (its routes, models, metrics): the collector was about
# a third of a stream relay's own Python work (bench/README). Start-up's objects are frozen
# out of collection, and the young generation is larger.
GC_YOUNG_OBJECTS = 50_000


async def _tune_gc(app: web.Application) -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_OBJECTS, *gc.get_threshold()[1:])


def private_socket(settings: Settings, reuse_port: bool) -> socket.socket | None:
    """The private data-plane listener's socket (direct ingress), bound here so that the app
    knows its port before it serves; None when there is none."""
    if settings.private_port is None:
        return None
    if settings.private_port == settings.port:
        raise SystemExit(
            "bad configuration: WAKEGATE_PRIVATE_PORT must differ from WAKEGATE_PORT "
            f"(both {settings.port}): the listener a request came in on is told by its port"
        )
    family, kind, proto, _, address = socket.getaddrinfo(
        settings.private_host, settings.private_port, type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE,
    )[0]  # fmt: skip
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise SystemExit(
            f"cannot listen on {settings.private_host}:{settings.private_port} (the private "
            f"listener, WAKEGATE_PRIVATE_HOST / WAKEGATE_PRIVATE_PORT): {exc}"
        ) from None
    sock.listen(PRIVATE_BACKLOG)
    sock.setblocking(False)
    return sock


def serve(settings: Settings, reuse_port: bool) -> None:
    private = private_socket(settings, reuse_port)
    try:
        app = create_app(settings, private_port=private.getsockname()[1] if private else None)
    except (CatalogError, SecretKeyError) as exc:
        raise SystemExit(str(exc)) from None
    app.on_startup.append(_tune_gc)  # after the app's own start-up (its cleanup contexts)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        sock=private,
        reuse_port=reuse_port or None,
        # A client that goes away cancels its handler, which takes it out of the queue.
        handler_cancellation=True,
        access_log=None,
        print=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        # libuv's loop: the gateway spends most of its time in socket reads and writes, which
        # uvloop does in C (about a fifth of a warm request's CPU on the default loop).
        loop=uvloop.new_event_loop(),
    )


def supervise(workers: int) -> int:
    """Run `workers` gateway processes until SIGTERM/SIGINT; restart any that dies."""
    argv = [sys.executable, "-m", "router", WORKER_FLAG]
    # Each worker's counters and histograms in files here; /metrics adds them up.
    metrics_dir = tempfile.mkdtemp(prefix="wakegate-gateway-metrics-")
    env = {**os.environ, MULTIPROC_ENV: metrics_dir}

    def start() -> subprocess.Popen[bytes]:
        # Workers share this process's stdout and stderr (one log), and die with it.
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=child_setup, env=env)

    stopping = False

    def on_signal(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    procs = [start() for _ in range(workers)]
    log.info("gateway: %d workers on one port (pids %s)", workers, [p.pid for p in procs])
    try:
        while not stopping:
            time.sleep(0.2)
            for i, proc in enumerate(procs):
                if proc.poll() is not None and not stopping:
                    log.warning("gateway worker %d exited (%s); restarting", proc.pid,
                                proc.returncode)  # fmt: skip
                    # Its gauges (in flight) no longer count; its counters still do.
                    mark_process_dead(proc.pid, metrics_dir)  # type: ignore[no-untyped-call]
                    time.sleep(RESTART_BACKOFF_S)
                    procs[i] = start()
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(SHUTDOWN_TIMEOUT_S + 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m router", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=None, help="gateway processes (default 1)")
    parser.add_argument(WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = load_settings_or_exit()
    setup_logging(settings.log_level, "gateway")
    if args.worker:
        serve(settings, reuse_port=True)
        return
    workers = args.workers if args.workers is not None else settings.gateway_workers or 1
    if workers < 1:
        raise SystemExit("--workers must be >= 1")
    if workers == 1:
        serve(settings, reuse_port=False)
        return
    raise SystemExit(supervise(workers))


if __name__ == "__main__":
    main()
