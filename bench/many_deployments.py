"""One scaler, N deployments at zero: idle CPU, wake reaction, cold requests, Redis memory.

    .venv/bin/python bench/many_deployments.py --deployments 10000 [--samples 40]

A fresh embedded stack (Redis, broker, scaler and gateway with their default intervals) on
the `sim` backend. N scale-to-zero deployments of a 0.5 s simulated engine are created through
the API; once the scaler has seen them all, the benchmark measures

- the Redis memory the deployments take (used_memory before and after, per deployment),
- the scaler's CPU over a quiet minute (utime + stime of its process, % of one core),
- for `samples` cold requests, one at a time, each to a different deployment at zero:
  the wake reaction, from the request being queued (the gateway's queue comment on the stream
  tells how long it waited; the comment's arrival less that wait is the enqueue time) to the
  sim backend's start call (the sim host stamps `requested_at` when the start arrives), and
  the whole cold request as the client sees it (sent to last byte, 4 tokens).

Prints one JSON object; `--out` also writes it to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from scaler.backends.sim import SimBackend
from wakegate.engines.sim_timing import SimTiming
from wakegate.procs import free_port
from wakegate.sealing import read_secret
from wakegate.settings import Settings
from wakegate.store import Store
from wakegate.tools.up import Stack

ENGINE = SimTiming(load_s=0.5, ttft_s=0.02, tps=400.0, batch=4).args()
QUEUE_COMMENT = ": wakegate "


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def create_all(
    client: aiohttp.ClientSession, base: str, headers: dict[str, str], n: int
) -> None:
    names = iter(range(n))

    async def worker() -> None:
        for i in names:
            body = {
                "name": f"d{i:05d}",
                "config": {
                    "baseModel": "sim-llm",
                    "accelerator": "a10_24gb_100",
                    "customArgs": ENGINE,
                    "minReplicas": 0,
                    "maxReplicas": 1,
                    # Back to zero soon after a sample, so that one deployment can give
                    # several cold samples.
                    "cooldownTime": 2,
                },
            }
            async with client.post(f"{base}/v2/deployments", json=body, headers=headers) as r:
                if r.status != 200:
                    raise RuntimeError(f"create d{i:05d}: {r.status} {await r.text()}")

    await asyncio.gather(*(worker() for _ in range(16)))


async def cold_request(
    client: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[float, float]:
    """(enqueue time as wall clock, seconds from send to the last byte)."""
    body = {"inputs": "hello", "parameters": {"max_new_tokens": 4}, "stream": True}
    sent = time.monotonic()
    enqueued: float | None = None
    async with client.post(url + "/generate_stream", json=body, headers=headers) as r:
        if r.status != 200:
            raise RuntimeError(f"cold request: {r.status} {await r.text()}")
        async for raw in r.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith(QUEUE_COMMENT):
                fields = dict(kv.split("=", 1) for kv in line[len(QUEUE_COMMENT) :].split())
                enqueued = time.time() - int(fields["queue_wait_ms"]) / 1000
    if enqueued is None:
        raise RuntimeError("no queue comment on the stream")
    return enqueued, time.monotonic() - sent


async def requested_at(client: aiohttp.ClientSession, host: str, key: str) -> float:
    async with client.get(f"{host}/replicas") as r:
        rows = await r.json()
    (row,) = [x for x in rows if x["deployment"] == key]
    return float(row["requested_at"])


async def sim_running(client: aiohttp.ClientSession, host: str, key: str) -> bool:
    async with client.get(f"{host}/replicas") as r:
        return any(x["deployment"] == key for x in await r.json())


async def scaler_status(
    client: aiohttp.ClientSession, port: int, auth: dict[str, str]
) -> tuple[bool, float]:
    """(leading, passes so far) from the scaler's own endpoints."""
    async with client.get(f"http://127.0.0.1:{port}/healthz") as r:
        leading = bool((await r.json())["leader"])
    async with client.get(f"http://127.0.0.1:{port}/metrics", headers=auth) as r:
        text = await r.text()
    return leading, metric(text, "wakegate_scaler_passes_total")


def metric(text: str, name: str) -> float:
    return next((float(x.split()[1]) for x in text.splitlines() if x.startswith(name + " ")), 0.0)


async def measure(stack: Stack, n: int, samples: int, idle_s: float) -> dict[str, Any]:
    s = stack.settings
    assert s.redis_url
    base = f"http://{s.host}:{s.port}"
    headers = {"Authorization": f"Bearer {stack.token}"}
    # /metrics is for operators: the metrics token `up` made.
    auth = {"Authorization": f"Bearer {read_secret(s.metrics_token_file)}"}
    scaler_pid = next(c.proc.pid for c in stack.services if c.name == "scaler" and c.proc)
    store = Store.from_url(s.redis_url)
    out: dict[str, Any] = {"deployments": n}
    # The sim host starts with the first replica; started here, no sample pays for it.
    sim = SimBackend(s)
    host = await sim.host_url(start=True)
    assert host is not None
    await sim.close()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as client:
        mem0 = int((await store.redis.info("memory"))["used_memory"])
        t0 = time.monotonic()
        await create_all(client, base, headers, n)
        out["create_s"] = round(time.monotonic() - t0, 1)
        mem1 = int((await store.redis.info("memory"))["used_memory"])
        out["redis_bytes_per_deployment"] = round((mem1 - mem0) / max(n, 1))
        # Settled: the scaler has passed every new deployment and a full sweep has run.
        await asyncio.sleep(s.full_sweep_interval_s + 2 * s.reconcile_interval_s)
        while await store.redis.scard("wg:dirty"):
            await asyncio.sleep(1)
        _, passes0 = await scaler_status(client, s.scaler_port, auth)
        cpu0, wall0 = cpu_seconds(scaler_pid), time.monotonic()
        await asyncio.sleep(idle_s)
        cpu1, wall1 = cpu_seconds(scaler_pid), time.monotonic()
        _, passes1 = await scaler_status(client, s.scaler_port, auth)
        out["idle_cpu_pct"] = round(100 * (cpu1 - cpu0) / (wall1 - wall0), 2)
        out["idle_passes_per_min"] = round((passes1 - passes0) * 60 / (wall1 - wall0), 1)
        async with client.get(f"http://127.0.0.1:{s.scaler_port}/metrics", headers=auth) as r:
            out["sweep_s"] = round(metric(await r.text(), "wakegate_scaler_sweep_seconds"), 3)
        reactions, colds = [], []
        names = [f"d{i:05d}" for i in range(n)]
        random.Random(1).shuffle(names)
        for i in range(samples):
            name = names[i % n]
            key = f"{s.default_tenant}/{name}"
            while await store.replicas(key) or await sim_running(client, host, key):
                await asyncio.sleep(0.2)  # at zero again, and the sim host agrees
            url = f"{base}/{s.default_tenant}/deployments/v2/llms/{name}"
            enqueued, total = await cold_request(client, url, headers)
            started = await requested_at(client, host, key)
            reactions.append((started - enqueued) * 1000)
            colds.append(total)
            await asyncio.sleep(0.5)
    await store.close()
    out["wake_reaction_ms"] = {
        "p50": round(statistics.median(reactions), 1),
        "p99": round(pct(reactions, 0.99), 1),
        "max": round(max(reactions), 1),
    }
    out["cold_request_s"] = {
        "p50": round(statistics.median(colds), 3),
        "p99": round(pct(colds, 0.99), 3),
        "max": round(max(colds), 3),
    }
    out["samples"] = len(colds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deployments", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument(
        "--full-sweep-s",
        type=float,
        default=Settings.full_sweep_interval_s,
        help="the scaler's full sweep interval; a small one keeps a sweep running during the "
        "samples (the worst case for the wake path)",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--state-dir", type=Path, help="keep state and logs here (default: a "
                        "temporary directory, removed afterwards)")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wakegate-many-") as tmp:
        settings = Settings(
            state_dir=args.state_dir or Path(tmp),
            port=free_port(),
            scaler_port=free_port(),
            private_port=None,
            backend="sim",
            sim_pool="a10_24gb=1000",
            quota_max_deployments_per_tenant=None,
            quota_max_gpus_per_tenant=None,
            quota_max_replicas_per_tenant=None,
            full_sweep_interval_s=args.full_sweep_s,
            log_level="WARNING",
        )
        stack = Stack(settings, quiet=True)
        try:
            stack.start()
            result = asyncio.run(measure(stack, args.deployments, args.samples, args.idle_s))
        finally:
            stack.shutdown()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
