"""Faults under load: what each one costs, and what it leaves behind.

    .venv/bin/python bench/faults.py [--rate 12] [--phase-s 30] [--out bench/results/faults]

A fresh stack of real processes on the `sim` backend: redis-server (AOF, appendfsync
everysec), mosquitto, two scalers (one leads), two gateways, and one deployment of a
simulated engine (`minReplicas` 1, `maxReplicas` 3, 3 s load). A steady load of streaming,
unary and async requests goes to the live gateways in turn while, one after another with
`--phase-s` between them, the benchmark

1. kills -9 one gateway (a supervisor restarts it 2 s later; meanwhile the load skips it,
   as a load balancer's health check would),
2. kills -9 the scaler that leads (restarted 2 s later; it comes back as a follower),
3. kills a replica in the middle of its streams (the sim host resets its connections at
   once and drops it, as when an engine is killed; the scaler is not told),
4. kills -9 Redis and restarts it at once on the same AOF,
5. stops the MQTT broker for 10 s.

Per fault (the requests that ended from the fault until the next one, so that a request cut
by a fault counts for it): ended, succeeded, failed and why, and the seconds until requests
succeed again (from the fault to the end of the last failed request, 0 when none failed).
Once the load stops: every async job is polled until it ends (lost
= accepted with 202 and never done nor failed), and once the leases have run out the queue
entries, slots and job claims still in Redis are counted; the sim host is sampled throughout
for more replicas than `maxReplicas` and, at the end, for replicas no Redis record knows.

Prints a Markdown table; `--out DIR` writes `faults.md` and `faults.json` there.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from scaler.sim.host import STATE_FILE
from wakegate.engines.sim_timing import SimTiming
from wakegate.procs import free_port
from wakegate.store import Store, dep_key
from wakegate.tools.embedded import port_open, redis_server_binary

TENANT = "faults"
TOKEN = "pb_bench_faults"
NAME = "faulty"
KEY = f"{TENANT}/{NAME}"
MAX_REPLICAS = 3
ENGINE = SimTiming(load_s=3.0, ttft_s=0.05, tps=40.0, batch=16).args()
PROMPT = "Tell me about faults. " * 8


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    p: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with open(self.log, "ab") as fh:
            self.p = subprocess.Popen(
                self.argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
            )
        return self

    def signal(self, sig: int) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.p.wait(15)
            if self.p.poll() is None:
                self.p.kill()
                self.p.wait()


async def until(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            value = await check()
            if value:
                return value
        await asyncio.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout_s}s waiting for {what}")


class FaultStack:
    """The processes, on free ports, with state under one temporary directory."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.state.mkdir()
        self.redis_port, self.mqtt_port = free_port(), free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        (tmp / "redis").mkdir()
        self.redis = Proc(
            "redis",
            [
                redis_server_binary(),
                "--port", str(self.redis_port), "--bind", "127.0.0.1",
                "--dir", str(tmp / "redis"), "--appendonly", "yes",
                "--appendfsync", "everysec", "--save", "",
            ],
            tmp / "redis.log",
        )  # fmt: skip
        mosquitto = shutil.which(
            "mosquitto", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"])
        )
        if mosquitto is None:
            raise SystemExit("mosquitto is required (apt-get install mosquitto)")
        conf = tmp / "mosquitto.conf"
        conf.write_text(
            f"listener {self.mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self.broker = Proc("mosquitto", [mosquitto, "-c", str(conf)], tmp / "mosquitto.log")
        self.env = {
            "REDIS_URL": self.redis_url,
            "MQTT_URL": f"mqtt://127.0.0.1:{self.mqtt_port}",
            "WAKEGATE_BACKEND": "sim",
            "WAKEGATE_SIM_POOL": "a10_24gb=8",
            "WAKEGATE_STATE_DIR": str(self.state),
            "WAKEGATE_PRIVATE_PORT": "none",  # two gateways here; no direct ingress
            "PYTHONUNBUFFERED": "1",
        }
        self.gateway_ports = [free_port(), free_port()]
        self.scaler_ports = [free_port(), free_port()]
        self.gateways = [
            Proc(f"gateway{i}", [sys.executable, "-m", "router"], tmp / f"gateway{i}.log",
                 {**self.env, "WAKEGATE_PORT": str(port)})
            for i, port in enumerate(self.gateway_ports)
        ]  # fmt: skip
        self.scalers = [
            Proc(f"scaler{i}", [sys.executable, "-m", "scaler"], tmp / f"scaler{i}.log",
                 {**self.env, "WAKEGATE_SCALER_PORT": str(port)})
            for i, port in enumerate(self.scaler_ports)
        ]  # fmt: skip
        self.up = [True, True]  # gateways the load may use

    def gateway_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.gateway_ports[i]}"

    async def start(self, http: aiohttp.ClientSession) -> None:
        await self.start_redis()
        await self.start_broker()
        store = Store.from_url(self.redis_url)
        await store.ensure_tenant(TENANT, "Fault bench")
        await store.add_token(TOKEN, TENANT)
        await store.close()
        for i in range(2):
            await self.start_scaler(http, i)
        for i in range(2):
            await self.start_gateway(http, i)

    async def start_redis(self) -> None:
        self.redis.start()
        await until(lambda: asyncio.to_thread(port_open, "127.0.0.1", self.redis_port), 20, "redis")

    async def start_broker(self) -> None:
        self.broker.start()
        await until(lambda: asyncio.to_thread(port_open, "127.0.0.1", self.mqtt_port), 20, "mqtt")

    async def start_gateway(self, http: aiohttp.ClientSession, i: int) -> None:
        self.gateways[i].start()
        await until(lambda: ok(http, self.gateway_url(i) + "/healthz"), 60, f"gateway{i}")
        self.up[i] = True

    async def start_scaler(self, http: aiohttp.ClientSession, i: int) -> None:
        self.scalers[i].start()
        url = f"http://127.0.0.1:{self.scaler_ports[i]}/healthz"
        await until(lambda: ok(http, url), 60, f"scaler{i}")

    async def leader(self, http: aiohttp.ClientSession) -> int:
        async def find() -> int | None:
            for i, port in enumerate(self.scaler_ports):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                        if (await r.json()).get("leader"):
                            return i + 1
            return None

        return int(await until(find, 30, "a leading scaler")) - 1

    def sim_host(self) -> str:
        return str(json.loads((self.state / STATE_FILE).read_text())["url"])

    def stop(self) -> None:
        for proc in [*self.gateways, *self.scalers]:
            proc.signal(signal.SIGTERM)
        with contextlib.suppress(Exception):
            host = self.sim_host()
            subprocess.run(
                ["curl", "-s", "-X", "POST", f"{host}/shutdown"], timeout=10, check=False
            )
        self.broker.signal(signal.SIGTERM)
        self.redis.signal(signal.SIGTERM)


async def ok(http: aiohttp.ClientSession, url: str) -> bool:
    async with http.get(url) as r:
        return r.status == 200


@dataclass
class Sent:
    kind: str
    gateway: int
    phase: str
    at: float
    ok: bool = False
    why: str = ""
    job: str | None = None
    ended: float = 0.0
    end_phase: str = ""


HEADERS = {"Authorization": f"Bearer {TOKEN}"}


async def one(http: aiohttp.ClientSession, stack: FaultStack, r: Sent) -> None:
    base = f"{stack.gateway_url(r.gateway)}/{TENANT}/deployments/v2/llms/{NAME}"
    try:
        if r.kind == "stream":
            body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 120}}  # 3 s
            async with http.post(base + "/generate_stream", json=body, headers=HEADERS) as resp:
                if resp.status != 200:
                    r.why = f"HTTP {resp.status} {(await resp.text())[:60]}"
                    return
                last = None
                async for line in resp.content:
                    if line.startswith(b"data:"):
                        last = json.loads(line[5:])
                r.ok = bool(last and last.get("generated_text") is not None)
                r.why = "" if r.ok else "stream ended without its last event"
                if last and "error" in last:
                    r.why = f"stream error: {str(last['error'])[:36]}"
        elif r.kind == "unary":
            body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 8}}
            async with http.post(base + "/generate", json=body, headers=HEADERS) as resp:
                data = await resp.json(content_type=None)
                r.ok = resp.status == 200 and "generated_text" in data
                r.why = "" if r.ok else f"HTTP {resp.status} {str(data)[:60]}"
        else:
            body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 8}}
            async with http.post(base + "/async", json=body, headers=HEADERS) as resp:
                data = await resp.json(content_type=None)
                r.ok = resp.status == 202
                r.job = data.get("id") if r.ok else None
                r.why = "" if r.ok else f"HTTP {resp.status} {str(data)[:60]}"
    except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError) as exc:
        r.why = type(exc).__name__


async def job_outcome(http: aiohttp.ClientSession, stack: FaultStack, job: str) -> str:
    """done / failed / lost (queued or running at the deadline, or gone)."""
    deadline = time.monotonic() + 180
    status = "lost"
    while time.monotonic() < deadline:
        url = f"{stack.gateway_url(1)}/{TENANT}/deployments/v2/llms/{NAME}/async/{job}"
        with contextlib.suppress(aiohttp.ClientError, ValueError):
            async with http.get(url, headers=HEADERS) as resp:
                if resp.status == 404:
                    return "lost"
                status = (await resp.json()).get("status", "lost")
                if status in ("done", "failed", "rejected"):
                    return str(status)
        await asyncio.sleep(1)
    return "lost"


class Load:
    def __init__(self, http: aiohttp.ClientSession, stack: FaultStack, rate: float) -> None:
        self.http, self.stack, self.rate = http, stack, rate
        self.phase = "baseline"
        self.sent: list[Sent] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.running = True

    async def run(self) -> None:
        kinds = ["stream", "unary", "async"]
        n = 0
        t0 = time.monotonic()
        while self.running:
            live = [i for i, up in enumerate(self.stack.up) if up]
            r = Sent(kinds[n % 3], live[n % len(live)], self.phase, time.monotonic())
            self.sent.append(r)
            task = asyncio.create_task(self.track(r))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            n += 1
            await asyncio.sleep(max(0.0, t0 + n / self.rate - time.monotonic()))

    async def track(self, r: Sent) -> None:
        await one(self.http, self.stack, r)
        r.ended, r.end_phase = time.monotonic(), self.phase

    async def drain(self) -> None:
        self.running = False
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


async def sample_replicas(http: aiohttp.ClientSession, stack: FaultStack, seen: list[int]) -> None:
    while True:
        with contextlib.suppress(Exception):
            async with http.get(stack.sim_host() + "/replicas") as resp:
                replicas = await resp.json()
            seen.append(sum(1 for r in replicas if r["deployment"] == KEY))
        await asyncio.sleep(0.5)


async def kill_replica_mid_stream(http: aiohttp.ClientSession, stack: FaultStack) -> str:
    host = stack.sim_host()

    async def busy() -> str | None:
        """The replica with the most requests in flight (streams last longest)."""
        async with http.get(host + "/replicas") as resp:
            replicas = [r for r in await resp.json() if r["deployment"] == KEY]
        active = {}
        for rep in replicas:
            async with http.get(rep["url"] + "/stats") as resp:
                active[str(rep["replica_id"])] = int((await resp.json()).get("active", 0))
        most = max(active, key=lambda rid: active[rid], default=None)
        return most if most is not None and active[most] > 1 else None

    rid = str(await until(busy, 30, "a replica with requests in flight"))
    async with http.delete(f"{host}/replicas/{rid}", params={"crash": "1"}) as resp:
        resp.raise_for_status()
    return rid


async def leftovers(stack: FaultStack) -> dict[str, int]:
    store = Store.from_url(stack.redis_url)
    r = store.redis
    try:
        counts = {
            "queue entries": int(await r.zcard(dep_key(KEY, "queue"))),
            "queue leases": int(await r.zcard(dep_key(KEY, "qlease"))),
            "slots held": int(await r.zcard(dep_key(KEY, "inflight"))),
            "assignments": int(await r.hlen(dep_key(KEY, "assigned"))),
            "jobs running": int(await r.zcard(dep_key(KEY, "running"))),
        }
        claims = [k async for k in r.scan_iter(match=dep_key(KEY, "claim:*"))]
        counts["job claims"] = len(claims)
        records = {rec.id for rec in await store.replicas(KEY)}
    finally:
        await store.close()
    async with aiohttp.ClientSession() as http, http.get(stack.sim_host() + "/replicas") as resp:
        hosted = {x["replica_id"] for x in await resp.json() if x["deployment"] == KEY}
    counts["replicas no record knows"] = len(hosted - records)
    return counts


FAULTS = [
    "gateway kill -9",
    "scaler leader kill -9",
    "replica killed mid-stream",
    "Redis kill -9 + restart (AOF)",
    "broker stopped 10 s",
]


async def inject(name: str, http: aiohttp.ClientSession, stack: FaultStack) -> str:
    if name == "gateway kill -9":
        stack.up[0] = False
        stack.gateways[0].signal(signal.SIGKILL)
        await asyncio.sleep(2)
        await stack.start_gateway(http, 0)
        return "gateway0 killed, restarted after 2 s"
    if name == "scaler leader kill -9":
        i = await stack.leader(http)
        stack.scalers[i].signal(signal.SIGKILL)
        await asyncio.sleep(2)
        await stack.start_scaler(http, i)
        return f"scaler{i} (leader) killed, restarted after 2 s"
    if name == "replica killed mid-stream":
        return f"replica {await kill_replica_mid_stream(http, stack)} killed"
    if name == "Redis kill -9 + restart (AOF)":
        stack.redis.signal(signal.SIGKILL)
        await stack.start_redis()
        return "redis-server killed and restarted on its AOF"
    stack.broker.signal(signal.SIGTERM)
    await asyncio.sleep(10)
    await stack.start_broker()
    return "mosquitto stopped, restarted after 10 s"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="wakegate-faults-"))
    stack = FaultStack(tmp)
    timeout = aiohttp.ClientTimeout(total=150)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        try:
            await stack.start(http)
            body = {
                "name": NAME,
                "config": {
                    "baseModel": "sim-llm", "accelerator": "a10_24gb_100",
                    "customArgs": ENGINE, "minReplicas": 1, "maxReplicas": MAX_REPLICAS,
                    "scaleUpRequestThreshold": 8, "cooldownTime": 60,
                },
            }  # fmt: skip
            async with http.post(
                stack.gateway_url(0) + "/v2/deployments", json=body, headers=HEADERS
            ) as resp:
                if resp.status != 200:
                    raise SystemExit(f"create: {resp.status} {await resp.text()}")
            store = Store.from_url(stack.redis_url)
            await until(lambda: store.ready_count(KEY), 60, "a ready replica")
            await store.close()
            seen: list[int] = []
            sampler = asyncio.create_task(sample_replicas(http, stack, seen))
            load = Load(http, stack, args.rate)
            loader = asyncio.create_task(load.run())
            await asyncio.sleep(args.phase_s)
            injected: dict[str, tuple[float, str]] = {}
            for fault in FAULTS:
                load.phase = fault
                at = time.monotonic()
                what = await inject(fault, http, stack)
                injected[fault] = (at, what)
                print(f"{fault}: {what}", flush=True)
                await asyncio.sleep(max(0.0, at + args.phase_s - time.monotonic()))
            load.phase = "after"
            await asyncio.sleep(5)
            await load.drain()
            await loader
            jobs = [r for r in load.sent if r.job]
            outcomes = await asyncio.gather(*(job_outcome(http, stack, r.job or "") for r in jobs))
            job_by_phase: dict[str, collections.Counter[str]] = collections.defaultdict(
                collections.Counter
            )
            for r, outcome in zip(jobs, outcomes, strict=True):
                job_by_phase[r.end_phase][outcome] += 1
            # Leases of a dead gateway's entries run out (lease_ms, 15 s by default); one more
            # request lets the gateway's scripts clear what expired, then count what is left.
            await asyncio.sleep(20)
            probe = Sent("unary", 1, "probe", time.monotonic())
            await one(http, stack, probe)
            left = await leftovers(stack)
            sampler.cancel()
        finally:
            stack.stop()
    rows = []
    for phase in ["baseline", *FAULTS]:
        # A request counts where it ended: one cut by a fault ends in that fault's phase.
        mine = [r for r in load.sent if r.end_phase == phase]
        failed = [r for r in mine if not r.ok]
        at = injected.get(phase, (mine[0].at if mine else 0.0, ""))[0]
        recovery = max((r.ended - at for r in failed), default=0.0)
        rows.append(
            {
                "phase": phase,
                "what": injected.get(phase, (0.0, "no fault"))[1],
                "sent": len(mine),
                "succeeded": len(mine) - len(failed),
                "failed": len(failed),
                "why": dict(collections.Counter(f"{r.kind}: {r.why}" for r in failed)),
                "async accepted": sum(1 for r in mine if r.job),
                "async done": job_by_phase[phase]["done"],
                "async failed": job_by_phase[phase]["failed"],
                "async lost": job_by_phase[phase]["lost"],
                "recovery_s": round(max(0.0, recovery), 1),
            }
        )
    return {
        "rate": args.rate,
        "phase_s": args.phase_s,
        "rows": rows,
        "after the load": left,
        "probe after the load": probe.ok,
        "most replicas seen on the host": max(seen, default=0),
        "max_replicas": MAX_REPLICAS,
        "sent": [asdict(r) for r in load.sent],
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| fault | ended | succeeded | failed | why failed | async accepted / done / failed / lost"
        " | requests succeed again after |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        why = "; ".join(f"{n} {w}" for w, n in row["why"].items()) or "-"
        lines.append(
            f"| {row['phase']} | {row['sent']} | {row['succeeded']} | {row['failed']} | {why} | "
            f"{row['async accepted']} / {row['async done']} / {row['async failed']} / "
            f"{row['async lost']} | {row['recovery_s']} s |"
        )
    left = ", ".join(f"{k} {v}" for k, v in result["after the load"].items())
    lines += [
        "",
        f"After the load: {left}; a request after the load "
        f"{'succeeded' if result['probe after the load'] else 'FAILED'}; most replicas of the "
        f"deployment on the host at once: {result['most replicas seen on the host']} "
        f"(maxReplicas {result['max_replicas']}).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=12.0, help="requests per second")
    parser.add_argument("--phase-s", type=float, default=30.0, help="seconds between faults")
    parser.add_argument("--out", type=Path, help="write faults.md and faults.json here")
    result = asyncio.run(main(parser.parse_args()))
    text = table(result)
    print(text)
    if result_dir := parser.parse_args().out:
        result_dir.mkdir(parents=True, exist_ok=True)
        (result_dir / "faults.md").write_text(text + "\n")
        (result_dir / "faults.json").write_text(json.dumps(result, indent=1) + "\n")
