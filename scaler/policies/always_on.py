"""The always-on baseline: max_replicas all the time, whatever the load (no scale to zero)."""

from __future__ import annotations

from scaler.policies import Decision, Observation, ScalingConfig
from wakegate import policy_params

# Its knobs and their defaults (wakegate/policy_params.py).
PARAMS = policy_params.ALWAYS_ON


def initial_state() -> None:
    return None


def decide(
    now: float,
    observed: Observation | None,
    config: ScalingConfig,
    current: int,
    state: None,
) -> tuple[Decision, None]:
    """max_replicas, always; metrics are not read."""
    return Decision(config.max_replicas, f"always-on: max_replicas={config.max_replicas}"), None
