"""What a replay measured: cost, latency and scaling behaviour, as numbers and a plot."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wakegate.catalog import ACCELERATORS
from wakegate.tools.replay.pool import PoolResult
from wakegate.tools.replay.run import RunResult

# Events the scaler appends to a deployment when the pool is short (scaler/allocator.py).
RECLAIMED = "Reclaimed"  # replicas taken back for another (idle, starting or serving ones)
WAITING_FOR_CAPACITY = "WaitingForCapacity"  # it wants a replica the pool cannot give now
CAPACITY_AVAILABLE = "CapacityAvailable"  # ... and no longer waits


@dataclass(frozen=True)
class Summary:
    policy: str
    routing: str
    gpu_seconds: float
    ok: int
    failed: int
    queue_wait_p50: float
    queue_wait_p95: float
    queue_wait_p99: float
    ttft_p50: float
    ttft_p99: float
    # Requests that found a replica ready: where routing shows, without cold-start waits.
    warm_ttft_p99: float
    cold_starts: int  # deployment went from zero replicas to one
    cold_requests: int  # requests that arrived with no replica ready
    scale_events: int  # replica starts plus stops
    flaps: int  # 0 -> 1 -> 0 inside one cooldown
    max_replicas_seen: int
    cache_hit: float  # share of prompt tokens served from a replica's prefix cache


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def gpus_of(row: dict[str, Any]) -> int:
    if "gpus" in row:
        return int(row["gpus"])
    acc = ACCELERATORS.get(str(row.get("accelerator", "")))
    return acc.gpu_count if acc else 1


def replica_timeline(
    usage: list[dict[str, Any]],
    horizon_s: float,
    weigh: Callable[[dict[str, Any]], int] = lambda _row: 1,
) -> list[tuple[float, int]]:
    """(time, replicas holding a GPU) at every change, from the lease intervals; with
    `weigh=gpus_of`, GPUs held instead of replicas."""
    changes: list[tuple[float, int]] = []
    for row in usage:
        changes.append((row["start_s"], +weigh(row)))
        end = row["end_s"]
        if end is not None and end <= horizon_s:
            changes.append((end, -weigh(row)))
    changes.sort()
    out, n = [], 0
    for t, d in changes:
        n += d
        out.append((t, n))
    return out


def gpu_seconds(usage: list[dict[str, Any]], horizon_s: float) -> float:
    """GPU-seconds of the leases from the start of the run to `horizon_s`."""
    total = 0.0
    for row in usage:
        start = max(0.0, row["start_s"])
        end = horizon_s if row["end_s"] is None else min(row["end_s"], horizon_s)
        total += max(0.0, end - start) * gpus_of(row)
    return total


def cold_starts_and_flaps(timeline: list[tuple[float, int]], cooldown_s: float) -> tuple[int, int]:
    """Rises from zero replicas, and falls back to zero within one cooldown of the rise."""
    cold_starts, flaps, last_up = 0, 0, None
    prev = 0
    for t, n in timeline:
        if prev == 0 and n > 0:
            cold_starts += 1
            last_up = t
        elif prev > 0 and n == 0 and last_up is not None and t - last_up < cooldown_s:
            flaps += 1
        prev = n
    return cold_starts, flaps


def summarize(result: RunResult) -> Summary:
    rs = result.results
    ok = [r for r in rs if r.ok]
    waits = [r.queue_wait_s for r in ok if r.queue_wait_s is not None]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    warm_ttfts = [r.ttft_s for r in ok if r.ttft_s is not None and not r.cold]
    horizon = result.horizon_s
    timeline = replica_timeline(result.usage, horizon)
    cold_starts, flaps = cold_starts_and_flaps(timeline, result.plan.cooldown_s)
    stops = sum(1 for row in result.usage if row["end_s"] is not None and row["end_s"] <= horizon)
    prompt = result.tokens.get("prompt_tokens", 0)
    return Summary(
        policy=result.plan.policy,
        routing=result.plan.routing,
        gpu_seconds=gpu_seconds(result.usage, horizon),
        ok=len(ok),
        failed=len(rs) - len(ok),
        queue_wait_p50=percentile(waits, 0.50),
        queue_wait_p95=percentile(waits, 0.95),
        queue_wait_p99=percentile(waits, 0.99),
        ttft_p50=percentile(ttfts, 0.50),
        ttft_p99=percentile(ttfts, 0.99),
        warm_ttft_p99=percentile(warm_ttfts, 0.99),
        cold_starts=cold_starts,
        cold_requests=sum(1 for r in rs if r.cold),
        scale_events=len(result.usage) + stops,
        flaps=flaps,
        max_replicas_seen=max((n for _, n in timeline), default=0),
        cache_hit=result.tokens.get("cached_tokens", 0) / prompt if prompt else 0.0,
    )


COLUMNS = [
    ("policy", "policy", "{}"),
    ("routing", "routing", "{}"),
    ("GPU-s", "gpu_seconds", "{:,.0f}"),
    ("ok", "ok", "{}"),
    ("failed", "failed", "{}"),
    ("wait p50", "queue_wait_p50", "{:.2f}"),
    ("wait p95", "queue_wait_p95", "{:.2f}"),
    ("wait p99", "queue_wait_p99", "{:.2f}"),
    ("TTFT p50", "ttft_p50", "{:.2f}"),
    ("TTFT p99", "ttft_p99", "{:.2f}"),
    ("warm TTFT p99", "warm_ttft_p99", "{:.2f}"),
    ("cold starts", "cold_starts", "{}"),
    ("cold reqs", "cold_requests", "{}"),
    ("scale events", "scale_events", "{}"),
    ("flaps", "flaps", "{}"),
    ("max replicas", "max_replicas_seen", "{}"),
    ("cache hit", "cache_hit", "{:.1%}"),
]


def markdown(columns: Sequence[tuple[str, str, str]], rows: Sequence[object]) -> str:
    """A Markdown table: one row per value, one column per (title, attribute, format)."""
    head = "| " + " | ".join(c[0] for c in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [
        "| " + " | ".join(fmt.format(getattr(r, attr)) for _, attr, fmt in columns) + " |"
        for r in rows
    ]
    return "\n".join([head, rule, *lines])


def table(summaries: list[Summary]) -> str:
    """A Markdown table, one row per policy; times in trace seconds."""
    return markdown(COLUMNS, summaries)


def plot(result: RunResult, path: Path, bucket_s: float = 10.0) -> None:
    """Load (arrivals per second), queue depth and replicas over trace time, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    horizon = max(result.horizon_s, bucket_s)
    buckets = [0] * (int(horizon // bucket_s) + 1)
    for r in result.results:
        buckets[min(len(buckets) - 1, int(r.at_s // bucket_s))] += 1
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(11, 7), sharex=True)
    ax1.step([i * bucket_s / 60 for i in range(len(buckets))],
             [b / bucket_s for b in buckets], where="post")  # fmt: skip
    ax1.set_ylabel("arrivals / s")
    ts = [s.t_s / 60 for s in result.samples]
    ax2.plot(ts, [s.queued for s in result.samples], label="queued")
    ax2.plot(ts, [s.in_flight for s in result.samples], label="in flight")
    ax2.set_ylabel("requests")
    ax2.legend(loc="upper right")
    ax3.step(ts, [s.ready for s in result.samples], where="post", label="ready")
    ax3.step(ts, [s.ready + s.starting for s in result.samples], where="post",
             label="ready + starting", linestyle="--")  # fmt: skip
    ax3.set_ylabel("replicas")
    ax3.set_xlabel("trace time (minutes)")
    ax3.legend(loc="upper right")
    fig.suptitle(
        f"{result.plan.trace_name}: policy {result.plan.policy}, routing {result.plan.routing}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- shared pool ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentSummary:
    allocator: str
    deployment: str  # tenant/name
    trace: str
    guaranteed: bool
    requests: int
    failed: int
    queue_wait_p50: float
    queue_wait_p99: float
    ttft_p99: float
    cold_starts: int
    gpu_seconds: float
    max_replicas_seen: int
    reclaimed: int  # its idle replicas taken back for other deployments
    capacity_wait_s: float  # time it waited for the pool

    @property
    def guaranteed_mark(self) -> str:
        return "yes" if self.guaranteed else ""


@dataclass(frozen=True)
class PoolSummary:
    allocator: str
    pool: str
    pool_gpus: int
    gpu_seconds: float
    utilisation: float  # GPU-seconds / (pool GPUs x horizon)
    reclaims: int  # Reclaimed events over all deployments
    capacity_wait_s: float  # time at least one deployment waited for the pool
    requests: int
    failed: int
    worst_wait_p99: float  # the highest p99 queue wait of any deployment
    worst_deployment: str  # whose it is
    deployments: tuple[DeploymentSummary, ...]


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        start = max(start, reach)
        if end > start:
            total += end - start
            reach = end
    return total


def capacity_waits(events: list[dict[str, Any]], horizon_s: float) -> list[tuple[float, float]]:
    """When one deployment waited for the pool: from each `WaitingForCapacity` event to the
    next `CapacityAvailable` (or the end of the run), in trace seconds."""
    out: list[tuple[float, float]] = []
    since: float | None = None
    for e in sorted(events, key=lambda e: float(e["t_s"])):
        t = min(max(0.0, float(e["t_s"])), horizon_s)
        if e.get("eventType") == WAITING_FOR_CAPACITY and since is None:
            since = t
        elif e.get("eventType") == CAPACITY_AVAILABLE and since is not None:
            out.append((since, t))
            since = None
    if since is not None:
        out.append((since, horizon_s))
    return out


def summarize_pool(result: PoolResult, label: str | None = None) -> PoolSummary:
    """Per deployment and for the pool; `label` names the run in the tables (default: its
    allocator)."""
    plan, horizon = result.plan, result.horizon_s
    label = label or plan.allocator
    rows: list[DeploymentSummary] = []
    all_waits: list[tuple[float, float]] = []
    for m in plan.members:
        rs = result.results[m.key]
        ok = [r for r in rs if r.ok]
        waits = [r.queue_wait_s for r in ok if r.queue_wait_s is not None]
        ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
        leases = [row for row in result.usage if row.get("deployment") == m.key]
        timeline = replica_timeline(leases, horizon)
        events = result.events.get(m.key, [])
        waited = capacity_waits(events, horizon)
        all_waits += waited
        rows.append(
            DeploymentSummary(
                allocator=label,
                deployment=m.key,
                trace=m.trace_name,
                guaranteed=m.guaranteed,
                requests=len(rs),
                failed=len(rs) - len(ok),
                queue_wait_p50=percentile(waits, 0.50),
                queue_wait_p99=percentile(waits, 0.99),
                ttft_p99=percentile(ttfts, 0.99),
                cold_starts=cold_starts_and_flaps(timeline, plan.cooldown_s)[0],
                gpu_seconds=gpu_seconds(leases, horizon),
                max_replicas_seen=max((n for _, n in timeline), default=0),
                reclaimed=sum(1 for e in events if e.get("eventType") == RECLAIMED),
                capacity_wait_s=_union_length(waited),
            )
        )
    measured = [d for d in rows if not math.isnan(d.queue_wait_p99)]
    worst = max(measured, key=lambda d: d.queue_wait_p99, default=None)
    gpu_s = gpu_seconds(result.usage, horizon)
    capacity = plan.pool_gpus * horizon
    return PoolSummary(
        allocator=label,
        pool=plan.pool,
        pool_gpus=plan.pool_gpus,
        gpu_seconds=gpu_s,
        utilisation=gpu_s / capacity if capacity > 0 else math.nan,
        reclaims=sum(d.reclaimed for d in rows),
        capacity_wait_s=_union_length(all_waits),
        requests=sum(d.requests for d in rows),
        failed=sum(d.failed for d in rows),
        worst_wait_p99=worst.queue_wait_p99 if worst else math.nan,
        worst_deployment=worst.deployment if worst else "-",
        deployments=tuple(rows),
    )


POOL_COLUMNS = [
    ("allocator", "allocator", "{}"),
    ("pool", "pool", "{}"),
    ("GPU-s", "gpu_seconds", "{:,.0f}"),
    ("utilisation", "utilisation", "{:.1%}"),
    ("reclaims", "reclaims", "{}"),
    ("capacity wait", "capacity_wait_s", "{:,.1f}"),
    ("requests", "requests", "{}"),
    ("failed", "failed", "{}"),
    ("worst wait p99", "worst_wait_p99", "{:.2f}"),
    ("worst deployment", "worst_deployment", "{}"),
]

DEPLOYMENT_COLUMNS = [
    ("allocator", "allocator", "{}"),
    ("deployment", "deployment", "{}"),
    ("trace", "trace", "{}"),
    ("guaranteed", "guaranteed_mark", "{}"),
    ("requests", "requests", "{}"),
    ("failed", "failed", "{}"),
    ("wait p50", "queue_wait_p50", "{:.2f}"),
    ("wait p99", "queue_wait_p99", "{:.2f}"),
    ("TTFT p99", "ttft_p99", "{:.2f}"),
    ("cold starts", "cold_starts", "{}"),
    ("GPU-s", "gpu_seconds", "{:,.0f}"),
    ("max replicas", "max_replicas_seen", "{}"),
    ("reclaimed", "reclaimed", "{}"),
    ("capacity wait", "capacity_wait_s", "{:,.1f}"),
]


def pool_table(summaries: list[PoolSummary]) -> str:
    """Markdown: one row per allocator with the pool's figures, then one row per deployment
    of every allocator; times in trace seconds."""
    return "\n\n".join(
        [
            markdown(POOL_COLUMNS, summaries),
            markdown(DEPLOYMENT_COLUMNS, [d for s in summaries for d in s.deployments]),
        ]
    )


def _step_at(timeline: list[tuple[float, int]], t: float) -> int:
    """The timeline's value just after time t (0 before its first change)."""
    i = bisect.bisect_right([c for c, _ in timeline], t)
    return timeline[i - 1][1] if i else 0


def plot_pool(result: PoolResult, path: Path) -> None:
    """Each deployment's queue, and the pool's GPUs stacked by deployment, over trace time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan, horizon = result.plan, max(result.horizon_s, 1.0)
    keys = [m.key for m in plan.members]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    for key in keys:
        samples = result.samples.get(key, [])
        ax1.plot([s.t_s / 60 for s in samples], [s.queued for s in samples], label=key)
    ax1.set_ylabel("requests queued")
    ax1.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    timelines = [
        replica_timeline(
            [row for row in result.usage if row.get("deployment") == key], horizon, gpus_of
        )
        for key in keys
    ]
    times = sorted({0.0, horizon, *(t for tl in timelines for t, _ in tl if 0 <= t <= horizon)})
    ax2.stackplot(
        [t / 60 for t in times],
        *[[_step_at(tl, t) for t in times] for tl in timelines],
        labels=keys,
        step="post",
    )
    ax2.axhline(plan.pool_gpus, color="black", linestyle="--", linewidth=1, label="pool")
    for key in keys:
        for e in result.events.get(key, []):
            if e.get("eventType") == RECLAIMED:
                ax2.axvline(float(e["t_s"]) / 60, color="black", linestyle=":", linewidth=1)
    ax2.set_ylabel("GPUs held (dotted: a reclaim)")
    ax2.set_xlabel("trace time (minutes)")
    ax2.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"allocator {plan.allocator}, pool {plan.pool}, policy {plan.policy}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
