"""The baseline policies (Knative KPA, Ray Serve, always-on), table-tested over timed traces.

Each row drives a policy one decision per second over a trace of load segments, with the
replica count following every decision (replicas start and stop at once), and names the
ticks at which the desired count changed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import FrozenInstanceError
from types import MappingProxyType, ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from scaler.policies import (
    STALE_AFTER_S,
    Decision,
    Observation,
    ScalingConfig,
    always_on,
    get_policy,
    knative,
    param,
    ray,
)
from wakegate.policy_params import known_params
from wakegate.spec import ScalingPolicy

NOW = 1_000_000.0
# (seconds, load): one observation a second with this many requests in flight; load None:
# no observation at all.
Segment = tuple[int, int | None]


def config(lo: int = 0, hi: int = 10, threshold: int = 1, **params: float) -> ScalingConfig:
    return ScalingConfig(lo, hi, threshold, 60, MappingProxyType(params))


def trace(
    policy: ModuleType, cfg: ScalingConfig, current: int, segments: list[Segment]
) -> list[tuple[int, Decision]]:
    """Run `policy` once a second over `segments`; (tick, decision) for every tick."""
    state = policy.initial_state()
    out: list[tuple[int, Decision]] = []
    tick = 0
    for seconds, load in segments:
        for _ in range(seconds):
            now = NOW + tick
            observed = None if load is None else Observation(0, load, now, now)
            decision, state = policy.decide(now, observed, cfg, current, state)
            out.append((tick, decision))
            current = decision.desired
            tick += 1
    return out


def changes(current: int, decisions: list[tuple[int, Decision]]) -> list[tuple[int, int]]:
    """(tick, new desired count) wherever the desired count changed."""
    out = []
    for tick, decision in decisions:
        if decision.desired != current:
            out.append((tick, decision.desired))
            current = decision.desired
    return out


ROWS: list[
    tuple[str, ModuleType, ScalingConfig, int, list[Segment], list[tuple[int, int]], str]
] = [
    # (id, policy, config, replicas at start, trace, expected changes, last reason's kind)
    ("knative-cold-start-fast-path", knative, config(), 0, [(1, 1)], [(0, 1)], "wake"),
    (
        # 2 -> 3 in flight is 150%: no panic, but ceil(stable average) already asks for 3.
        "knative-no-panic-below-200pct-scales-on-stable-average",
        knative,
        config(),
        2,
        [(60, 2), (1, 3)],
        [(60, 3)],
        "scale up",
    ),
    (
        # Panic window average (5*1 + 10) / 6 = 2.5 -> 3 replicas, 300% of the 1 running.
        "knative-panic-on-200pct-burst",
        knative,
        config(),
        1,
        [(60, 1), (1, 10)],
        [(60, 3)],
        "panic",
    ),
    (
        "knative-no-scale-down-in-panic",
        knative,
        config(),
        1,
        [(60, 1), (1, 10), (60, 0)],
        [(60, 3)],
        "panic",
    ),
    (
        # The burst was last over the threshold at tick 60: panic ends after tick 120, then
        # scale-down halves at most (3 -> 1) and the last replica waits for the grace.
        "knative-panic-ends-a-stable-window-after-burst",
        knative,
        config(),
        1,
        [(60, 1), (1, 10), (80, 0)],
        [(60, 3), (121, 1)],
        "cooldown",
    ),
    (
        "knative-scale-down-at-most-halves-per-step",
        knative,
        config(),
        8,
        [(4, 0)],
        [(0, 4), (1, 2), (2, 1)],
        "cooldown",
    ),
    (
        "knative-scale-up-rate-limited",
        knative,
        config(max_scale_up_rate=2),
        1,
        [(4, 10)],
        [(0, 2), (1, 4), (2, 8), (3, 10)],
        "panic",
    ),
    (
        # Load stops at tick 10; the stable window is all zeros from tick 69; grace 30 s.
        "knative-grace-keeps-last-replica",
        knative,
        config(),
        1,
        [(10, 1), (89, 0)],
        [],
        "cooldown",
    ),
    (
        "knative-scale-to-zero-after-grace",
        knative,
        config(),
        1,
        [(10, 1), (90, 0)],
        [(99, 0)],
        "scale to zero",
    ),
    (
        "knative-params-shorten-stable-window-and-grace",
        knative,
        config(stable_window_s=6, scale_to_zero_grace_s=0),
        1,
        [(1, 1), (6, 0)],
        [(6, 0)],
        "scale to zero",
    ),
    ("knative-min-replicas-enforced", knative, config(lo=2, hi=4), 0, [(1, 0)], [(0, 2)], "bounds"),
    (
        "knative-max-lowered-applies-at-once",
        knative,
        config(hi=4),
        6,
        [(1, 10)],
        [(0, 4)],
        "bounds",
    ),
    ("knative-missing-metrics-hold", knative, config(), 3, [(5, None)], [], "hold"),
    ("ray-cold-start-fast-path", ray, config(), 0, [(1, 7)], [(0, 1)], "wake"),
    (
        "ray-cold-start-then-upscale-delay",
        ray,
        config(),
        0,
        [(32, 7)],
        [(0, 1), (31, 4)],
        "scale up",
    ),
    ("ray-upscale-waits-for-delay", ray, config(), 1, [(30, 6)], [], "delay"),
    ("ray-upscale-after-30s", ray, config(), 1, [(31, 6)], [(30, 3)], "scale up"),
    (
        "ray-upscale-delay-restarts-after-dip",
        ray,
        config(),
        1,
        [(20, 6), (1, 2), (20, 6)],
        [],
        "delay",
    ),
    ("ray-downscale-waits-600s", ray, config(), 4, [(600, 2)], [], "delay"),
    ("ray-downscale-after-600s", ray, config(), 4, [(601, 2)], [(600, 1)], "scale down"),
    (
        "ray-scale-to-zero-only-from-one-replica",
        ray,
        config(),
        4,
        [(1202, 0)],
        [(600, 1), (1201, 0)],
        "scale to zero",
    ),
    (
        "ray-downscale-to-zero-delay-param",
        ray,
        config(downscale_to_zero_delay_s=60),
        1,
        [(61, 0)],
        [(60, 0)],
        "scale to zero",
    ),
    (
        "ray-target-ongoing-requests-param",
        ray,
        config(target_ongoing_requests=5, upscale_delay_s=0),
        1,
        [(1, 12)],
        [(0, 3)],
        "scale up",
    ),
    (
        "ray-missing-metrics-restart-downscale-delay",
        ray,
        config(),
        2,
        [(590, 0), (1, None), (20, 0)],
        [],
        "delay",
    ),
    ("ray-missing-metrics-hold", ray, config(), 3, [(700, None)], [], "hold"),
    ("ray-min-replicas-enforced", ray, config(lo=1, hi=4), 0, [(1, 0)], [(0, 1)], "bounds"),
    ("ray-max-lowered-applies-at-once", ray, config(hi=2), 5, [(1, 20)], [(0, 2)], "bounds"),
    ("always-on-runs-max-when-idle", always_on, config(), 0, [(3, 0)], [(0, 10)], "always-on"),
    ("always-on-ignores-missing-metrics", always_on, config(), 10, [(3, None)], [], "always-on"),
]


@pytest.mark.parametrize(
    ("policy", "cfg", "current", "segments", "expected", "reason"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_trace_table(
    policy: ModuleType,
    cfg: ScalingConfig,
    current: int,
    segments: list[Segment],
    expected: list[tuple[int, int]],
    reason: str,
) -> None:
    decisions = trace(policy, cfg, current, segments)
    assert changes(current, decisions) == expected
    last = decisions[-1][1].reason
    assert last.split(":")[0] == reason, last


def test_knative_samples_stay_within_the_window() -> None:
    state = knative.initial_state()
    for tick in range(500):
        now = NOW + tick
        _, state = knative.decide(now, Observation(0, 1, now, now), config(), 1, state)
    assert len(state.samples) == 60
    assert all(NOW + 499 - t < 60 for t, _ in state.samples)


def test_state_is_immutable() -> None:
    for policy in (knative, ray):
        state = policy.initial_state()
        with pytest.raises(FrozenInstanceError):
            state.upscale_wanted_since = NOW


def test_registry_and_spec_validation() -> None:
    assert get_policy("knative") is knative
    assert get_policy("ray") is ray
    assert get_policy("always-on") is always_on
    assert known_params("knative") == frozenset(knative.PARAMS)
    assert known_params("ray") == frozenset(ray.PARAMS)
    assert known_params("always-on") == frozenset()
    assert ScalingPolicy(name="knative", params={"stable_window_s": 6}).params == {
        "stable_window_s": 6
    }
    ScalingPolicy(name="ray", params={"upscale_delay_s": 0, "downscale_to_zero_delay_s": -1})
    with pytest.raises(ValidationError, match="stable_window_s"):
        ScalingPolicy(name="ray", params={"stable_window_s": 6})
    with pytest.raises(ValidationError, match="unknown params"):
        ScalingPolicy(name="always-on", params={"anything": 1})


# --- properties, for all three policies -------------------------------------------------

KINDS = {
    "scale up",
    "scale down",
    "scale to zero",
    "wake",
    "panic",
    "hold",
    "bounds",
    "cooldown",
    "delay",
    "steady",
    "always-on",
}
POLICIES = {"knative": knative, "ray": ray, "always-on": always_on}

configs = st.builds(
    lambda lo, extra, thr: (lo, max(1, lo + extra), thr),
    st.integers(0, 5),
    st.integers(0, 5),
    st.integers(1, 8),
)
knative_params = st.fixed_dictionaries(
    {},
    optional={
        "stable_window_s": st.floats(0, 120),
        "panic_window_s": st.floats(0, 30),
        "panic_threshold": st.floats(0.5, 4),
        "scale_to_zero_grace_s": st.floats(0, 60),
        "max_scale_down_rate": st.floats(0, 4),
        "max_scale_up_rate": st.floats(0, 1000),
    },
)
ray_params = st.fixed_dictionaries(
    {},
    optional={
        "target_ongoing_requests": st.floats(0, 10),
        "upscale_delay_s": st.floats(0, 60),
        "downscale_delay_s": st.floats(0, 120),
        "downscale_to_zero_delay_s": st.floats(-1, 120),
    },
)
# (seconds since the last step, queued, in flight, freshness, replicas lost or gained)
steps = st.lists(
    st.tuples(
        st.floats(0, 90),
        st.integers(0, 50),
        st.integers(0, 50),
        st.sampled_from(["fresh", "fresh", "fresh", "stale", "missing"]),
        st.integers(-2, 2),
    ),
    min_size=1,
    max_size=40,
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[str, ScalingConfig, int, list[Any]]:
    name = draw(st.sampled_from(sorted(POLICIES)))
    lo, hi, thr = draw(configs)
    params: Mapping[str, float] = {}
    if name == "knative":
        params = draw(knative_params)
    elif name == "ray":
        params = draw(ray_params)
    cfg = ScalingConfig(lo, hi, thr, 60, MappingProxyType(dict(params)))
    return name, cfg, draw(st.integers(0, 12)), draw(steps)


@given(scenarios())
def test_invariants(scenario: tuple[str, ScalingConfig, int, list[Any]]) -> None:
    name, cfg, current, trace_steps = scenario
    policy = POLICIES[name]
    state = policy.initial_state()
    now = NOW
    for dt, queued, in_flight, freshness, drift in trace_steps:
        now += dt
        observed: Observation | None = None
        if freshness == "fresh":
            observed = Observation(queued, in_flight, now, now)
        elif freshness == "stale":
            observed = Observation(queued, in_flight, now, now - STALE_AFTER_S - 1)
        decision, state = policy.decide(now, observed, cfg, current, state)
        assert cfg.min_replicas <= decision.desired <= cfg.max_replicas
        assert decision.reason.split(":")[0] in KINDS, decision.reason
        assert re.fullmatch(r"[a-z][a-z -]*(: .+)?", decision.reason), decision.reason
        if observed is not None and freshness == "fresh" and queued > 0:
            assert decision.desired >= 1, "never zero while requests wait"
        if freshness != "fresh":
            assert decision.desired >= min(current, cfg.max_replicas), (
                "missing metrics never scale down"
            )
        if name == "knative" and freshness == "fresh":
            window = max(
                param(cfg, knative.PARAMS, "stable_window_s"),
                param(cfg, knative.PARAMS, "panic_window_s"),
            )
            assert all(now - t < window or t == now for t, _ in state.samples)
        # Replicas follow the decision, give or take a crash or a late start.
        current = max(0, decision.desired + drift)
