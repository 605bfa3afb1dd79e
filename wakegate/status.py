"""The status overview of a tenant's deployments: what the status page (`/ui`) and
`wakegate status` show, both from the gateway's `GET /v2/status`.

For each deployment: its status, replicas by state, queued and in-flight requests, the
scaler's recent scaling decisions with their reasons, recent lifecycle events, and the last
hour of queue depth and replicas. The scaler records decisions and load samples as it passes
deployments (scaler/service.py, with `sample_due` and `decision_due` below); Redis keeps
them capped (wakegate/store.py `record_status`), and `overview` reads everything in one
round trip.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from wakegate.store import StatusRow, Store

# The gateway's route of the overview (router/ui), which `wakegate status` reads.
STATUS_PATH = "/v2/status"
# The scaler samples a watched deployment's load at most this often (and at each change of
# its replicas): coarse, so that 10,000 busy deployments cost a write each per 10 s.
HISTORY_SAMPLE_S = 10.0
# The overview's history covers this much, ending now.
HISTORY_WINDOW_S = 3600
# Decisions and events shown per deployment, newest first.
RECENT = 10

REPLICA_STATES = ("starting", "ready", "draining")


class _Wire(BaseModel):
    # camelCase on the wire like the rest of /v2; readers ignore fields they do not know (the
    # overview may grow).
    model_config = ConfigDict(
        extra="ignore", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class ReplicaCounts(_Wire):
    starting: int = 0
    ready: int = 0
    draining: int = 0


class ScalingDecision(_Wire):
    """The scaler changed its mind about how many replicas a deployment should have."""

    at: float  # seconds since the epoch
    current: int
    desired: int
    reason: str


class HistoryPoint(_Wire):
    """The deployment's load from `at` until the next point (a step)."""

    at: float
    queued: int
    in_flight: int
    starting: int
    ready: int
    draining: int


class LifecycleEvent(_Wire):
    type: str
    timestamp: str  # ISO 8601, as the events endpoint has it
    revision: int
    message: str = ""


class DeploymentOverview(_Wire):
    name: str
    status: str
    base_model: str
    adapters: list[str]
    min_replicas: int
    max_replicas: int
    replicas: ReplicaCounts
    queued: int
    in_flight: int
    waiting_for_capacity: str | None = None
    last_decision: ScalingDecision | None = None
    decisions: list[ScalingDecision]  # newest first
    events: list[LifecycleEvent]  # newest first
    history: list[HistoryPoint]  # oldest first, the last HISTORY_WINDOW_S, the last point now


class Overview(_Wire):
    """A tenant's deployments, as `GET /v2/status` answers."""

    tenant: str
    at: float
    window_s: int
    deployments: list[DeploymentOverview]

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


# --- what the scaler records ------------------------------------------------------------------


def sample(at: float, queued: int, in_flight: int, states: Iterable[str]) -> list[float]:
    """A load sample as stored: [at s, queued, in flight, starting, ready, draining]."""
    counts = Counter(states)
    return [round(at, 1), queued, in_flight, *(counts[s] for s in REPLICA_STATES)]


def sample_due(last: list[float] | None, new: list[float], interval_s: float) -> bool:
    """Whether to store `new` after `last` (the previous stored sample): always on a change
    of replicas (the chart's steps are the scaler's actions), on a change of load only once
    `interval_s` has passed since `last`, never for no change."""
    if last is None:
        return True
    if new[3:] != last[3:]:
        return True
    return new[1:3] != last[1:3] and new[0] - last[0] >= interval_s


def decision_due(
    last: tuple[int, int, str] | None, current: int, desired: int, reason: str
) -> bool:
    """Whether a decision is news: a change of replicas the last recorded one did not already
    ask for (a pass repeats a decision until it is carried out: one record, not one a pass).
    The caller forgets `last` once the deployment holds what it asked for."""
    if desired == current:
        return False
    return last != (current, desired, reason.split(":")[0])


# --- the overview -----------------------------------------------------------------------------


def history_window(
    samples: Iterable[list[float]], live: HistoryPoint, window_s: float
) -> list[HistoryPoint]:
    """The stored samples within `window_s` before `live.at`, then `live`: the sample in force
    when the window opened starts it (moved to the window's start), malformed ones are
    skipped, and `live` (read just now) is the last point."""
    start = live.at - window_s
    points: list[HistoryPoint] = []
    carried: HistoryPoint | None = None
    for raw in samples:
        point = _point(raw)
        if point is None or point.at > live.at:
            continue
        if point.at <= start:
            carried = point.model_copy(update={"at": start})
        else:
            points.append(point)
    points.sort(key=lambda p: p.at)
    return [*([carried] if carried else []), *points, live]


def _point(raw: Any) -> HistoryPoint | None:
    if not isinstance(raw, list) or len(raw) != 6:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw):
        return None
    at, queued, in_flight, starting, ready, draining = raw
    return HistoryPoint(
        at=float(at),
        queued=int(queued),
        in_flight=int(in_flight),
        starting=int(starting),
        ready=int(ready),
        draining=int(draining),
    )


def _decision(raw: dict[str, Any]) -> ScalingDecision | None:
    try:
        return ScalingDecision.model_validate(raw)
    except ValueError:
        return None


def _event(raw: dict[str, Any]) -> LifecycleEvent:
    return LifecycleEvent(
        type=str(raw.get("eventType", "")),
        timestamp=str(raw.get("timestamp", "")),
        revision=int(raw.get("revision", 0)),
        message=str(raw.get("message", "")),
    )


def deployment_overview(row: StatusRow, now: float, window_s: float) -> DeploymentOverview:
    spec = row.spec
    counts = Counter(r.state for r in row.replicas)
    replicas = ReplicaCounts(**{s: counts[s] for s in REPLICA_STATES})
    live = HistoryPoint(at=now, queued=row.queued, in_flight=row.in_flight, **replicas.model_dump())
    decisions = [d for d in map(_decision, reversed(row.decisions)) if d is not None]
    wait = row.waiting or {}
    return DeploymentOverview(
        name=spec.name,
        status=spec.status,
        base_model=spec.base_model,
        adapters=list(spec.config.preloaded_adapters or ()),
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        replicas=replicas,
        queued=row.queued,
        in_flight=row.in_flight,
        waiting_for_capacity=str(wait.get("reason") or "waiting") if row.waiting else None,
        last_decision=decisions[0] if decisions else None,
        decisions=decisions[:RECENT],
        events=[_event(e) for e in reversed(row.events)][:RECENT],
        history=history_window(row.history, live, window_s),
    )


async def overview(
    store: Store, tenant: str, now: float, window_s: float = HISTORY_WINDOW_S
) -> Overview:
    """The tenant's deployments (deleting ones too, until they are gone), by name."""
    keys = await store.deployment_keys(tenant)
    rows = await store.status_rows(keys, RECENT)
    return Overview(
        tenant=tenant,
        at=now,
        window_s=int(window_s),
        deployments=[deployment_overview(row, now, window_s) for row in rows],
    )
