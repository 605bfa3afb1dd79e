"""Replay several deployments on one shared, short sim pool.

A pool run is a fresh stack whose sim backend has `pool` GPUs and whose scaler shares them by
`allocator`; several deployments, each in its own tenant by default, get their own trace (or
their part of one, `traces.split_trace`), and every request goes out at its trace time, all
deployments on one clock. Durations are compressed by `speed` as in a one-deployment replay
(`run.py`), and results read in trace seconds.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from wakegate.catalog import ACCELERATORS
from wakegate.quotas import QuotaOverride
from wakegate.sealing import box_from_settings
from wakegate.settings import Settings
from wakegate.spec import validate_name
from wakegate.store import Store
from wakegate.tools.replay.run import (
    DEFAULT_ACCELERATOR,
    ProgressFn,
    RequestResult,
    Sample,
    Scaling,
    client_session,
    create_deployment,
    deployment_config,
    lease_rows,
    on_fresh_stack,
    sample_load,
    send_on_schedule,
    sim_usage,
)
from wakegate.tools.replay.traces import TraceRequest, rotate, split_trace

TenantLayout = Literal["per-deployment", "one"]
ALLOCATORS = ("fair", "fcfs", "static")
SHARED_TENANT = "shared"
# Real seconds between reads of the deployments' events: the store keeps the last 200 of a
# deployment, so a long run is read as it goes rather than once at the end.
EVENTS_EVERY_S = 1.0


@dataclass(frozen=True)
class Member:
    """One deployment of a pool run: where it lives and the requests it gets."""

    tenant: str
    name: str
    trace_name: str
    requests: list[TraceRequest]
    guaranteed: bool = False  # usesGuaranteedCapacity

    @property
    def key(self) -> str:
        return f"{self.tenant}/{self.name}"


@dataclass(frozen=True)
class PoolPlan(Scaling):
    """Deployments sharing one pool. Every deployment has the same scaling fields; they differ
    in their requests, tenant and guarantee."""

    members: list[Member]
    pool: str  # the sim pool, as Settings.sim_pool: "a10_24gb=6"
    allocator: str = "fair"
    max_replicas: int = field(default=4, kw_only=True)
    reclaim_grace_s: float = 30.0  # trace seconds, like every duration of the plan

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("a pool plan needs at least one deployment")
        if self.allocator not in ALLOCATORS:
            raise ValueError(f"allocator {self.allocator!r}: want one of {ALLOCATORS}")
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must be <= max_replicas")
        sku = ACCELERATORS[self.accelerator].sku
        if self._parsed_pool().get(sku, 0) <= 0:
            raise ValueError(f"pool {self.pool!r} has no {sku}: no deployment could start")

    def _parsed_pool(self) -> dict[str, int]:
        from scaler.sim.pool import parse_pool

        return parse_pool(self.pool)

    @property
    def span_s(self) -> float:
        """Trace time of the last request of any deployment."""
        return max((r.at_s for m in self.members for r in m.requests), default=0.0)

    @property
    def request_count(self) -> int:
        return sum(len(m.requests) for m in self.members)

    @property
    def pool_gpus(self) -> int:
        """GPUs in the pool (cpu slots are none)."""
        return sum(n for sku, n in self._parsed_pool().items() if sku != "cpu")


def pool_for_peaks(members: int, max_replicas: int, accelerator: str = DEFAULT_ACCELERATOR) -> str:
    """A pool with room for every deployment at max_replicas: never short."""
    acc = ACCELERATORS[accelerator]
    return f"{acc.sku}={members * max_replicas * max(acc.gpu_count, 1)}"


def plan_members(
    traces: list[tuple[str, list[TraceRequest]]],
    per_trace: int = 1,
    tenants: TenantLayout = "per-deployment",
    guaranteed: int = 0,
    stagger_s: float = 0.0,
) -> list[Member]:
    """Deployments d1, d2, ... in trace order, each trace split over `per_trace` of them; in
    tenants t1, t2, ... (one per deployment) or all in one tenant; the first `guaranteed`
    use guaranteed capacity. With `stagger_s`, the requests of deployment d(i+1) are rotated
    by i x stagger_s around their trace's span (`traces.rotate`), so that the parts of one
    trace do not all burst at once."""
    members: list[Member] = []
    for trace_name, requests in traces:
        span = max((r.at_s for r in requests), default=0.0)
        for part in split_trace(requests, per_trace):
            i = len(members) + 1
            if stagger_s:
                part = rotate(part, (i - 1) * stagger_s, span)
            tenant = f"t{i}" if tenants == "per-deployment" else SHARED_TENANT
            members.append(
                Member(
                    tenant=validate_name(tenant, "tenant"),
                    name=validate_name(f"d{i}"),
                    trace_name=trace_name,
                    requests=part,
                    guaranteed=i <= guaranteed,
                )
            )
    return members


@dataclass
class PoolResult:
    plan: PoolPlan
    results: dict[str, list[RequestResult]]  # by deployment key, in trace order
    samples: dict[str, list[Sample]]
    # The deployments' events, each with `t_s` (trace seconds) added, in time order.
    events: dict[str, list[dict[str, Any]]]
    usage: list[dict[str, Any]]  # every GPU lease of the pool, trace seconds
    horizon_s: float  # trace time when the last request of any deployment finished
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)  # by deployment key

    def to_json(self) -> dict[str, Any]:
        plan = asdict(self.plan)
        for m in plan["members"]:
            m["requests"] = len(m["requests"])
        return {
            "plan": plan,
            "results": {k: [asdict(r) for r in rs] for k, rs in self.results.items()},
            "samples": {k: [asdict(s) for s in ss] for k, ss in self.samples.items()},
            "events": self.events,
            "usage": self.usage,
            "horizon_s": self.horizon_s,
            "tokens": self.tokens,
        }


def _event_wall_s(e: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(e["timestamp"]).replace("Z", "+00:00")).timestamp()


async def _read_events(store: Store, seen: dict[str, dict[str, dict[str, Any]]]) -> None:
    for key, known in seen.items():
        for e in await store.events(key):
            # An event's whole content is its identity: the list is trimmed from the front,
            # so positions shift between reads.
            known.setdefault(repr(sorted(e.items())), e)


async def _collect_events(store: Store, seen: dict[str, dict[str, dict[str, Any]]]) -> None:
    while True:
        await _read_events(store, seen)
        await asyncio.sleep(EVENTS_EVERY_S)


async def _tenant_tokens(store: Store, members: list[Member]) -> dict[str, str]:
    """Each tenant of the plan, created with an API token of its own (as `wakegate up` does
    for the default tenant)."""
    tokens: dict[str, str] = {}
    for tenant in sorted({m.tenant for m in members}):
        token = "pb_" + secrets.token_urlsafe(24)
        await store.ensure_tenant(tenant)
        await store.add_token(token, tenant)
        tokens[tenant] = token
    return tokens


async def _drive_pool(
    plan: PoolPlan, settings: Settings, progress: ProgressFn | None = None
) -> PoolResult:
    assert settings.redis_url
    base = f"http://{settings.host}:{settings.port}"
    # Tokens signed with the stack's key, as the gateway requires.
    store = Store.from_url(settings.redis_url, box=box_from_settings(settings.secret_key_file))
    try:
        tokens = await _tenant_tokens(store, plan.members)
        # Reserved capacity is the operator's grant: the replay's operator grants the tenants
        # of its guaranteed deployments all they hold (what `--guaranteed` measures).
        for tenant in sorted({m.tenant for m in plan.members if m.guaranteed}):
            await store.set_quota_override(tenant, QuotaOverride(guaranteed_gpus_per_tenant=None))
        async with client_session() as client:
            for m in plan.members:
                config = deployment_config(plan, guaranteed=m.guaranteed)
                await create_deployment(client, base, tokens[m.tenant], m.name, config)
            urls = [f"{base}/{m.tenant}/deployments/v2/llms/{m.name}" for m in plan.members]
            headers = [{"Authorization": f"Bearer {tokens[m.tenant]}"} for m in plan.members]
            # One clock for every deployment: the requests of all, in trace order.
            schedule = sorted(
                ((req, i) for i, m in enumerate(plan.members) for req in m.requests),
                key=lambda pair: (pair[0].at_s, pair[1]),
            )
            samples: dict[str, list[Sample]] = {m.key: [] for m in plan.members}
            seen: dict[str, dict[str, dict[str, Any]]] = {m.key: {} for m in plan.members}
            t0, wall0 = time.monotonic(), time.time()
            watchers = [
                asyncio.create_task(sample_load(store, m.key, t0, plan.speed, samples[m.key]))
                for m in plan.members
            ]
            watchers.append(asyncio.create_task(_collect_events(store, seen)))
            sent = await send_on_schedule(
                client,
                [(req, urls[i], headers[i]) for req, i in schedule],
                t0,
                plan.speed,
                progress,
                plan.span_s,
            )
            horizon = (time.monotonic() - t0) * plan.speed
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            await _read_events(store, seen)
        data = await sim_usage(settings)
    finally:
        await store.close()
    results: dict[str, list[RequestResult]] = {m.key: [] for m in plan.members}
    for (_, i), result in zip(schedule, sent, strict=True):
        results[plan.members[i].key].append(result)
    events = {
        key: sorted(
            ({**e, "t_s": (_event_wall_s(e) - wall0) * plan.speed} for e in known.values()),
            key=lambda e: float(e["t_s"]),
        )
        for key, known in seen.items()
    }
    tokens_by_key = {
        m.key: {k: int(v) for k, v in data.get("tokens", {}).get(m.key, {}).items()}
        for m in plan.members
    }
    return PoolResult(
        plan, results, samples, events, lease_rows(data, wall0, plan.speed), horizon, tokens_by_key
    )


def run_pool(plan: PoolPlan, progress: ProgressFn | None = None) -> PoolResult:
    """One pool run on a fresh stack. `progress`, if given, hears how far the run is every
    PROGRESS_EVERY_S."""
    return on_fresh_stack(
        lambda stack: _drive_pool(plan, stack.settings, progress),
        plan.speed,
        plan.span_s,
        plan.request_count,
        progress,
        sim_pool=plan.pool,
        allocator=plan.allocator,
        reclaim_grace_s=plan.reclaim_grace_s / plan.speed,
    )
