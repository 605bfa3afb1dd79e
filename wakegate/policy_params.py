"""The scaling policies' knobs and their defaults, by policy name.

A deployment's `scalingPolicy.params` may set only the knobs its policy reads: the gateway
checks them when the deployment is created (wakegate/spec.py) and the policies read them
(scaler/policies/*.py), so the table lives here, below both. Their ranges are in
wakegate/spec.py (POLICY_PARAM_RANGES).
"""

from __future__ import annotations

# wakegate's own policy: the time constant of the rate estimates, and whether the start-up-aware
# rule runs. The defaults are the best of the settings measured on both public traces
# (bench/README.md).
WAKEGATE: dict[str, float] = {
    "rate_window_s": 60.0,
    "startup_aware": 1.0,
    "steady_floor": 1.0,
    # > 0: hold while arrivals stay below capacity and the running replicas serve everything
    # queued now within this many seconds (FIFO: the backlog over the throughput), instead of
    # while the backlog drains net of new arrivals before a start-up. 0: off.
    "hold_wait_s": 10.0,
}

KNATIVE: dict[str, float] = {
    "stable_window_s": 60.0,
    "panic_window_s": 6.0,
    "panic_threshold": 2.0,
    "scale_to_zero_grace_s": 30.0,
    "max_scale_down_rate": 2.0,
    "max_scale_up_rate": 1000.0,
}

RAY: dict[str, float] = {
    "target_ongoing_requests": 2.0,
    "upscale_delay_s": 30.0,
    "downscale_delay_s": 600.0,
    # Negative: same as downscale_delay_s (Ray's None).
    "downscale_to_zero_delay_s": -1.0,
}

ALWAYS_ON: dict[str, float] = {}

BY_POLICY: dict[str, dict[str, float]] = {
    "wakegate": WAKEGATE,
    "knative": KNATIVE,
    "ray": RAY,
    "always-on": ALWAYS_ON,
}


def default_params(name: str) -> dict[str, float]:
    """The knobs policy `name` reads from `ScalingConfig.params`, with their defaults."""
    return dict(BY_POLICY.get(name, {}))


def known_params(name: str) -> frozenset[str]:
    return frozenset(BY_POLICY.get(name, {}))
