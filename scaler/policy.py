"""The scaling decision: a pure function of time, observed load, config and replica counts.

No I/O, no clock, no randomness: the control loop passes `now` in and keeps the returned
`PolicyState` for the next call, so the rules can be table-tested and replayed on traces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

# Observations older than this are not trusted: hold rather than act on them.
STALE_AFTER_S = 30.0


@dataclass(frozen=True)
class ScalingConfig:
    min_replicas: int
    max_replicas: int
    scale_up_threshold: int  # requests (queued + in flight) one replica should carry
    cooldown_s: float


@dataclass(frozen=True)
class Observation:
    queued: int
    in_flight: int
    last_activity_at: float | None  # last enqueue or completion; None: never any traffic
    observed_at: float


@dataclass(frozen=True)
class PolicyState:
    # Since when the load has been below what the current replicas carry; None while it is not.
    below_capacity_since: float | None = None


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str


def _clamp(n: int, config: ScalingConfig) -> int:
    return max(config.min_replicas, min(config.max_replicas, n))


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
    if observed is None or now - observed.observed_at > STALE_AFTER_S:
        held = _clamp(current, config)
        # Hold rather than scale down: without fresh metrics idleness cannot be told from
        # an outage of the metrics path. Bounds are still enforced.
        reason = "hold: no fresh metrics" if held == current else "bounds: no fresh metrics"
        return Decision(held, reason), state

    load = observed.queued + observed.in_flight
    wanted = math.ceil(load / config.scale_up_threshold) if load else 0
    target = _clamp(wanted, config)

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
