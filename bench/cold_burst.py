"""A burst of concurrent streams on a deployment at zero, held by one gateway process.

    .venv/bin/python bench/cold_burst.py --streams 2000 8000 10000 [--workers 1]

For each burst size, a fresh embedded stack (Redis, broker, scaler, one gateway process) on
the `sim` backend and one scale-to-zero deployment: 5 s model load, up to 4 replicas of 64
sequences each, 20-token streams (50 ms to the first token, 40 tokens/s). All streams are
sent at once; the benchmark reports

- succeeded, and failed by reason (HTTP status, in-stream error, client timeout, ...);
- first-token latency p50/p99 (from sending) against the ideal: the load time plus the
  queue's service time at full capacity, i.e. the request at quantile q starts after
  floor(q * N / (replicas * batch)) full rounds of one stream's duration, then its TTFT;
- the gateway's peak memory (RSS of its processes, sampled every 0.2 s);
- the wake reaction, from the waking request being queued to its wake event published, as
  the gateway measures it (`wakegate_wake_reaction_seconds`), and the number of wake events
  that arrive from the broker (one per burst).

The client and the gateway get a file-descriptor limit high enough for the burst
(the gateway inherits the raised limit). Prints one JSON object per burst and a table;
`--out` (default bench/results/cold-burst/) keeps both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import aiomqtt
import psutil

from wakegate import topics
from wakegate.engines.sim_timing import SimTiming
from wakegate.procs import free_port
from wakegate.sealing import read_secret
from wakegate.settings import Settings
from wakegate.tools.up import Stack

HERE = Path(__file__).resolve().parent
HAS_WORKERS = "gateway_workers" in {f.name for f in fields(Settings)}
HAS_PRIVATE = "private_port" in {f.name for f in fields(Settings)}
NAME = "burst"
LOAD_S, TTFT_S, TPS, BATCH, REPLICAS, TOKENS = 5.0, 0.05, 40.0, 64, 4, 20
ENGINE = SimTiming(load_s=LOAD_S, ttft_s=TTFT_S, tps=TPS, batch=BATCH).args()


def raise_fd_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else wanted
    target = max(soft, min(wanted, target))
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def ideal_first_token_s(q: float, n: int) -> float:
    capacity = REPLICAS * BATCH
    stream_s = TTFT_S + (TOKENS - 1) / TPS
    return LOAD_S + int(q * n / capacity) * stream_s + TTFT_S


def metric(text: str, name: str, deployment: str) -> float:
    """A Prometheus sample of `deployment` from an exposition text (0 when absent)."""
    prefix = f'{name}{{deployment="{deployment}"}} '
    return next((float(x[len(prefix) :]) for x in text.splitlines() if x.startswith(prefix)), 0.0)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Outcome:
    def __init__(self) -> None:
        self.first_token_s: float | None = None
        self.failure: str | None = None


async def one_stream(
    client: aiohttp.ClientSession, url: str, headers: dict[str, str], timeout_s: float
) -> Outcome:
    out = Outcome()
    body = {"inputs": "hello", "parameters": {"max_new_tokens": TOKENS}}
    sent = time.monotonic()
    tokens = 0
    try:
        async with asyncio.timeout(timeout_s):
            async with client.post(url + "/generate_stream", json=body, headers=headers) as r:
                if r.status != 200:
                    out.failure = f"HTTP {r.status}"
                    await r.read()
                    return out
                async for raw in r.content:
                    line = raw.decode().rstrip("\r\n")
                    if line.startswith("data:"):
                        event = json.loads(line[5:])
                        if "error" in event:
                            out.failure = f"in-stream {event.get('error_type')}: {event['error']}"
                            return out
                        if tokens == 0:
                            out.first_token_s = time.monotonic() - sent
                        tokens += 1
    except TimeoutError:
        out.failure = f"client timeout ({timeout_s:.0f} s)"
    except aiohttp.ClientError as exc:
        out.failure = f"client error: {type(exc).__name__}"
    if out.failure is None and tokens < TOKENS:
        out.failure = f"short stream ({tokens} of {TOKENS} tokens)"
    return out


async def watch_wakes(mqtt_url: str, key: str, seen: list[float], ready: threading.Event) -> None:
    """The wall-clock arrival of each wake event of `key` from the broker."""
    u = urlparse(mqtt_url)
    async with aiomqtt.Client(
        u.hostname or "127.0.0.1", u.port or 1883, username=u.username, password=u.password
    ) as mq:
        await mq.subscribe(topics.topic(key, "wake"), qos=1)
        ready.set()
        async for _ in mq.messages:
            seen.append(time.time())


async def sample_rss(pid: int, peak: list[float], stop: asyncio.Event) -> None:
    proc = psutil.Process(pid)
    while not stop.is_set():
        try:
            rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
            peak[0] = max(peak[0], rss / 2**20)
        except psutil.NoSuchProcess:
            pass
        await asyncio.sleep(0.2)


async def burst(
    stack: Stack, n: int, timeout_s: float, profile: tuple[str, str] | None
) -> dict[str, Any]:
    s = stack.settings
    assert s.mqtt_url
    base = f"http://{s.host}:{s.port}"
    headers = {"Authorization": f"Bearer {stack.token}"}
    key = f"{s.default_tenant}/{NAME}"
    gateway_pid = next(c.proc.pid for c in stack.services if c.name == "gateway" and c.proc)
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=60)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as client:
        body = {
            "name": NAME,
            "config": {
                "baseModel": "sim-llm", "customArgs": ENGINE, "minReplicas": 0,
                "maxReplicas": REPLICAS, "scaleUpRequestThreshold": BATCH, "cooldownTime": 600,
            },
        }  # fmt: skip
        async with client.post(f"{base}/v2/deployments", json=body, headers=headers) as r:
            if r.status != 200:
                raise RuntimeError(f"create: {r.status} {await r.text()}")
        # The wake watcher runs on a loop of its own: the burst keeps this one busy.
        wakes: list[float] = []
        subscribed, stop = threading.Event(), asyncio.Event()

        def watch() -> None:
            with contextlib.suppress(Exception):  # the broker stops with the stack
                asyncio.run(watch_wakes(s.mqtt_url, key, wakes, subscribed))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        if not await asyncio.to_thread(subscribed.wait, 30):
            raise RuntimeError("could not subscribe to wake events")
        peak = [0.0]
        sampler = asyncio.create_task(sample_rss(gateway_pid, peak, stop))
        spy = None
        if profile is not None:
            spy = await asyncio.create_subprocess_exec(
                profile[0], "record", "--pid", str(gateway_pid), "--subprocesses", "--rate", "50",
                "--format", "speedscope", "--output", profile[1], "--nonblocking",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        url = f"{base}/{s.default_tenant}/deployments/v2/llms/{NAME}"
        t0 = time.monotonic()
        outcomes = await asyncio.gather(
            *(one_stream(client, url, headers, timeout_s) for _ in range(n))
        )
        wall = time.monotonic() - t0
        stop.set()
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            await asyncio.wait_for(spy.wait(), 60)
        await sampler
        await asyncio.sleep(1)  # a late wake event would show here
        auth = {"Authorization": f"Bearer {read_secret(s.metrics_token_file)}"}
        async with client.get(f"{base}/metrics", headers=auth) as r:
            text = await r.text()
        reaction_s = metric(text, "wakegate_wake_reaction_seconds_sum", key)
        reactions = metric(text, "wakegate_wake_reaction_seconds_count", key)
    firsts = [o.first_token_s for o in outcomes if o.failure is None and o.first_token_s]
    failures = Counter(o.failure for o in outcomes if o.failure is not None)
    p50, p99 = pct(firsts, 0.5), pct(firsts, 0.99)
    ideal50, ideal99 = ideal_first_token_s(0.5, n), ideal_first_token_s(0.99, n)
    return {
        "streams": n,
        "succeeded": n - sum(failures.values()),
        "failed": dict(failures),
        "wall_s": round(wall, 1),
        "first_token_s": {
            "p50": round(p50, 2) if p50 else None,
            "p99": round(p99, 2) if p99 else None,
            "mean": round(statistics.fmean(firsts), 2) if firsts else None,
        },
        "ideal_first_token_s": {"p50": round(ideal50, 2), "p99": round(ideal99, 2)},
        "p99_over_ideal": round(p99 / ideal99, 2) if p99 else None,
        "gateway_peak_rss_mib": round(peak[0]),
        "wake_events": len(wakes),
        "wake_reaction_ms": round(1000 * reaction_s / reactions, 1) if reactions else None,
    }


def run_one(n: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wakegate-burst-") as tmp:
        settings = Settings(
            state_dir=Path(tmp), port=free_port(), scaler_port=free_port(), backend="sim",
            sim_pool=f"a10_24gb={REPLICAS * 2}", queue_timeout_s=args.timeout_s,
            max_queue_length=max(Settings.max_queue_length, 2 * n), log_level="WARNING",
            # Versions before gateway workers existed ran one process: the same script
            # measures them too.
            **({"gateway_workers": args.workers} if HAS_WORKERS else {}),
            # No private listener (direct ingress), in versions that have one.
            **({"private_port": None} if HAS_PRIVATE else {}),
        )  # fmt: skip
        stack = Stack(settings, quiet=True)
        try:
            stack.start()
            profile = None
            if args.py_spy:
                args.out.mkdir(parents=True, exist_ok=True)
                profile = (args.py_spy, str(args.out / f"profile-{n}.speedscope.json"))
            result = asyncio.run(burst(stack, n, args.timeout_s, profile))
        finally:
            stack.shutdown()
    result["gateway_workers"] = args.workers
    return result


def table(results: list[dict[str, Any]]) -> str:
    out = [
        "| streams | succeeded | failed | first token p50 / p99 | ideal p50 / p99 | p99 / ideal "
        "| gateway peak RSS | wake events | wake reaction |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ft, ideal = r["first_token_s"], r["ideal_first_token_s"]
        failed = "; ".join(f"{v} {k}" for k, v in r["failed"].items()) or "0"
        out.append(
            f"| {r['streams']:,} | {r['succeeded']:,} | {failed} | {ft['p50']} / {ft['p99']} s "
            f"| {ideal['p50']} / {ideal['p99']} s | {r['p99_over_ideal']} "
            f"| {r['gateway_peak_rss_mib']} MiB | {r['wake_events']} "
            f"| {r['wake_reaction_ms']} ms |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[2000, 8000, 10000])
    parser.add_argument("--workers", type=int, default=1, help="gateway processes (default 1)")
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=120.0,
        help="client timeout per stream, and the gateway's queue timeout",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cold-burst")
    parser.add_argument("--py-spy", help="the py-spy binary: profile the gateway during bursts")
    args = parser.parse_args()
    limit = raise_fd_limit(2 * max(args.streams) + 4096)
    if limit < max(args.streams) + 1024:
        print(f"warning: only {limit} file descriptors (raise the hard limit)", file=sys.stderr)
    results = []
    for n in args.streams:
        result = run_one(n, args)
        print(json.dumps(result), flush=True)
        results.append(result)
    print(table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{stamp}.md").write_text(table(results) + "\n")


if __name__ == "__main__":
    main()
