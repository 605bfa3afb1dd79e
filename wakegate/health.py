"""A deployment's health over a window: requests/s, tokens/s, time to first token p50/p95,
queue wait, cold starts and their latency (what its gateways saw), and replicas by state (what
the scaler sampled, wakegate/status.py). `GET /v2/deployments/{name}/health` answers it and the
status page draws it.

Each gateway adds up what its requests did in memory (router/health.py) and, once a second,
adds those counts to Redis in one pipelined call (wakegate/store.py `add_health`): one row of
counts per deployment and `BUCKET_S` bucket, every gateway (and worker) adding to the same
row, kept `RETENTION_S`. Latencies are counted in fixed histogram buckets, so rows add up and
a percentile over any number of them is a read of their sum (interpolated within its bucket,
as Prometheus's histogram_quantile does).
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from wakegate.status import HistoryPoint

# Width of a stored bucket, and how long one is kept: the longest window and a bucket more.
BUCKET_S = 10
MAX_WINDOW_S = 3600
MIN_WINDOW_S = 60
DEFAULT_WINDOW_S = 900
RETENTION_S = MAX_WINDOW_S + BUCKET_S
# A window is answered in at most this many points (steps are whole buckets).
MAX_POINTS = 120

# Upper bounds (ms) of the latency histogram's buckets; one more counts what is above.
LATENCY_BOUNDS_MS: tuple[int, ...] = (
    10, 25, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 4000, 5000,
    7500, 10_000, 15_000, 20_000, 30_000, 60_000, 120_000, 300_000,
)  # fmt: skip
_HIST = len(LATENCY_BOUNDS_MS) + 1

# One bucket's row: integer counts, summed elementwise by every writer.
REQUESTS = 0  # requests that ended (any outcome)
ERRORS = 1  # of them, those that ended with a status >= 400 (499: the client left)
TOKENS = 2  # tokens generated
COLD = 3  # requests that met no ready replica (a cold start), counted at their first token
COLD_MS = 4  # the sum of their times to first token, ms
TTFT = 5  # histogram of time to first token: _HIST counts
QUEUE = TTFT + _HIST  # histogram of queue wait: _HIST counts
ROW_LEN = QUEUE + _HIST


def empty_row() -> list[int]:
    return [0] * ROW_LEN


def latency_slot(seconds: float) -> int:
    """The histogram bucket of a latency: the first whose bound is at or above it."""
    return bisect.bisect_left(LATENCY_BOUNDS_MS, seconds * 1000.0)


def bucket_of(at_s: float) -> int:
    """The start (s since the epoch) of the bucket holding `at_s`."""
    return int(at_s // BUCKET_S) * BUCKET_S


class BadWindow(ValueError):
    pass


_WINDOW_RE = re.compile(r"(\d{1,7})([smh]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_window(raw: str | None) -> int:
    """A window in seconds: `900`, `900s`, `15m` or `1h`, within [MIN_WINDOW_S, MAX_WINDOW_S]."""
    if raw is None:
        return DEFAULT_WINDOW_S
    match = _WINDOW_RE.fullmatch(raw.strip())
    if match is None:
        raise BadWindow(f"must be seconds (900) or a duration (15m, 1h), not {raw[:40]!r}")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if not MIN_WINDOW_S <= seconds <= MAX_WINDOW_S:
        raise BadWindow(f"must be within [{MIN_WINDOW_S}, {MAX_WINDOW_S}] seconds, not {seconds}")
    return seconds


def step_of(window_s: int) -> int:
    """The points' spacing: whole buckets, at most MAX_POINTS of them in the window."""
    return BUCKET_S * max(1, math.ceil(window_s / (BUCKET_S * MAX_POINTS)))


def quantile(hist: Sequence[int], q: float) -> float | None:
    """The q-quantile (seconds) of a latency histogram, interpolated within its bucket; None
    without samples. Above the last bound it is that bound (nothing tells how far above)."""
    total = sum(hist)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(hist):
        if count and seen + count >= rank:
            if i >= len(LATENCY_BOUNDS_MS):
                return LATENCY_BOUNDS_MS[-1] / 1000.0
            low = LATENCY_BOUNDS_MS[i - 1] if i else 0
            high = LATENCY_BOUNDS_MS[i]
            return (low + (high - low) * (rank - seen) / count) / 1000.0
        seen += count
    return LATENCY_BOUNDS_MS[-1] / 1000.0


def _sum_rows(rows: Iterable[Mapping[int, int]]) -> list[int]:
    """Sparse rows (index -> count, as stored) added up into a dense one."""
    total = empty_row()
    for row in rows:
        for i, v in row.items():
            if 0 <= i < ROW_LEN:
                total[i] += v
    return total


# --- what the API answers ---------------------------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(
        extra="ignore", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class HealthTotals(_Wire):
    """Counts and latencies over a span (the whole window, or one point's step); latencies
    are null where nothing was measured."""

    requests: int
    errors: int
    tokens: int
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    queue_wait_p50_s: float | None
    queue_wait_p95_s: float | None
    cold_starts: int
    cold_start_mean_s: float | None


class HealthPoint(HealthTotals):
    """The step from `at` to `at + stepS`, with its rates."""

    at: float
    requests_per_s: float
    tokens_per_s: float


class DeploymentHealth(_Wire):
    """`GET /v2/deployments/{name}/health`: the window ending `at`, oldest point first."""

    name: str
    at: float
    window_s: int
    step_s: int
    points: list[HealthPoint]
    totals: HealthTotals
    replicas: list[HistoryPoint]  # the scaler's samples (steps), the last one now

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


def _figures(row: Sequence[int]) -> HealthTotals:
    ttft, queue = row[TTFT:QUEUE], row[QUEUE:ROW_LEN]
    cold = row[COLD]
    return HealthTotals(
        requests=row[REQUESTS],
        errors=row[ERRORS],
        tokens=row[TOKENS],
        ttft_p50_s=_round(quantile(ttft, 0.5)),
        ttft_p95_s=_round(quantile(ttft, 0.95)),
        queue_wait_p50_s=_round(quantile(queue, 0.5)),
        queue_wait_p95_s=_round(quantile(queue, 0.95)),
        cold_starts=cold,
        cold_start_mean_s=round(row[COLD_MS] / cold / 1000.0, 3) if cold else None,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def health_view(
    name: str,
    rows: Mapping[int, Mapping[int, int]],
    replicas: list[HistoryPoint],
    now: float,
    window_s: int,
) -> DeploymentHealth:
    """The window ending `now` from stored rows (bucket start -> index -> count, zeros left
    out): `window_s / step`
    points, each the sum of its buckets. The last point is the step in progress."""
    step = step_of(window_s)
    last = int(now // step) * step
    starts = [last - i * step for i in range(window_s // step - 1, -1, -1)]
    points = []
    per_step: dict[int, list[Mapping[int, int]]] = {s: [] for s in starts}
    for b, v in rows.items():
        if starts[0] <= b < last + step:
            per_step[starts[0] + (b - starts[0]) // step * step].append(v)
    for s in starts:
        figures = _figures(_sum_rows(per_step[s]))
        # The step in progress is divided by the time it has had, not its whole length.
        span = max(1.0, min(float(step), now - s))
        points.append(
            HealthPoint(
                at=float(s),
                requests_per_s=round(figures.requests / span, 3),
                tokens_per_s=round(figures.tokens / span, 3),
                **figures.model_dump(),
            )
        )
    window_rows = [v for vs in per_step.values() for v in vs]
    return DeploymentHealth(
        name=name,
        at=now,
        window_s=window_s,
        step_s=step,
        points=points,
        totals=_figures(_sum_rows(window_rows)),
        replicas=replicas,
    )
