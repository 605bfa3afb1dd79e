"""wakegate's own scaling policy (DESIGN.md, "Scaling rules").

Scale up at once to ceil(load / threshold); scale down only after the load has stayed below
capacity for `cooldown_s`; scale to zero only after `cooldown_s` without any request.

Steady floor: a scale-down never goes below what the measured demand needs (mean concurrency
from the arrival rate and service time, Little's law), so a dip in a steady load does not
release a replica that the next minute needs again. After a whole cooldown without any
request the load has stopped, and the floor no longer applies.

Startup-aware scale-up: a new replica only helps the requests still waiting when it becomes
ready. When arrivals stay below what the running replicas serve and those replicas get through
everything queued now within a wait budget (`hold_wait_s`, 10 s, and never more than a start-up
time, `startup_s` as measured lately), the policy holds: the new replica would cost GPU time
for the whole cooldown and serve little. A queue that keeps growing, or one too long for the
budget, scales up at once; a queue still there a start-up time into a hold scales up too.
With `hold_wait_s=0` the budget is the start-up time, net of the arrivals meanwhile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from scaler.policies import (
    Decision,
    Observation,
    ScalingConfig,
    clamp,
    hold_unobserved,
    is_fresh,
)
from wakegate import policy_params

# Its knobs and their defaults (wakegate/policy_params.py).
PARAMS = policy_params.WAKEGATE


@dataclass(frozen=True)
class Rates:
    """Exponentially weighted traffic estimates: requests per second and requests in service."""

    at: float
    arrivals_total: int
    completions_total: int
    arrival_rate: float | None = None
    service_rate: float | None = None
    in_flight: float | None = None

    def service_time_s(self) -> float | None:
        """Mean time a request holds a slot (Little's law), once there has been traffic."""
        if not self.service_rate or self.in_flight is None or self.service_rate < 1e-3:
            return None
        if self.in_flight <= 0:
            return None  # completions with nothing seen in service: no usable estimate
        return self.in_flight / self.service_rate


@dataclass(frozen=True)
class PolicyState:
    # Since when the load has been below what the current replicas carry; None while it is not.
    below_capacity_since: float | None = None
    rates: Rates | None = None
    # Since when a scale-up has been held for a burst (start-up-aware rule); None when not.
    holding_since: float | None = None


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
        return hold_unobserved(current, config), state

    baseline = state.rates
    # Every outcome but another hold ends a hold.
    holding_since = state.holding_since
    state = replace(
        state, rates=_update_rates(now, observed, state.rates, config), holding_since=None
    )
    load = observed.queued + observed.in_flight
    wanted = math.ceil(load / config.scale_up_threshold) if load else 0
    target = clamp(wanted, config)

    if target > current:
        if wanted < target or current < config.min_replicas:
            reason = f"bounds: min_replicas={config.min_replicas}"
        elif current == 0:
            reason = f"wake: {load} request(s) waiting at zero replicas"
        else:
            drain_s = _drains_before_startup(observed, baseline, current, config)
            since = now if holding_since is None else holding_since
            # A hold bets that the queue is gone before a new replica could be ready; a queue
            # still there a start-up time later lost the bet (a sustained load, not a burst).
            if drain_s is not None and now - since < (observed.startup_s or 0.0):
                return (
                    Decision(
                        current,
                        f"burst: queue of {observed.queued} drains in ~{drain_s:.1f}s, before "
                        f"a new replica could be ready (~{observed.startup_s:.0f}s)",
                    ),
                    replace(state, below_capacity_since=None, holding_since=since),
                )
            reason = (
                f"scale up: load {load} needs {target} replica(s) at "
                f"threshold {config.scale_up_threshold}"
            )
            if drain_s is not None:
                reason += f" (a queue held for {now - since:.0f}s did not clear)"
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
    idle = math.inf if observed.last_activity_at is None else now - observed.last_activity_at
    if target == 0:
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
        steady = _steady_replicas(state.rates, config)
        # The floor judges dips in a load that goes on. Nothing in service and no request come
        # or gone for a whole cooldown: the load has stopped, and the slowly decaying rate
        # estimates must not keep replicas that min_replicas does not ask for.
        stopped = load == 0 and idle >= config.cooldown_s
        if steady is not None and steady > target and not stopped:
            # The load dipped, but the demand measured over the rate window (arrival rate x
            # service time) would bring it straight back: keep what it needs, no oscillation.
            if steady >= current:
                return (
                    Decision(current, f"steady: demand still needs {current} replica(s)"),
                    new_state,
                )
            target = steady
        reason = f"scale down: load {load} fits {target} replica(s) for {config.cooldown_s:.0f}s"
    return Decision(target, reason), replace(state, below_capacity_since=None)


def _update_rates(
    now: float, observed: Observation, rates: Rates | None, config: ScalingConfig
) -> Rates | None:
    if observed.arrivals_total is None or observed.completions_total is None:
        return None
    if rates is None or now <= rates.at:
        return Rates(now, observed.arrivals_total, observed.completions_total)
    dt = now - rates.at
    tau = max(config.params.get("rate_window_s", PARAMS["rate_window_s"]), 1e-6)
    alpha = 1.0 - math.exp(-dt / tau)

    def ewma(previous: float | None, sample: float) -> float:
        return sample if previous is None else previous + alpha * (sample - previous)

    return Rates(
        now,
        observed.arrivals_total,
        observed.completions_total,
        ewma(rates.arrival_rate, max(0, observed.arrivals_total - rates.arrivals_total) / dt),
        ewma(rates.service_rate, max(0, observed.completions_total - rates.completions_total) / dt),
        ewma(rates.in_flight, float(observed.in_flight)),
    )


def _steady_replicas(rates: Rates | None, config: ScalingConfig) -> int | None:
    """Replicas the measured demand needs: mean concurrency (Little's law) over the
    threshold; None while the rates are unknown or the floor is switched off."""
    if not config.params.get("steady_floor", PARAMS["steady_floor"]) or rates is None:
        return None
    service_time = rates.service_time_s()
    if rates.arrival_rate is None or service_time is None:
        return None
    demand = rates.arrival_rate * service_time
    return clamp(max(1, math.ceil(demand / config.scale_up_threshold)), config)


def _drains_before_startup(
    observed: Observation, baseline: Rates | None, current: int, config: ScalingConfig
) -> float | None:
    """Seconds the running replicas need to clear the queue, when that beats a start-up.

    Capacity is what `current` replicas serve per second (slots / mean service time); future
    arrivals are projected at the rate seen before this observation, since the burst being
    judged is already in the queue.
    """
    if not config.params.get("startup_aware", PARAMS["startup_aware"]):
        return None
    if observed.startup_s is None or baseline is None or baseline.arrival_rate is None:
        return None
    service_time = baseline.service_time_s()
    if service_time is None:
        return None
    slots = observed.slots if observed.slots is not None else current * config.scale_up_threshold
    capacity_rate = slots / service_time
    net = capacity_rate - baseline.arrival_rate
    if net <= 0:
        return None  # the queue grows: only more replicas help
    hold_wait_s = config.params.get("hold_wait_s", PARAMS["hold_wait_s"])
    if hold_wait_s > 0:
        backlog_s = observed.queued / capacity_rate
        return backlog_s if backlog_s < min(hold_wait_s, observed.startup_s) else None
    drain_s = observed.queued / net
    return drain_s if drain_s < observed.startup_s else None
