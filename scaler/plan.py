"""Pure steps between a policy's decision and the actuator: which replicas to start and drain
for a desired count (rolling updates included), which idle, starting or serving replicas
another deployment may reclaim, and the start-failure backoff as a value each outcome replaces."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from wakegate.store import ReplicaRecord

# Consecutive failed starts after which a deployment is marked failed.
MAX_START_FAILURES = 3
BACKOFF_MAX_S = 60.0


@dataclass(frozen=True)
class ReplicaPlan:
    to_start: int  # replicas of the current engine revision to start (before the allocator)
    victims: tuple[ReplicaRecord, ...]  # replicas to drain now
    rollout_done: bool  # a rolling update has nothing old left to replace


def active_count(active: Sequence[ReplicaRecord], engine_revision: int) -> int:
    """Replicas the policy counts: while a rolling update replaces old replicas one for one,
    the larger of the two generations."""
    outdated = sum(1 for r in active if r.revision < engine_revision)
    return max(outdated, len(active) - outdated) if outdated else len(active)


def plan_replicas(
    active: Sequence[ReplicaRecord],
    engine_revision: int,
    desired: int,
    busy: Mapping[str, int],
) -> ReplicaPlan:
    """Starts and drains so that `desired` replicas of the current engine revision run.

    `active`: starting and ready replicas; `busy`: requests in flight per replica. A rolling
    update starts one replica above `desired` (surge) and drains an old replica only once a
    new one is ready to take its place, so capacity never drops.
    """
    fresh = [r for r in active if r.revision >= engine_revision]
    outdated = [r for r in active if r.revision < engine_revision]
    fresh_ready = sum(1 for r in fresh if r.state == "ready")
    surge = 1 if outdated else 0
    to_start = max(0, min(desired - len(fresh), desired + surge - len(active)))
    retire = len(outdated) - max(0, desired - fresh_ready)
    excess = len(fresh) - desired  # without a rollout, fresh is every active replica
    retired_old = pick_victims(outdated, retire, busy)
    victims = retired_old + pick_victims(fresh, excess, busy)
    rollout_done = len(retired_old) == len(outdated) and fresh_ready >= min(desired, 1)
    return ReplicaPlan(to_start, tuple(victims), rollout_done)


def pick_victims(
    replicas: Sequence[ReplicaRecord], count: int, busy: Mapping[str, int]
) -> list[ReplicaRecord]:
    if count <= 0:
        return []
    # Not-yet-ready replicas go first (nothing to drain), then the ready ones with the fewest
    # requests in flight (their drain ends soonest and frees the GPU first), the newest first
    # among equals.
    ordered = sorted(replicas, key=lambda r: (r.state == "ready", busy.get(r.id, 0), -r.created_at))
    return ordered[:count]


def reclaimable(
    active: Sequence[ReplicaRecord],
    *,
    load: int,
    idle_s: float | None,
    min_replicas: int,
    now: float,
    grace_s: float,
) -> tuple[str, ...]:
    """Replicas kept only by the cooldown, which another deployment may reclaim: those of a
    deployment with nothing queued or in flight (`load`) and no request come or gone for at
    least `grace_s` (`idle_s`; None: never any), above its `min_replicas`, ready for at least
    `grace_s` (reserved capacity is kept by the allocator). The longest ready first.

    A replica that is merely between two requests of a serving deployment is not idle
    capacity: taking it makes its deployment pay a start-up at its next request (the
    shared-pool replay measured that churn when single idle replicas of serving deployments
    were reclaimed)."""
    if load > 0 or (idle_s is not None and idle_s < grace_s):
        return ()
    spare = len(active) - min_replicas
    if spare <= 0:
        return ()
    ready = [
        r for r in active if r.state == "ready" and r.ready_at is not None
        and now - r.ready_at >= grace_s
    ]  # fmt: skip
    ready.sort(key=lambda r: (r.ready_at or 0.0, r.id))
    return tuple(r.id for r in ready[:spare])


def cancellable(
    active: Sequence[ReplicaRecord],
    *,
    idle: Sequence[str],
    queued: int,
    min_replicas: int,
) -> tuple[str, ...]:
    """Starting (not yet ready) replicas that a cold deployment of a poorer tenant may have
    cancelled: stopped before they serve, so no request is cut and only their load time is
    lost. Never below the deployment's `min_replicas`, nor its only replica (starting or
    ready) while it has requests queued (reserved capacity is kept by the allocator); the
    newest first (the least load time lost). `idle` (reclaimable anyway) are not counted twice."""
    spare = len(active) - max(min_replicas, 1 if queued > 0 else 0) - len(idle)
    if spare <= 0:
        return ()
    starting = [r for r in active if r.state == "starting"]
    starting.sort(key=lambda r: (-r.created_at, r.id))
    return tuple(r.id for r in starting[:spare])


def drainable(
    active: Sequence[ReplicaRecord],
    *,
    idle: Sequence[str],
    busy: Mapping[str, int],
    min_replicas: int,
    now: float,
    grace_s: float,
    cancellable: Sequence[str] = (),
) -> tuple[str, ...]:
    """Serving replicas that a cold deployment of a poorer tenant may have drained (their
    requests in flight finish first): never the deployment's last one, nor below its
    `min_replicas`, nor one ready for less than `grace_s` (reserved capacity is kept by the
    allocator); the fewest requests in flight first. `idle` (reclaimable anyway) and `cancellable`
    (starting replicas, which go first) are not counted twice."""
    spare = len(active) - max(1, min_replicas) - len(idle) - len(cancellable)
    if spare <= 0:
        return ()
    serving = [
        r for r in active if r.state == "ready" and r.id not in idle
        and r.ready_at is not None and now - r.ready_at >= grace_s
    ]  # fmt: skip
    serving.sort(key=lambda r: (busy.get(r.id, 0), r.id))
    return tuple(r.id for r in serving[:spare])


@dataclass(frozen=True)
class Backoff:
    """Start failures of one deployment: replaced, never mutated, by each outcome."""

    failures: int = 0
    retry_at: float = 0.0
    # The revision that failed: an update past it starts afresh, without the backoff.
    failed_revision: int | None = None

    def after_failure(self, now: float, revision: int) -> Backoff:
        failures = self.failures + 1
        return Backoff(
            failures,
            now + self.delay_s(failures),
            revision if failures >= MAX_START_FAILURES else None,
        )

    @staticmethod
    def delay_s(failures: int) -> float:
        return min(2.0**failures, BACKOFF_MAX_S)

    @property
    def exhausted(self) -> bool:
        return self.failures >= MAX_START_FAILURES

    def holds(self, now: float) -> bool:
        """Whether starts wait for the backoff now."""
        return now < self.retry_at

    def for_revision(self, revision: int) -> Backoff:
        """An update past the failed revision gets attempts of its own."""
        if self.failed_revision is not None and revision > self.failed_revision:
            return Backoff()
        return self
