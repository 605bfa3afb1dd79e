"""Replay a trace through the real gateway and scaler on the simulator backend.

One run = a fresh stack (embedded Redis and broker, scaler with the `sim` backend, gateway),
one deployment with the chosen scaling policy, and the trace's requests sent at their
(compressed) times as streaming LoRAX requests. Every duration of the run (engine timings,
cooldowns, policy windows) is divided by `speed`; every measurement is multiplied back, so
results read in trace seconds. Several deployments sharing one pool: `pool.py`.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import aiohttp

from wakegate.engines.sim_timing import SimTiming
from wakegate.procs import free_port
from wakegate.settings import Settings
from wakegate.store import Store
from wakegate.tools.replay.traces import TraceRequest, prompt_text

if TYPE_CHECKING:  # the stack is imported when a run starts
    from wakegate.tools.up import Stack

R = TypeVar("R")

SAMPLE_EVERY_S = 0.25  # real seconds between samples of queue depth and replicas
PROGRESS_EVERY_S = 0.5  # real seconds between two progress reports
QUEUE_COMMENT = ": wakegate "
DEFAULT_ACCELERATOR = "a10_24gb_100"


# A replay's simulated engine unless told otherwise, in trace seconds (the sim host divides
# them by `speed`). Tokens after the first travel in chunks of `stream_interval_s` trace
# seconds, which keeps the gateway's per-event work bounded at high replay speeds; TTFT stays
# exact.
REPLAY_ENGINE = SimTiming(
    load_s=30.0, ttft_s=0.05, prefill_tps=10_000.0, tps=40.0, batch=16, batch_slowdown=0.02,
    stream_interval_s=1.0, cache_blocks=0,
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Scaling:
    """What every deployment of a replay is made of, whichever plan carries it: its scaling
    fields and simulated engine."""

    policy: str = "wakegate"
    policy_params: dict[str, float] = field(default_factory=dict)
    speed: float = 10.0
    min_replicas: int = 0
    max_replicas: int = 8
    scale_up_threshold: int = 16
    cooldown_s: float = 120.0
    engine: SimTiming = REPLAY_ENGINE
    accelerator: str = DEFAULT_ACCELERATOR
    routing: str = "prefix"


@dataclass(frozen=True)
class Plan(Scaling):
    """One deployment replaying one trace."""

    trace_name: str
    requests: list[TraceRequest]
    warm: bool = False  # start the clock once warm_replicas are ready

    @property
    def span_s(self) -> float:
        """Trace time of the last request."""
        return self.requests[-1].at_s if self.requests else 0.0

    @property
    def warm_replicas(self) -> int:
        return self.max_replicas if self.policy == "always-on" else self.min_replicas


@dataclass
class RequestResult:
    at_s: float  # trace time of arrival
    ok: bool
    status: int
    queue_wait_s: float | None = None
    ttft_s: float | None = None
    duration_s: float | None = None
    cold: bool = False
    error: str = ""


@dataclass
class Sample:
    t_s: float
    queued: int
    in_flight: int
    ready: int
    starting: int


@dataclass
class RunResult:
    plan: Plan
    results: list[RequestResult]
    samples: list[Sample]
    usage: list[dict[str, Any]]  # GPU lease intervals from the sim host, trace seconds
    horizon_s: float  # trace time when the last request finished
    tokens: dict[str, int] = field(default_factory=dict)  # prompt and prefix-cached tokens

    def to_json(self) -> dict[str, Any]:
        plan = asdict(self.plan)
        plan.pop("requests")
        return {
            "plan": plan,
            "results": [asdict(r) for r in self.results],
            "samples": [asdict(s) for s in self.samples],
            "usage": self.usage,
            "horizon_s": self.horizon_s,
            "tokens": self.tokens,
        }


@dataclass(frozen=True)
class Progress:
    """How far a run is, for a progress bar: the trace time reached (the clock of the
    replay, in trace seconds, up to the last request's arrival) and the requests sent and
    answered."""

    phase: Literal["starting", "replaying", "finishing", "done"]
    trace_s: float
    span_s: float
    sent: int
    done: int
    total: int


ProgressFn = Callable[[Progress], None]


@dataclass
class Tally:
    """Requests sent and answered so far in a run."""

    total: int
    sent: int = 0
    done: int = 0

    def sending(self, task: asyncio.Task[Any]) -> None:
        self.sent += 1
        task.add_done_callback(self._answered)

    def _answered(self, _task: asyncio.Task[Any]) -> None:
        self.done += 1


async def report_progress(
    progress: ProgressFn, tally: Tally, t0: float, speed: float, span_s: float
) -> None:
    """Report the run's progress every PROGRESS_EVERY_S until cancelled."""
    while True:
        trace_s = min((time.monotonic() - t0) * speed, span_s)
        phase: Literal["replaying", "finishing"] = (
            "finishing" if tally.sent == tally.total else "replaying"
        )
        progress(Progress(phase, trace_s, span_s, tally.sent, tally.done, tally.total))
        await asyncio.sleep(PROGRESS_EVERY_S)


def scaled_params(policy: str, params: dict[str, float], speed: float) -> dict[str, float]:
    """Every knob of the policy, defaults included; those named `*_s` are durations and are
    compressed like the trace (a 60 s window at 10x lasts 6 s)."""
    from wakegate.policy_params import default_params

    merged = {**default_params(policy), **params}
    return {k: (v / speed if k.endswith("_s") and v > 0 else v) for k, v in merged.items()}


async def send(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    req: TraceRequest,
    speed: float,
) -> RequestResult:
    body = json.dumps(
        {
            "inputs": prompt_text(req),
            "parameters": {"max_new_tokens": req.output_tokens},
            "stream": True,
        }
    )
    sent = time.monotonic()
    result = RequestResult(at_s=req.at_s, ok=False, status=0)
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            result.status = resp.status
            if resp.status != 200:
                result.error = (await resp.text())[:200]
                return result
            # The driver only needs two lines of the stream: the gateway's queue comment and
            # the first event; the rest is read to the end to time the whole response.
            async for raw in resp.content:
                line = raw.decode(errors="replace").rstrip("\r\n")
                if line.startswith(QUEUE_COMMENT):
                    fields = dict(kv.split("=", 1) for kv in line[len(QUEUE_COMMENT) :].split())
                    result.queue_wait_s = float(fields["queue_wait_ms"]) / 1000 * speed
                    result.cold = fields.get("cold") == "1"
                elif line.startswith("data:"):
                    if '"error"' in line and '"token"' not in line:
                        result.error = line[5:205]
                        return result
                    if result.ttft_s is None:
                        result.ttft_s = (time.monotonic() - sent) * speed
        result.ok = result.ttft_s is not None
    except (aiohttp.ClientError, TimeoutError) as exc:
        result.error = repr(exc)[:200]
    result.duration_s = (time.monotonic() - sent) * speed
    return result


async def send_on_schedule(
    client: aiohttp.ClientSession,
    schedule: list[tuple[TraceRequest, str, dict[str, str]]],
    t0: float,
    speed: float,
    progress: ProgressFn | None,
    span_s: float,
) -> list[RequestResult]:
    """Send each (request, url, headers) at its trace time, `speed` times faster, from `t0`
    on, and wait for every answer (in schedule order). `progress`, if given, hears how far
    the sending and answering are every PROGRESS_EVERY_S meanwhile."""
    tally = Tally(len(schedule))
    reporter = (
        asyncio.create_task(report_progress(progress, tally, t0, speed, span_s))
        if progress is not None
        else None
    )
    try:
        tasks: list[asyncio.Task[RequestResult]] = []
        for req, url, headers in schedule:
            delay = t0 + req.at_s / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(send(client, url, headers, req, speed))
            tally.sending(task)
            tasks.append(task)
        return list(await asyncio.gather(*tasks))
    finally:
        if reporter is not None:
            reporter.cancel()


async def sample_load(store: Store, key: str, t0: float, speed: float, out: list[Sample]) -> None:
    while True:
        load = await store.load(key)
        replicas = await store.replicas(key)
        out.append(
            Sample(
                t_s=(time.monotonic() - t0) * speed,
                queued=load.queued,
                in_flight=load.in_flight,
                ready=sum(1 for r in replicas if r.state == "ready"),
                starting=sum(1 for r in replicas if r.state == "starting"),
            )
        )
        await asyncio.sleep(SAMPLE_EVERY_S)


def deployment_config(plan: Scaling, guaranteed: bool = False) -> dict[str, Any]:
    """The deployment's `config` as the control plane takes it, durations compressed."""
    config: dict[str, Any] = {
        "baseModel": "sim-llm",
        "minReplicas": plan.min_replicas,
        "maxReplicas": plan.max_replicas,
        "scaleUpRequestThreshold": plan.scale_up_threshold,
        "cooldownTime": max(0, round(plan.cooldown_s / plan.speed)),
        "customArgs": plan.engine.args(),
        # Long-context traces (Mooncake prompts reach 126k tokens) must fit the engine.
        "maxTotalTokens": 262_144,
        "accelerator": plan.accelerator,
        "routing": plan.routing,
        "scalingPolicy": {
            "name": plan.policy,
            "params": scaled_params(plan.policy, plan.policy_params, plan.speed),
        },
    }
    if guaranteed:
        config["usesGuaranteedCapacity"] = True
    return config


def client_session() -> aiohttp.ClientSession:
    """One session for every request of a run: no total timeout (a request may wait for a
    cold start or for capacity), and room for a burst's connections."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        connector=aiohttp.TCPConnector(limit=4000),
    )


async def create_deployment(
    client: aiohttp.ClientSession, base: str, token: str, name: str, config: dict[str, Any]
) -> None:
    async with client.post(
        f"{base}/v2/deployments",
        headers={"Authorization": f"Bearer {token}"},
        json={"name": name, "config": config},
    ) as r:
        if r.status != 200:
            raise RuntimeError(f"creating the deployment {name} failed: {await r.text()}")


async def _drive(
    plan: Plan, settings: Settings, token: str, progress: ProgressFn | None = None
) -> RunResult:
    assert settings.redis_url
    base = f"http://{settings.host}:{settings.port}"
    headers = {"Authorization": f"Bearer {token}"}
    name = "replay"
    key = f"{settings.default_tenant}/{name}"
    async with client_session() as client:
        await create_deployment(client, base, token, name, deployment_config(plan))
        url = f"{base}/{settings.default_tenant}/deployments/v2/llms/{name}"
        store = Store.from_url(settings.redis_url)
        if plan.warm:
            await _warm_up(store, key, plan)
        samples: list[Sample] = []
        t0 = time.monotonic()
        sampler = asyncio.create_task(sample_load(store, key, t0, plan.speed, samples))
        schedule = [(req, url, headers) for req in plan.requests]
        results = await send_on_schedule(client, schedule, t0, plan.speed, progress, plan.span_s)
        horizon = (time.monotonic() - t0) * plan.speed
        sampler.cancel()
        await store.close()
        usage, tokens = await _usage(settings, key, t0, plan.speed)
    return RunResult(plan, results, samples, usage, horizon, tokens)


async def _warm_up(store: Store, key: str, plan: Plan) -> None:
    """Wait until the replicas the policy keeps are ready (a few model loads at most)."""
    deadline = time.monotonic() + 4 * plan.engine.load_s / plan.speed + 60
    while await store.ready_count(key) < plan.warm_replicas:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{plan.warm_replicas} replicas were not ready in time")
        await asyncio.sleep(0.2)


async def sim_usage(settings: Settings) -> dict[str, Any]:
    """The sim host's `/usage`: lease intervals (wall clock) and token totals per deployment."""
    host = json.loads((settings.state_dir / "sim-host.json").read_text())
    auth = {"Authorization": f"Bearer {host['token']}"}
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"{host['url']}/usage", headers=auth) as r,
    ):
        data: dict[str, Any] = await r.json()
    return data


def lease_rows(data: dict[str, Any], wall0: float, speed: float) -> list[dict[str, Any]]:
    """Every lease interval with `start_s`/`end_s` added: trace seconds from `wall0`."""
    rows: list[dict[str, Any]] = []
    for row in data.get("intervals", []):
        start = (row["acquired_at"] - wall0) * speed
        end = None if row.get("released_at") is None else (row["released_at"] - wall0) * speed
        rows.append({**row, "start_s": start, "end_s": end})
    return rows


async def _usage(
    settings: Settings, key: str, t0: float, speed: float
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """GPU lease intervals (re-based to trace seconds) and token totals from the sim host."""
    data = await sim_usage(settings)
    # The host reports wall-clock times; convert relative to the run's start.
    wall0 = time.time() - (time.monotonic() - t0)
    tokens = data.get("tokens", {}).get(key, {})
    return lease_rows(data, wall0, speed), {k: int(v) for k, v in tokens.items()}


def replay_settings(state_dir: Path, speed: float, log_level: str, **extra: Any) -> Settings:
    """The stack of a replay: sim backend at the replay's speed, a fast reconcile loop, and a
    queue that never times a request out (waits are what the replay measures)."""
    return Settings(
        state_dir=state_dir,
        port=free_port(),
        scaler_port=free_port(),
        private_port=None,  # the replay's clients use the public listener
        backend="sim",
        sim_time_scale=speed,
        reconcile_interval_s=0.25,
        queue_timeout_s=3600.0,
        keepalive_s=5.0,
        log_level=log_level,
        # The replay measures the policies and the allocator on its own pool: no tenant
        # quota bounds a trace's deployment below what the pool holds.
        quota_max_gpus_per_tenant=None,
        quota_max_replicas_per_tenant=None,
        **extra,
    )


def on_fresh_stack(
    drive: Callable[[Stack], Coroutine[Any, Any, R]],
    speed: float,
    span_s: float,
    total: int,
    progress: ProgressFn | None,
    **settings: Any,
) -> R:
    """`drive` a fresh replay stack (`replay_settings` with `settings` on top, in a temporary
    state dir); the stack is stopped afterwards, whatever happens. `progress`, if given, hears
    the run start and end; `drive` reports what lies between."""
    from wakegate.tools.up import Stack

    if progress is not None:
        progress(Progress("starting", 0.0, span_s, 0, 0, total))
    with tempfile.TemporaryDirectory(prefix="wakegate-replay-") as tmp:
        stack = Stack(replay_settings(Path(tmp), speed, "WARNING", **settings), quiet=True)
        try:
            stack.start()
            result = asyncio.run(drive(stack))
        finally:
            stack.shutdown()
    if progress is not None:
        progress(Progress("done", span_s, span_s, total, total, total))
    return result


def run(plan: Plan, progress: ProgressFn | None = None) -> RunResult:
    """One replay on a fresh stack. `progress`, if given, hears how far the run is every
    PROGRESS_EVERY_S."""
    return on_fresh_stack(
        lambda stack: _drive(plan, stack.settings, stack.token, progress),
        plan.speed,
        plan.span_s,
        len(plan.requests),
        progress,
    )
