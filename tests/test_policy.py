"""The scaling decision, table-tested: each row is one rule of DESIGN.md's scaling rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scaler.policies import STALE_AFTER_S, Observation, ScalingConfig
from scaler.policies.wakegate import PolicyState, decide

NOW = 1_000_000.0
ZERO_TO_TWO = ScalingConfig(min_replicas=0, max_replicas=2, scale_up_threshold=1, cooldown_s=60)
ONE_TO_FOUR = ScalingConfig(min_replicas=1, max_replicas=4, scale_up_threshold=2, cooldown_s=60)


def obs(queued: int = 0, in_flight: int = 0, idle_s: float | None = None) -> Observation:
    last = None if idle_s is None else NOW - idle_s
    return Observation(queued=queued, in_flight=in_flight, last_activity_at=last, observed_at=NOW)


CASES = [
    # (config, observation, current, state, expected desired, reason prefix)
    (ZERO_TO_TWO, obs(queued=1, idle_s=0), 0, PolicyState(), 1, "wake"),
    (ZERO_TO_TWO, obs(queued=20, idle_s=0), 0, PolicyState(), 2, "wake"),
    (ZERO_TO_TWO, obs(queued=1, in_flight=1, idle_s=0), 1, PolicyState(), 2, "scale up"),
    (ZERO_TO_TWO, obs(queued=9, in_flight=1, idle_s=0), 2, PolicyState(), 2, "steady"),
    (ZERO_TO_TWO, obs(idle_s=None), 0, PolicyState(), 0, "steady"),
    (ONE_TO_FOUR, obs(idle_s=None), 0, PolicyState(), 1, "bounds"),
    (ONE_TO_FOUR, obs(queued=3, in_flight=2, idle_s=0), 1, PolicyState(), 3, "scale up"),
    # Load fell below capacity just now: hold for the cooldown.
    (ZERO_TO_TWO, obs(in_flight=1, idle_s=0), 2, PolicyState(), 2, "cooldown"),
    (ZERO_TO_TWO, obs(in_flight=1, idle_s=0), 2, PolicyState(NOW - 59), 2, "cooldown"),
    (ZERO_TO_TWO, obs(in_flight=1, idle_s=0), 2, PolicyState(NOW - 60), 1, "scale down"),
    # Zero only after a whole cooldown without any request.
    (ZERO_TO_TWO, obs(idle_s=10), 1, PolicyState(NOW - 120), 1, "cooldown"),
    (ZERO_TO_TWO, obs(idle_s=60), 1, PolicyState(NOW - 60), 0, "scale to zero"),
    (ZERO_TO_TWO, obs(idle_s=10), 2, PolicyState(NOW - 120), 1, "cooldown"),
    (ONE_TO_FOUR, obs(idle_s=3600), 3, PolicyState(NOW - 60), 1, "scale down"),
    (ONE_TO_FOUR, obs(idle_s=3600), 1, PolicyState(NOW - 600), 1, "steady"),
    # Config lowered below what runs: bounds win, after the cooldown like any scale-down.
    (
        ScalingConfig(0, 1, 1, 600),
        obs(queued=5, in_flight=1, idle_s=0),
        2,
        PolicyState(),
        1,
        "bounds",
    ),
]
IDS = [
    "queued-request-at-zero-wakes-one",
    "burst-at-zero-wakes-up-to-max",
    "load-above-threshold-scales-up-at-once",
    "never-above-max",
    "idle-at-zero-stays-at-zero",
    "min-replicas-enforced-without-traffic",
    "scale-up-to-ceil-load-over-threshold",
    "load-drop-starts-cooldown",
    "load-drop-inside-cooldown-holds",
    "load-drop-after-cooldown-scales-down",
    "recent-request-keeps-last-replica",
    "idle-for-cooldown-scales-to-zero",
    "idle-but-recent-request-keeps-one",
    "scale-down-stops-at-min",
    "at-min-stays",
    "max-lowered-below-current-scales-down",
]


@pytest.mark.parametrize(
    ("config", "observed", "current", "state", "desired", "reason"), CASES, ids=IDS
)
def test_decision_table(
    config: ScalingConfig,
    observed: Observation,
    current: int,
    state: PolicyState,
    desired: int,
    reason: str,
) -> None:
    decision, _ = decide(NOW, observed, config, current, state)
    assert decision.desired == desired
    assert decision.reason.startswith(reason), decision.reason


@pytest.mark.parametrize("observed", [None, obs(idle_s=3600)], ids=["no-metrics", "stale"])
def test_missing_or_stale_metrics_hold_instead_of_scaling_to_zero(
    observed: Observation | None,
) -> None:
    if observed is not None:
        observed = Observation(0, 0, observed.last_activity_at, NOW - STALE_AFTER_S - 1)
    decision, state = decide(NOW, observed, ZERO_TO_TWO, 2, PolicyState(NOW - 3600))
    assert decision.desired == 2
    assert decision.reason.startswith("hold")
    assert state == PolicyState(NOW - 3600)


def test_cooldown_clock_starts_when_load_first_drops() -> None:
    _, state = decide(NOW, obs(in_flight=1, idle_s=0), ZERO_TO_TWO, 2, PolicyState())
    assert state.below_capacity_since == NOW
    _, later = decide(NOW + 5, obs(in_flight=1, idle_s=0), ZERO_TO_TWO, 2, state)
    assert later.below_capacity_since == NOW
    _, reset = decide(NOW + 6, obs(queued=3, idle_s=0), ZERO_TO_TWO, 2, later)
    assert reset.below_capacity_since is None


configs = st.builds(
    lambda lo, extra, thr, cd: ScalingConfig(lo, max(1, lo + extra), thr, cd),
    st.integers(0, 5),
    st.integers(0, 5),
    st.integers(1, 8),
    st.floats(0, 600),
)
observations = st.builds(
    lambda q, f, idle: Observation(q, f, None if idle is None else NOW - idle, NOW),
    st.integers(0, 100),
    st.integers(0, 100),
    st.none() | st.floats(0, 7200),
)
states = st.builds(PolicyState, st.none() | st.floats(NOW - 7200, NOW))


@given(configs, observations, st.integers(0, 12), states)
def test_invariants(
    config: ScalingConfig, observed: Observation, current: int, state: PolicyState
) -> None:
    decision, new_state = decide(NOW, observed, config, current, state)
    assert config.min_replicas <= decision.desired <= config.max_replicas
    if observed.queued > 0:
        assert decision.desired >= 1, "never zero while requests wait"
    if decision.desired < current and current <= config.max_replicas:
        since = state.below_capacity_since
        assert since is not None and NOW - since >= config.cooldown_s, (
            "never scale down inside the cooldown"
        )
    assert new_state.below_capacity_since is None or new_state.below_capacity_since <= NOW
