"""The scaling decision, table-tested: each row is one rule of DESIGN.md's scaling rules."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scaler.policies import STALE_AFTER_S, Observation, ScalingConfig
from scaler.policies.wakegate import PolicyState, Rates, decide

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


knobs = st.fixed_dictionaries(
    {},
    optional={
        "hold_wait_s": st.floats(0, 120),
        "rate_window_s": st.floats(0, 600),
        "startup_aware": st.sampled_from([0.0, 1.0]),
        "steady_floor": st.sampled_from([0.0, 1.0]),
    },
)
configs = st.builds(
    lambda lo, extra, thr, cd, params: ScalingConfig(lo, max(1, lo + extra), thr, cd, params),
    st.integers(0, 5),
    st.integers(0, 5),
    st.integers(1, 8),
    st.floats(0, 600),
    knobs,
)
observations = st.builds(
    lambda q, f, idle, counts, startup, slots: Observation(
        q, f, None if idle is None else NOW - idle, NOW, counts[0], counts[1], startup, slots
    ),
    st.integers(0, 100),
    st.integers(0, 100),
    st.none() | st.floats(0, 7200),
    st.just((None, None)) | st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
    st.none() | st.floats(0, 600),
    st.none() | st.integers(0, 200),
)
rates = st.none() | st.builds(
    Rates,
    st.floats(NOW - 60, NOW),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.none() | st.floats(0, 1000),
    st.none() | st.floats(0, 1000),
    st.none() | st.floats(0, 100),
)
states = st.builds(
    PolicyState,
    st.none() | st.floats(NOW - 7200, NOW),
    rates,
    st.none() | st.floats(NOW - 7200, NOW),
)


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
        waited = 0.0 if since is None else NOW - since
        assert waited >= config.cooldown_s, "never scale down inside the cooldown"
    assert new_state.below_capacity_since is None or new_state.below_capacity_since <= NOW


# --- start-up-aware scale-up ------------------------------------------------------------------

# Before the burst: 2 requests/s arriving and served, one request in service on average, so a
# request holds a slot for 0.5 s and one replica of 16 slots serves 32 requests/s.
CALM = Rates(at=NOW - 1, arrivals_total=100, completions_total=100, arrival_rate=2.0,
             service_rate=2.0, in_flight=1.0)  # fmt: skip


def burst(queued: int, startup_s: float | None = 30.0) -> Observation:
    return Observation(
        queued=queued, in_flight=16, last_activity_at=NOW, observed_at=NOW,
        arrivals_total=156, completions_total=102, startup_s=startup_s,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("observed", "baseline", "params", "desired", "reason"),
    [
        (burst(40), CALM, {}, 1, "burst"),
        (burst(2000), CALM, {}, 2, "scale up"),
        (burst(40, startup_s=None), CALM, {}, 2, "scale up"),
        (burst(40), CALM, {"startup_aware": 0.0}, 2, "scale up"),
        (burst(40), replace(CALM, arrival_rate=40.0), {}, 2, "scale up"),
        (burst(40), replace(CALM, service_rate=0.0), {}, 2, "scale up"),
        (burst(40), None, {}, 2, "scale up"),
        (burst(40), replace(CALM, in_flight=0.0), {}, 2, "scale up"),
        (burst(100), replace(CALM, arrival_rate=30.0), {"hold_wait_s": 0.0}, 2, "scale up"),
        (burst(100), replace(CALM, arrival_rate=30.0), {}, 1, "burst"),
        (burst(400), replace(CALM, arrival_rate=30.0), {}, 2, "scale up"),
        (burst(100), replace(CALM, arrival_rate=30.0), {"hold_wait_s": 2.0}, 2, "scale up"),
    ],
    ids=[
        "burst-that-drains-before-a-startup-holds",
        "backlog-longer-than-a-startup-scales-up",
        "unknown-startup-time-scales-up",
        "startup-awareness-off-scales-up",
        "arrivals-above-capacity-scale-up",
        "no-completions-yet-scales-up",
        "no-rate-history-scales-up",
        "nothing-seen-in-service-scales-up",
        "without-a-wait-budget-a-near-capacity-backlog-that-drains-slowly-scales-up",
        "a-backlog-served-within-the-wait-budget-holds",
        "a-backlog-beyond-the-wait-budget-scales-up",
        "a-smaller-wait-budget-scales-up-sooner",
    ],
)
def test_startup_aware_scale_up(
    observed: Observation,
    baseline: Rates | None,
    params: dict[str, float],
    desired: int,
    reason: str,
) -> None:
    config = ScalingConfig(0, 2, 16, 60, params=params)
    decision, state = decide(NOW, observed, config, 1, PolicyState(rates=baseline))
    assert decision.desired == desired
    assert decision.reason.startswith(reason), decision.reason
    assert state.below_capacity_since is None


def test_rates_follow_the_counters() -> None:
    config = ScalingConfig(0, 2, 16, 60, params={"rate_window_s": 1.0})
    state = PolicyState()
    arrivals = completions = 0
    for step in range(1, 41):
        arrivals, completions = arrivals + 5, completions + 5  # 10 requests/s at 0.5 s steps
        observed = Observation(0, 3, NOW, NOW + step / 2, arrivals, completions, 30.0)
        _, state = decide(NOW + step / 2, observed, config, 1, state)
    assert state.rates is not None
    assert state.rates.arrival_rate == pytest.approx(10.0, rel=0.01)
    assert state.rates.service_rate == pytest.approx(10.0, rel=0.01)
    assert state.rates.service_time_s() == pytest.approx(0.3, rel=0.01)


# Demand measured over the rate window: 2 requests/s for 10 s each = 20 concurrent.
BUSY = Rates(at=NOW - 1, arrivals_total=100, completions_total=100, arrival_rate=2.0,
             service_rate=2.0, in_flight=20.0)  # fmt: skip


@pytest.mark.parametrize(
    ("current", "desired", "reason"),
    [(3, 2, "scale down"), (2, 2, "steady")],
    ids=["dip-scales-down-only-to-what-demand-needs", "dip-below-steady-demand-holds"],
)
def test_steady_floor(current: int, desired: int, reason: str) -> None:
    config = ScalingConfig(0, 4, 16, 60)
    observed = Observation(0, 5, NOW, NOW, 100, 100, 30.0)  # a dip: 5 in flight
    state = PolicyState(below_capacity_since=NOW - 61, rates=BUSY)
    decision, _ = decide(NOW, observed, config, current, state)
    assert (decision.desired, decision.reason.split(":")[0]) == (desired, reason)


@pytest.mark.parametrize(
    ("idle_s", "desired", "reason"),
    [(5, 2, "scale down"), (61, 1, "scale down")],
    ids=["requests-still-coming-floor-keeps-two", "load-stopped-for-a-cooldown-floor-lets-go"],
)
def test_steady_floor_ends_when_the_load_has_stopped(
    idle_s: float, desired: int, reason: str
) -> None:
    """With min_replicas 1 the scale-to-zero rule never runs; the rate estimates still show
    the busy past, but a whole cooldown without any request means the load has stopped."""
    config = ScalingConfig(1, 4, 16, 60)
    observed = Observation(0, 0, NOW - idle_s, NOW, 100, 100, 30.0)
    state = PolicyState(below_capacity_since=NOW - 61, rates=BUSY)
    decision, _ = decide(NOW, observed, config, 3, state)
    assert (decision.desired, decision.reason.split(":")[0]) == (desired, reason)


def test_a_hold_that_outlasts_a_startup_time_scales_up() -> None:
    """A queue the running replicas keep serving but never clear (a sustained load) is not a
    burst: once it has been held for a start-up time, the policy scales up."""
    config = ScalingConfig(0, 2, 16, 60)
    state = PolicyState(rates=CALM)
    for t, desired in ((0, 1), (10, 1), (31, 2)):
        observed = replace(burst(40), observed_at=NOW + t, last_activity_at=NOW + t)
        decision, state = decide(NOW + t, observed, config, 1, replace(state, rates=CALM))
        assert decision.desired == desired, (t, decision.reason)
    assert "did not clear" in decision.reason
    assert state.holding_since is None
