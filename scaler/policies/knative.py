"""A Knative-KPA-like baseline policy (Knative Serving, pkg/autoscaler/scaling/autoscaler.go).

The load metric is concurrency (queued + in flight), sampled on every call. Two averages are
kept: over the stable window (60 s) and over the panic window (6 s, 10% of the stable one).
The stable average decides the replica count, `ceil(avg / target)` with the target per
replica being `scale_up_threshold` (Knative's container concurrency target). When the panic
window alone asks for `panic_threshold` times (200%) the current replicas, the policy panics:
it follows the panic window and never scales down, until a whole stable window has passed
since the panic condition last held. Each decision moves at most `max_scale_up_rate` times up
and `max_scale_down_rate` times down. Zero is reached only after the stable average has been
0 for `scale_to_zero_grace_s`; until then one replica stays (Knative's KPA does the same).
"""

from __future__ import annotations

import math
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
PARAMS = policy_params.KNATIVE


@dataclass(frozen=True)
class PolicyState:
    # (observed at, concurrency), oldest first; only the longer of the two windows is kept.
    samples: tuple[tuple[float, int], ...] = ()
    # Last time the panic condition held; None while not in panic mode.
    panic_at: float | None = None
    # Since when the stable average has been 0; None while it is not.
    zero_since: float | None = None


def initial_state() -> PolicyState:
    return PolicyState()


def _average(samples: tuple[tuple[float, int], ...], now: float, window_s: float) -> float:
    # The sample taken now is always in, even for a window of 0 s.
    values = [v for t, v in samples if now - t < window_s or t == now]
    return sum(values) / len(values) if values else 0.0


def decide(
    now: float,
    observed: Observation | None,
    config: ScalingConfig,
    current: int,
    state: PolicyState,
) -> tuple[Decision, PolicyState]:
    """How many replicas this deployment should have now (`current`: starting or ready)."""
    if observed is None or not is_fresh(now, observed):
        # Without a sample the stable average is unknown: the scale-to-zero grace restarts.
        return hold_unobserved(current, config), PolicyState(state.samples, state.panic_at, None)

    stable_s = param(config, PARAMS, "stable_window_s")
    panic_s = param(config, PARAMS, "panic_window_s")
    panic_threshold = param(config, PARAMS, "panic_threshold")
    grace_s = param(config, PARAMS, "scale_to_zero_grace_s")
    down_rate = max(1.0, param(config, PARAMS, "max_scale_down_rate"))
    up_rate = max(1.0, param(config, PARAMS, "max_scale_up_rate"))
    target = config.scale_up_threshold if config.scale_up_threshold > 0 else 1

    load = observed.queued + observed.in_flight
    keep_s = max(stable_s, panic_s)
    samples = (*(s for s in state.samples if now - s[0] < keep_s and s[0] != now), (now, load))
    stable_avg = _average(samples, now, stable_s)
    panic_avg = _average(samples, now, panic_s)

    ready = max(current, 1)
    max_up = ceil_capped(up_rate * ready)
    max_down = math.floor(ready / down_rate)
    want_stable = math.ceil(stable_avg / target)
    want_panic = math.ceil(panic_avg / target)
    desired_stable = min(max(want_stable, max_down), max_up)
    desired_panic = min(max(want_panic, max_down), max_up)

    panic_at = state.panic_at
    if want_panic / ready >= panic_threshold:
        panic_at = now
    elif panic_at is not None and now - panic_at > stable_s:
        panic_at = None
    zero_since = (
        (state.zero_since if state.zero_since is not None else now) if stable_avg == 0 else None
    )
    new_state = PolicyState(samples, panic_at, zero_since)

    desired = desired_stable
    if panic_at is not None:
        # Provision for the larger of the two windows, and never scale down while panicking.
        desired = max(desired, desired_panic, current)
    if load > 0:
        desired = max(desired, 1)  # cold start fast path; never zero while requests wait
    grace_hold = False
    if desired == 0 and current > 0:
        idle_s = now - zero_since if zero_since is not None else 0.0
        if idle_s < grace_s:
            desired, grace_hold = 1, True

    clamped = clamp(desired, config)
    if clamped > current:
        if desired < clamped:
            reason = f"bounds: min_replicas={config.min_replicas}"
        elif current == 0:
            reason = f"wake: {load} request(s) waiting at zero replicas"
        elif panic_at is not None:
            reason = (
                f"panic: {panic_s:.0f}s average concurrency {panic_avg:.1f} needs "
                f"{clamped} replica(s) at target {target}"
            )
        else:
            reason = (
                f"scale up: {stable_s:.0f}s average concurrency {stable_avg:.1f} needs "
                f"{clamped} replica(s) at target {target}"
            )
    elif clamped < current:
        if desired > clamped:
            reason = f"bounds: max_replicas={config.max_replicas}"
        elif clamped == 0:
            reason = f"scale to zero: stable average 0 for the {grace_s:.0f}s grace"
        else:
            reason = (
                f"scale down: {stable_s:.0f}s average concurrency {stable_avg:.1f} fits "
                f"{clamped} replica(s) at target {target}, at most {down_rate:g}x per step"
            )
    elif panic_at is not None:
        reason = f"panic: holding {clamped} replica(s) until {stable_s:.0f}s after the burst"
    elif grace_hold:
        reason = f"cooldown: keeping 1 replica for the {grace_s:.0f}s scale-to-zero grace"
    else:
        reason = "steady"
    return Decision(clamped, reason), new_state
