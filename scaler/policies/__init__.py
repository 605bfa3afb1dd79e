"""Scaling policies: pure functions that say how many replicas a deployment should have.

Every policy is a module-level pair `initial_state()` and
`decide(now, observed, config, current, state) -> (Decision, new_state)` with no I/O, no clock
and no randomness: the control loop passes `now` in and keeps the returned state, so a policy
can be table-tested and replayed on traces. `current` counts replicas that are starting or
ready (not draining). A deployment picks its policy with `scalingPolicy` in its config;
`wakegate` is the default, the others are baselines for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

# Observations older than this are not trusted: hold rather than act on them.
STALE_AFTER_S = 30.0
# Above any replica count: where a policy's arithmetic gets there, it stops.
_HUGE = 1e12


@dataclass(frozen=True)
class ScalingConfig:
    min_replicas: int
    max_replicas: int
    scale_up_threshold: int  # requests (queued + in flight) one replica should carry
    cooldown_s: float
    # Policy-specific knobs (seconds and ratios), e.g. a Knative stable window.
    params: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Observation:
    queued: int
    in_flight: int
    last_activity_at: float | None  # last enqueue or completion; None: never any traffic
    observed_at: float
    # Monotonic counters of requests queued and finished (completed or gone) since the
    # deployment began, for arrival and service rates; None where unknown.
    arrivals_total: int | None = None
    completions_total: int | None = None
    # How long a new replica has lately taken to become ready; None until measured.
    startup_s: float | None = None
    # Concurrent requests the current replicas take (their engines' limits); None if unknown.
    slots: int | None = None


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str


def clamp(n: int, config: ScalingConfig) -> int:
    return max(config.min_replicas, min(config.max_replicas, n))


def is_fresh(now: float, observed: Observation | None) -> bool:
    return observed is not None and now - observed.observed_at <= STALE_AFTER_S


def hold_unobserved(current: int, config: ScalingConfig) -> Decision:
    """Without fresh metrics: keep `current` replicas (idleness cannot be told from an outage
    of the metrics path), within the bounds."""
    held = clamp(current, config)
    reason = "hold: no fresh metrics" if held == current else "bounds: no fresh metrics"
    return Decision(held, reason)


def param(config: ScalingConfig, defaults: Mapping[str, float], name: str) -> float:
    """The deployment's knob `name`, else (also where it is not finite) its default."""
    value = float(config.params.get(name, defaults[name]))
    return value if math.isfinite(value) else defaults[name]


def ceil_capped(x: float) -> int:
    """math.ceil, capped: a tiny divisor or a huge rate must not overflow."""
    return math.ceil(min(x, _HUGE))


class Policy(Protocol):
    def initial_state(self) -> Any: ...

    def decide(
        self,
        now: float,
        observed: Observation | None,
        config: ScalingConfig,
        current: int,
        state: Any,
    ) -> tuple[Decision, Any]: ...


def _registry() -> dict[str, Any]:
    from scaler.policies import always_on, knative, ray, wakegate

    return {"wakegate": wakegate, "knative": knative, "ray": ray, "always-on": always_on}


def get_policy(name: str) -> Policy:
    try:
        policy: Policy = _registry()[name]
    except KeyError:
        raise ValueError(f"unknown scaling policy {name!r}") from None
    return policy
