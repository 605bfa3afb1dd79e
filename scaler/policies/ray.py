"""A Ray-Serve-like baseline policy (python/ray/serve/autoscaling_policy.py of Ray).

Desired replicas are `ceil((queued + in flight) / target_ongoing_requests)`, clamped to the
bounds. A change is applied only once the wish to make it has held continuously: for
`upscale_delay_s` to scale up, for `downscale_delay_s` to scale down. Ray counts control-loop
periods; here the state keeps since when each wish has held. Below two replicas, zero is
reached only from one replica, after `downscale_to_zero_delay_s` (-1: the downscale delay).
Cold start fast path: at zero replicas with any load, one replica at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from scaler.policies import (
    Decision,
    Observation,
    ScalingConfig,
    ceil_capped,
    clamp,
    hold_unobserved,
    is_fresh,
    param,
)
from wakegate import policy_params

# Its knobs and their defaults (wakegate/policy_params.py).
PARAMS = policy_params.RAY


@dataclass(frozen=True)
class PolicyState:
    # Since when scaling up (down) has been wanted without a break; None while it is not.
    upscale_wanted_since: float | None = None
    downscale_wanted_since: float | None = None


def initial_state() -> PolicyState:
    return PolicyState()


def _held(since: float | None, now: float) -> tuple[float, float]:
    """Since when a wish has held (now, where it starts now) and for how long."""
    since = now if since is None else since
    return since, now - since


def decide(
    now: float,
    observed: Observation | None,
    config: ScalingConfig,
    current: int,
    state: PolicyState,
) -> tuple[Decision, PolicyState]:
    """How many replicas this deployment should have now (`current`: starting or ready)."""
    if observed is None or not is_fresh(now, observed):
        # A wish that was not observed did not hold continuously: the delays start over.
        return hold_unobserved(current, config), PolicyState()

    load = observed.queued + observed.in_flight
    if current == 0:
        # Cold start fast path: no delay between the first request and the first replica.
        wanted = 1 if load > 0 else 0
        target = clamp(wanted, config)
        if target == 0:
            reason = "steady"
        elif wanted < target:
            reason = f"bounds: min_replicas={config.min_replicas}"
        else:
            reason = f"wake: {load} request(s) waiting at zero replicas"
        return Decision(target, reason), PolicyState()

    bounded = clamp(current, config)
    if bounded != current:
        # The user's bounds apply at once, not after a delay.
        which = "min_replicas" if bounded > current else "max_replicas"
        limit = config.min_replicas if bounded > current else config.max_replicas
        return Decision(bounded, f"bounds: {which}={limit}"), PolicyState()

    per_replica = param(config, PARAMS, "target_ongoing_requests")
    if per_replica <= 0:
        per_replica = PARAMS["target_ongoing_requests"]
    desired = clamp(ceil_capped(load / per_replica), config)

    if desired > current:
        delay_s = param(config, PARAMS, "upscale_delay_s")
        since, waited = _held(state.upscale_wanted_since, now)
        if waited >= delay_s:
            reason = (
                f"scale up: load {load} needs {desired} replica(s) at "
                f"{per_replica:g} ongoing request(s) each, wanted for {waited:.0f}s"
            )
            return Decision(desired, reason), PolicyState()
        reason = f"delay: scale up to {desired} wanted for {waited:.0f}s of {delay_s:.0f}s"
        return Decision(current, reason), PolicyState(upscale_wanted_since=since)

    if desired < current:
        since, waited = _held(state.downscale_wanted_since, now)
        if current == 1:
            delay_s = param(config, PARAMS, "downscale_to_zero_delay_s")
            if delay_s < 0:
                delay_s = param(config, PARAMS, "downscale_delay_s")
        else:
            # Zero is reached only from one replica.
            delay_s = param(config, PARAMS, "downscale_delay_s")
            desired = max(1, desired)
        if waited >= delay_s:
            if desired == 0:
                reason = f"scale to zero: no load for {waited:.0f}s"
            else:
                reason = (
                    f"scale down: load {load} fits {desired} replica(s) at "
                    f"{per_replica:g} ongoing request(s) each, for {waited:.0f}s"
                )
            return Decision(desired, reason), PolicyState()
        reason = f"delay: scale down to {desired} wanted for {waited:.0f}s of {delay_s:.0f}s"
        return Decision(current, reason), PolicyState(downscale_wanted_since=since)

    return Decision(current, "steady"), PolicyState()
