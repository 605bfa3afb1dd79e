"""What a replay measured: cost, latency and scaling behaviour, as numbers and a plot."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wakegate.catalog import ACCELERATORS
from wakegate.replay.run import RunResult


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


def _gpus(row: dict[str, Any]) -> int:
    if "gpus" in row:
        return int(row["gpus"])
    acc = ACCELERATORS.get(str(row.get("accelerator", "")))
    return acc.gpu_count if acc else 1


def replica_timeline(usage: list[dict[str, Any]], horizon_s: float) -> list[tuple[float, int]]:
    """(time, replicas holding a GPU) at every change, from the lease intervals."""
    changes: list[tuple[float, int]] = []
    for row in usage:
        changes.append((row["start_s"], +1))
        end = row["end_s"]
        if end is not None and end <= horizon_s:
            changes.append((end, -1))
    changes.sort()
    out, n = [], 0
    for t, d in changes:
        n += d
        out.append((t, n))
    return out


def summarize(result: RunResult) -> Summary:
    rs = result.results
    ok = [r for r in rs if r.ok]
    waits = [r.queue_wait_s for r in ok if r.queue_wait_s is not None]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    warm_ttfts = [r.ttft_s for r in ok if r.ttft_s is not None and not r.cold]
    horizon = result.horizon_s
    gpu_s = 0.0
    for row in result.usage:
        start = max(0.0, row["start_s"])
        end = horizon if row["end_s"] is None else min(row["end_s"], horizon)
        gpu_s += max(0.0, end - start) * _gpus(row)
    timeline = replica_timeline(result.usage, horizon)
    cold_starts, flaps, last_up = 0, 0, None
    prev = 0
    for t, n in timeline:
        if prev == 0 and n > 0:
            cold_starts += 1
            last_up = t
        elif prev > 0 and n == 0 and last_up is not None and t - last_up < result.plan.cooldown_s:
            flaps += 1
        prev = n
    stops = sum(1 for row in result.usage if row["end_s"] is not None and row["end_s"] <= horizon)
    prompt = result.tokens.get("prompt_tokens", 0)
    return Summary(
        policy=result.plan.policy,
        routing=result.plan.routing,
        gpu_seconds=gpu_s,
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


def table(summaries: list[Summary]) -> str:
    """A Markdown table, one row per policy; times in trace seconds."""
    head = "| " + " | ".join(c[0] for c in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    rows = [
        "| " + " | ".join(fmt.format(getattr(s, attr)) for _, attr, fmt in COLUMNS) + " |"
        for s in summaries
    ]
    return "\n".join([head, rule, *rows])


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
