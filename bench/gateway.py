"""Gateway overhead side by side: one warm sim replica, direct and through each proxy.

    bench/gateway.sh [--quick] [--duration 8] [--workers N]   (installs what is missing)
    .venv/bin/python bench/gateway.py --litellm PATH/TO/litellm [--duration 8] [--workers N]

A fresh embedded stack (Redis, broker, scaler, gateway) on the `sim` backend with one
deployment of one warm replica that answers at once (no load, no TTFT; 1,000 tokens/s per
stream, 1,024 sequences at a time). The same `POST .../v1/completions` with `max_tokens` 1
then goes, for `--duration` seconds per row, with wrk (1 thread, `--latency`) at c=4 and
c=32 to:

- the replica directly (with its per-replica key, read from its record in Redis),
- nginx as a keep-alive proxy to it (one worker; it adds the key),
- aiohttp alone (`bench/bare_proxy.py`: aiohttp's server and client relaying the request, on
  uvloop, one process): the floor of the stack the gateway is built on, before its own work,
- the LiteLLM proxy with the replica as an OpenAI-compatible upstream (one worker),
- the wakegate gateway with 1 worker, and with `--workers` workers (default: the cores).

Then the streaming row: c=32 clients, each sending 1,000-token streams back to back, direct,
through aiohttp alone and through the gateway (1 worker), measured by a Python client (wrk
cannot see the first token): tokens per second over all streams and first-token latency p50/p99.

Every server's CPU (its processes together, % of one core) is measured over its rows. The
table goes to stdout; JSON and the table to `bench/results/gateway/` (`--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from wakegate.engines.sim_timing import SimTiming
from wakegate.procs import free_port
from wakegate.settings import Settings, settings_env
from wakegate.store import Store
from wakegate.tools.up import Stack

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "wrk_post.lua"
NAME = "bench"
MODEL = "sim-llm"
ENGINE = SimTiming(load_s=0.0, ttft_s=0.0, tps=1000.0, batch=1024).args()
BODY = {"model": MODEL, "prompt": "hello", "max_tokens": 1}
STREAM_TOKENS = 1000
BARE = "aiohttp alone (server + client, no gateway work)"


@dataclass
class Target:
    label: str
    url: str  # the completions URL
    auth: str  # the Authorization header's value
    model: str  # the body's "model"
    pids: list[int]  # the server's processes, for its CPU


@dataclass
class Row:
    label: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_pct: float


def cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _ms(raw: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", raw).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(target: Target, concurrency: int, duration_s: int) -> Row:
    env = {**os.environ, "BENCH_AUTH": target.auth,
           "BENCH_BODY": json.dumps({**BODY, "model": target.model})}  # fmt: skip
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration_s}s", "--latency", "--timeout", "10s",
           "-s", str(WRK_SCRIPT), target.url]  # fmt: skip
    cpu0, t0 = cpu_s(target.pids), time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    cpu = (cpu_s(target.pids) - cpu0) / (time.monotonic() - t0) * 100
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)", out, re.M))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, errs.groups())) if errs else 0)
    return Row(target.label, concurrency, rps, _ms(lat["50"]), _ms(lat["99"]), errors, cpu)


async def stream_row(target: Target, concurrency: int, duration_s: float) -> dict[str, Any]:
    """Back-to-back 1,000-token streams from `concurrency` clients for about `duration_s`."""
    body = {**BODY, "model": target.model, "max_tokens": STREAM_TOKENS, "stream": True}
    headers = {"Authorization": target.auth}
    first: list[float] = []
    tokens = 0
    failed = 0
    end = time.monotonic() + duration_s
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as client:

        async def one_client() -> None:
            nonlocal tokens, failed
            while time.monotonic() < end:
                sent = time.monotonic()
                got = 0
                async with client.post(target.url, json=body, headers=headers) as r:
                    if r.status != 200:
                        failed += 1
                        await r.read()
                        continue
                    async for raw in r.content:
                        if raw.startswith(b"data: {"):
                            if got == 0:
                                first.append((time.monotonic() - sent) * 1000)
                            got += 1
                tokens += got

        cpu0, t0 = cpu_s(target.pids), time.monotonic()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        wall = time.monotonic() - t0
        cpu = (cpu_s(target.pids) - cpu0) / wall * 100
    first.sort()
    return {
        "label": target.label,
        "concurrency": concurrency,
        "tokens_per_s": round(tokens / wall),
        "streams": len(first),
        "failed": failed,
        "first_token_p50_ms": round(statistics.median(first), 2) if first else None,
        "first_token_p99_ms": round(first[min(len(first) - 1, int(0.99 * len(first)))], 2)
        if first
        else None,
        "cpu_pct": round(cpu),
    }


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 60) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up within {timeout_s:.0f}s")


@contextmanager
def nginx(tmp: Path, upstream: str, key: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    host = upstream.split("://", 1)[1]
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    upstream replica {{ server {host}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 8m;
        location / {{
            proxy_pass http://replica;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {key}";
            proxy_buffering off;
        }}
    }}
}}
""")
    with serving(["nginx", "-c", str(conf), "-p", str(tmp)], port) as proc:
        yield port, proc


@contextmanager
def bare_proxy(upstream: str, key: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """aiohttp's server and client alone, relaying to the replica (bench/bare_proxy.py)."""
    port = free_port()
    # `--key=`: a replica key may start with "-", which argparse would take for an option.
    argv = [sys.executable, str(HERE / "bare_proxy.py"), "--port", str(port),
            "--upstream", upstream, f"--key={key}"]  # fmt: skip
    with serving(argv, port) as proc:
        yield port, proc


@contextmanager
def serving(argv: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A server started, answering `/health` on `port`, stopped on the way out."""
    proc = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        yield proc
    finally:
        proc.terminate()
        proc.wait()


@contextmanager
def litellm(
    tmp: Path, binary: str, upstream: str, key: str
) -> Iterator[tuple[int, subprocess.Popen[bytes], str]]:
    """The LiteLLM proxy on a port of its own, and the master key that clients send."""
    port = free_port()
    master = "sk-" + secrets.token_hex(16)
    conf = tmp / "litellm.yaml"
    conf.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream}/v1\n"
        f"      api_key: {key}\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    log = open(tmp / "litellm.log", "wb")
    proc = subprocess.Popen(
        [binary, "--config", str(conf), "--host", "127.0.0.1", "--port", str(port),
         "--num_workers", "1"],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
             "LITELLM_MASTER_KEY": master},
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, timeout_s=180)
        yield port, proc, master
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextmanager
def gateway_workers(stack: Stack, workers: int) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A second gateway of the same installation: `workers` processes on a port of its own."""
    port = free_port()
    env = {**os.environ, **settings_env(stack.settings), "WAKEGATE_PORT": str(port)}
    log = open(stack.settings.state_dir / "logs" / "gateway-workers.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "--workers", str(workers)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        while len(psutil.Process(proc.pid).children()) < workers:
            time.sleep(0.1)
        time.sleep(1)  # every worker bound (the first to answer /healthz may be alone)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def table(rows: list[Row], streams: list[dict[str, Any]], workers: int) -> str:
    by = {(r.label, r.concurrency): r for r in rows}
    labels = list(dict.fromkeys(r.label for r in rows))
    out = [
        "| path | c=4 req/s | c=4 p50 / p99 | c=32 req/s | c=32 p50 / p99 | errors | CPU % "
        "| CPU per request |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        a, b = by.get((label, 4)), by.get((label, 32))
        cells = [label]
        for r in (a, b):
            cells += [f"{r.rps:,.0f}", f"{r.p50_ms:.2f} / {r.p99_ms:.2f} ms"] if r else ["-", "-"]
        errors = sum(r.errors for r in (a, b) if r)
        cpu = "/".join(f"{r.cpu_pct:.0f}" for r in (a, b) if r)
        # The server's CPU per request (us): steadier than requests per second on a busy box.
        per = " / ".join(f"{r.cpu_pct * 1e4 / r.rps:.0f}" for r in (a, b) if r and r.rps)
        out.append("| " + " | ".join([*cells, str(errors), cpu, f"{per} us"]) + " |")
    if streams:
        out += [
            "",
            f"| stream ({STREAM_TOKENS:,} tokens, c=32) | tokens/s | first token p50 / p99 "
            "| streams | failed | CPU % |",
            "|---|---|---|---|---|---|",
        ]
        for s in streams:
            out.append(
                f"| {s['label']} | {s['tokens_per_s']:,} | {s['first_token_p50_ms']} / "
                f"{s['first_token_p99_ms']} ms | {s['streams']} | {s['failed']} | {s['cpu_pct']} |"
            )
    return "\n".join(out)


async def replica_of(stack: Stack) -> tuple[str, str]:
    """(url, key) of the deployment's one ready replica, once there is one."""
    assert stack.settings.redis_url
    store = Store.from_url(stack.settings.redis_url)
    try:
        while True:
            replicas = await store.replicas(f"{stack.settings.default_tenant}/{NAME}")
            ready = [r for r in replicas if r.state == "ready"]
            if ready:
                return ready[0].url, ready[0].key
            await asyncio.sleep(0.2)
    finally:
        await store.close()


def create_deployment(stack: Stack) -> None:
    import urllib.request

    s = stack.settings
    body = {
        "name": NAME,
        "config": {"baseModel": MODEL, "customArgs": ENGINE, "minReplicas": 1, "maxReplicas": 1},
    }
    req = urllib.request.Request(
        f"http://{s.host}:{s.port}/v2/deployments",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {stack.token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    settings = Settings(
        state_dir=tmp / "state", port=free_port(), scaler_port=free_port(), backend="sim",
        sim_pool="a10_24gb=8", gateway_workers=1, log_level="WARNING", private_port=None,
    )  # fmt: skip
    stack = Stack(settings, quiet=True)
    rows: list[Row] = []
    streams: list[dict[str, Any]] = []
    try:
        stack.start()
        create_deployment(stack)
        url, key = asyncio.run(replica_of(stack))
        s = stack.settings
        gw_pid = next(c.proc.pid for c in stack.services if c.name == "gateway" and c.proc)
        gw_url = f"http://{s.host}:{s.port}/{s.default_tenant}/deployments/v2/llms/{NAME}"
        sim_pid = json.loads((s.state_dir / "sim-host.json").read_text())["pid"]
        direct = Target("direct to the replica", url + "/v1/completions", f"Bearer {key}",
                        MODEL, [sim_pid])  # fmt: skip
        gw = Target("wakegate gateway, 1 worker", gw_url + "/v1/completions",
                    f"Bearer {stack.token}", NAME, [gw_pid])  # fmt: skip
        print(f"warming up ({args.duration} s per row)", file=sys.stderr)
        wrk(direct, 4, 1)
        wrk(gw, 4, 1)
        for c in (4, 32):
            rows.append(wrk(direct, c, args.duration))
        if shutil.which("nginx") and not args.skip_nginx:
            with nginx(tmp, url, key) as (port, proc):
                proxied = f"http://127.0.0.1:{port}/v1/completions"
                t = Target("nginx proxy (keepalive upstream)", proxied, "", MODEL, [proc.pid])
                for c in (4, 32):
                    rows.append(wrk(t, c, args.duration))
        with bare_proxy(url, key) as (port, proc):
            bare = Target(BARE, f"http://127.0.0.1:{port}/v1/completions", "", MODEL, [proc.pid])
            wrk(bare, 4, 1)
            for c in (4, 32):
                rows.append(wrk(bare, c, args.duration))
            if not args.skip_stream:
                bare_stream = asyncio.run(stream_row(bare, 32, args.duration))
        if args.litellm:
            with litellm(tmp, args.litellm, url, key) as (port, proc, master):
                t = Target("LiteLLM proxy", f"http://127.0.0.1:{port}/v1/completions",
                           f"Bearer {master}", MODEL, [proc.pid])  # fmt: skip
                wrk(t, 4, 1)
                for c in (4, 32):
                    rows.append(wrk(t, c, args.duration))
        for c in (4, 32):
            rows.append(wrk(gw, c, args.duration))
        if args.workers > 1:
            with gateway_workers(stack, args.workers) as (port, proc):
                base = f"http://{s.host}:{port}/{s.default_tenant}/deployments/v2/llms/{NAME}"
                t = Target(f"wakegate gateway, {args.workers} workers", base + "/v1/completions",
                           f"Bearer {stack.token}", NAME, [proc.pid])  # fmt: skip
                wrk(t, 4, 1)
                for c in (4, 32):
                    rows.append(wrk(t, c, args.duration))
        if not args.skip_stream:
            streams.append(asyncio.run(stream_row(direct, 32, args.duration)))
            streams.append(bare_stream)
            streams.append(asyncio.run(stream_row(gw, 32, args.duration)))
    finally:
        stack.shutdown()
    return {
        "duration_s": args.duration,
        "workers": args.workers,
        "cores": os.cpu_count(),
        "rows": [r.__dict__ for r in rows],
        "streams": streams,
        "table": table(rows, streams, args.workers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per row (default 8)")
    parser.add_argument("--quick", action="store_true", help="2 s per row: a smoke run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="the N-worker row (default: the cores)")  # fmt: skip
    parser.add_argument("--litellm", help="the litellm binary (none: no LiteLLM row)")
    parser.add_argument("--skip-nginx", action="store_true")
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gateway")
    args = parser.parse_args()
    if args.quick:
        args.duration = 2
    with tempfile.TemporaryDirectory(prefix="wakegate-gw-") as tmp:
        result = run(args, Path(tmp))
    print(result["table"])
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stamp}.md").write_text(result["table"] + "\n")


if __name__ == "__main__":
    main()
