"""One deployment's verdict for a pass: a pure function of what was observed.

The policy says how many replicas the deployment should have (scaler/policies/), the plan
which replicas to start and drain for that (scaler/plan.py), and the demand what it asks of
the shared pool (scaler/allocator.py). No I/O and no clock: `now` comes in, the state that
the next pass needs goes out, like the policies.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from typing import Any

from scaler.allocator import Demand
from scaler.plan import (
    Backoff,
    ReplicaPlan,
    active_count,
    cancellable,
    drainable,
    plan_replicas,
    reclaimable,
)
from scaler.policies import Decision, Observation, ScalingConfig, get_policy
from wakegate.quotas import Quotas
from wakegate.store import Observed

STARTUP_SAMPLES = 5


@dataclass(frozen=True)
class DeploymentState:
    """What the loop keeps of one deployment between passes."""

    policy_name: str = ""
    policy_state: Any = None
    # Launch-to-ready seconds of the latest replicas: what a scale-up costs in time.
    startup_samples: tuple[float, ...] = ()
    backoff: Backoff = field(default_factory=Backoff)
    last_reason_kind: str = ""
    wanting_since: float | None = None  # since when it wants more replicas than it has

    def startup_s(self) -> float | None:
        return statistics.median(self.startup_samples) if self.startup_samples else None

    def started_in(self, seconds: float) -> DeploymentState:
        samples = (*self.startup_samples, seconds)[-STARTUP_SAMPLES:]
        return replace(self, startup_samples=samples)


@dataclass(frozen=True)
class Verdict:
    current: int  # replicas the policy counted
    decision: Decision
    plan: ReplicaPlan
    demand: Demand
    # Whether the deployment has anything going on (replicas, load, a start it wants, a
    # rolling update): such deployments are passed again every interval; the rest wait for
    # an event, a dirty mark or the sweep.
    active: bool


def decide(
    seen: Observed,
    state: DeploymentState,
    quotas: Quotas,
    now: float,
    units: tuple[str, int],
    reclaim_grace_s: float,
) -> tuple[Verdict, DeploymentState]:
    """The verdict for a deployment that is not being deleted (`seen.spec` is set)."""
    spec = seen.spec
    assert spec is not None
    state = replace(state, backoff=state.backoff.for_revision(spec.revision))
    active = [r for r in seen.replicas if r.state in ("starting", "ready")]
    draining = [r for r in seen.replicas if r.state == "draining"]
    current = active_count(active, spec.engine_revision)
    load = seen.load
    observation = Observation(
        queued=load.queued,
        in_flight=load.in_flight,
        last_activity_at=load.last_activity_ms / 1000 if load.last_activity_ms else None,
        observed_at=now,
        arrivals_total=load.arrivals_total,
        completions_total=load.completions_total,
        startup_s=state.startup_s(),
        slots=sum(r.concurrency for r in active),
    )
    policy_name, params = spec.scaling_policy
    policy = get_policy(policy_name)
    if state.policy_name != policy_name:
        state = replace(state, policy_name=policy_name, policy_state=policy.initial_state())
    # A quota lowered after the deployment was made bounds it from now on.
    max_replicas = spec.max_replicas
    if quotas.max_replicas is not None:
        max_replicas = min(max_replicas, quotas.max_replicas)
    config = ScalingConfig(
        min_replicas=min(spec.min_replicas, max_replicas),
        max_replicas=max_replicas,
        scale_up_threshold=spec.scale_up_threshold,
        cooldown_s=spec.cooldown_s,
        params=params,
    )
    if spec.status == "failed":
        # Stay down until the user updates the deployment; hold what is running.
        config = ScalingConfig(0, current, config.scale_up_threshold, 0)
    decision, policy_state = policy.decide(now, observation, config, current, state.policy_state)
    plan = plan_replicas(active, spec.engine_revision, decision.desired, seen.busy)
    held_back = spec.status == "failed" or state.backoff.holds(now)
    need = 0 if held_back else plan.to_start
    wanting_since = (state.wanting_since or now) if need > 0 else None
    victims = {r.id for r in plan.victims}
    guaranteed = bool(spec.config.uses_guaranteed_capacity)
    staying = [r for r in active if r.id not in victims]
    idle_s = None if observation.last_activity_at is None else now - observation.last_activity_at

    def givable(min_replicas: int) -> tuple[tuple[str, ...], ...]:
        """Idle, starting and serving replicas other deployments may take above a floor."""
        idle = reclaimable(
            staying,
            load=load.queued + load.in_flight,
            idle_s=idle_s,
            min_replicas=min_replicas,
            now=now,
            grace_s=reclaim_grace_s,
        )
        starting = cancellable(staying, idle=idle, queued=load.queued, min_replicas=min_replicas)
        serving = drainable(
            staying,
            idle=idle,
            busy=seen.busy,
            min_replicas=min_replicas,
            now=now,
            grace_s=reclaim_grace_s,
            cancellable=starting,
        )
        return idle, starting, serving

    idle, starting, serving = givable(spec.min_replicas)
    # What only min_replicas keeps: the fair-share rule may take it beyond the tenant's
    # grant (scaler/allocator.py); idle ones first, then starts, then serving ones.
    kept = {*idle, *starting, *serving}
    floor = tuple(rid for group in givable(0) for rid in group if rid not in kept)
    sku, per_replica = units
    demand = Demand(
        key=seen.key,
        tenant=spec.tenant,
        sku=sku,
        units=per_replica,
        holding=len(active) + len(draining),
        need=need,
        cold=load.queued > 0 and not active,
        queued=load.queued,
        draining=len(draining) + len(victims),
        guaranteed=guaranteed,
        reclaimable=idle,
        cancellable=starting,
        drainable=serving,
        floor=floor,
        since=wanting_since or now,
    )
    busy = bool(seen.replicas or need or load.queued or load.in_flight)
    verdict = Verdict(current, decision, plan, demand, busy or spec.status == "updating")
    kind = decision.reason.split(":")[0]
    return verdict, replace(
        state, policy_state=policy_state, wanting_since=wanting_since, last_reason_kind=kind
    )
