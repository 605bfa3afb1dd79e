"""wakegate's own scaling policy (DESIGN.md, "Scaling rules").

Scale up at once to ceil(load / threshold); scale down only after the load has stayed below
capacity for `cooldown_s`; scale to zero only after `cooldown_s` without any request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from scaler.policies import Decision, Observation, ScalingConfig, clamp, is_fresh


@dataclass(frozen=True)
class PolicyState:
    # Since when the load has been below what the current replicas carry; None while it is not.
    below_capacity_since: float | None = None


def initial_state() -> PolicyState:
    return PolicyState()


def decide(
    now: float,
    observed: Observation | None,
    config: ScalingConfig,
    current: int,
    state: PolicyState,
) -> tuple[Decision, PolicyState]:
    """How many replicas this deployment should have now.

    `current` counts replicas that are starting or ready, not those draining.
    """
    if observed is None or not is_fresh(now, observed):
        held = clamp(current, config)
        # Hold rather than scale down: without fresh metrics idleness cannot be told from
        # an outage of the metrics path. Bounds are still enforced.
        reason = "hold: no fresh metrics" if held == current else "bounds: no fresh metrics"
        return Decision(held, reason), state

    load = observed.queued + observed.in_flight
    wanted = math.ceil(load / config.scale_up_threshold) if load else 0
    target = clamp(wanted, config)

    if target > current:
        if wanted < target:
            reason = f"bounds: min_replicas={config.min_replicas}"
        elif current == 0:
            reason = f"wake: {load} request(s) waiting at zero replicas"
        else:
            reason = (
                f"scale up: load {load} needs {target} replica(s) at "
                f"threshold {config.scale_up_threshold}"
            )
        return Decision(target, reason), replace(state, below_capacity_since=None)

    if target == current:
        return Decision(current, "steady"), replace(state, below_capacity_since=None)

    if current > config.max_replicas:
        # max_replicas was lowered: a bound the user set applies at once, not after a cooldown.
        return (
            Decision(target, f"bounds: max_replicas={config.max_replicas}"),
            replace(state, below_capacity_since=None),
        )

    below_since = state.below_capacity_since if state.below_capacity_since is not None else now
    new_state = replace(state, below_capacity_since=below_since)
    waited = now - below_since
    if waited < config.cooldown_s:
        return (
            Decision(
                current,
                f"cooldown: load {load} below capacity for {waited:.0f}s "
                f"of {config.cooldown_s:.0f}s",
            ),
            new_state,
        )
    if target == 0:
        idle = math.inf if observed.last_activity_at is None else now - observed.last_activity_at
        if idle < config.cooldown_s:
            # Keep one replica until the deployment has been idle for a whole cooldown.
            return (
                Decision(
                    1,
                    f"cooldown: last request {idle:.0f}s ago, "
                    f"scale to zero after {config.cooldown_s:.0f}s idle",
                ),
                new_state,
            )
        reason = f"scale to zero: idle for {config.cooldown_s:.0f}s"
    else:
        reason = f"scale down: load {load} fits {target} replica(s) for {config.cooldown_s:.0f}s"
    return Decision(target, reason), replace(state, below_capacity_since=None)
