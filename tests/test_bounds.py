"""Every numeric deployment field has a finite upper bound, whatever the quotas."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from harness import Stack, run_async, wait_until
from test_control_plane import names

from wakegate.policy_params import default_params
from wakegate.spec import (
    POLICY_PARAM_RANGES,
    ConfigUpdate,
    DeploymentConfig,
    DeploymentSpec,
    InvalidSpec,
    merge_config,
    parse_create,
    parse_update,
)
from wakegate.store import Store

BIG = 10**400  # an int JSON carries and no float holds


def create(**config: Any) -> dict[str, Any]:
    return {"name": "ok-name", "config": {"baseModel": "sim-llm", **config}}


def policy(name: str, **params: Any) -> dict[str, Any]:
    return {"scalingPolicy": {"name": name, "params": params}}


OUT_OF_BOUNDS = [
    ("min-replicas-above-1000", create(minReplicas=1001, maxReplicas=1001), "config.minReplicas"),
    ("max-replicas-above-1000", create(maxReplicas=1001), "config.maxReplicas"),
    ("max-replicas-huge", create(maxReplicas=BIG), "config.maxReplicas"),
    ("cooldown-above-a-week", create(cooldownTime=604_801), "config.cooldownTime"),
    ("cooldown-huge", create(cooldownTime=BIG), "config.cooldownTime"),
    (
        "threshold-above-10000",
        create(scaleUpRequestThreshold=10_001),
        "config.scaleUpRequestThreshold",
    ),
    ("total-tokens-above-2mi", create(maxTotalTokens=2_097_153), "config.maxTotalTokens"),
    (
        "total-tokens-above-the-context-window",
        create(maxTotalTokens=262_145),
        "config.maxTotalTokens",
    ),
    (
        "total-tokens-above-gemmas-32k",
        create(baseModel="gemma-3-270m", maxTotalTokens=32_769),
        "config.maxTotalTokens",
    ),
    (
        "batched-tokens-above-2mi",
        create(maxNumBatchedTokens=2_097_153),
        "config.maxNumBatchedTokens",
    ),
    (
        "speculation-batch-above-4096",
        create(speculationDisableByBatchSize=4097),
        "config.speculationDisableByBatchSize",
    ),
    ("queue-above-a-million", create(maxQueueLength=1_000_001), "config.maxQueueLength"),
    ("queue-zero", create(maxQueueLength=0), "config.maxQueueLength"),
    (
        "policy-param-nan",
        create(**policy("wakegate", rate_window_s=float("nan"))),
        "config.scalingPolicy.params.rate_window_s",
    ),
    (
        "policy-param-infinite",
        create(**policy("wakegate", hold_wait_s=float("inf"))),
        "config.scalingPolicy.params.hold_wait_s",
    ),
    (
        "policy-duration-negative",
        create(**policy("wakegate", rate_window_s=-5)),
        "config.scalingPolicy.params.rate_window_s",
    ),
    (
        "policy-duration-1e300",
        create(**policy("knative", stable_window_s=1e300)),
        "config.scalingPolicy.params.stable_window_s",
    ),
    (
        "policy-duration-huge-int",
        create(**policy("ray", upscale_delay_s=BIG)),
        "config.scalingPolicy.params.upscale_delay_s",
    ),
    (
        "policy-switch-above-one",
        create(**policy("wakegate", startup_aware=2)),
        "config.scalingPolicy.params.startup_aware",
    ),
    (
        "policy-ratio-huge",
        create(**policy("knative", panic_threshold=1e9)),
        "config.scalingPolicy.params.panic_threshold",
    ),
    (
        "ray-delay-below-its-none",
        create(**policy("ray", downscale_to_zero_delay_s=-2)),
        "config.scalingPolicy.params.downscale_to_zero_delay_s",
    ),
]


@pytest.mark.parametrize(
    ("body", "field"),
    [(b, f) for _, b, f in OUT_OF_BOUNDS],
    ids=[i for i, _, _ in OUT_OF_BOUNDS],
)
def test_a_value_beyond_its_bound_is_refused_naming_the_field(body: Any, field: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        parse_create(body)
    assert refused.value.field == field


def test_an_update_beyond_a_bound_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidSpec) as refused:
        parse_update({"config": {"cooldownTime": BIG}})
    assert refused.value.field == "config.cooldownTime"


@pytest.mark.parametrize(
    "update",
    [{"maxTotalTokens": 262_145}, {"baseModel": "gemma-3-270m"}],
    ids=["tokens-above-the-window", "model-with-a-smaller-window"],
)
def test_an_update_leaving_max_total_tokens_above_the_context_window_is_refused(
    update: dict[str, Any],
) -> None:
    stored = DeploymentConfig(base_model="sim-llm", max_total_tokens=100_000)
    with pytest.raises(InvalidSpec) as refused:
        merge_config(stored, parse_update({"config": update}).config or ConfigUpdate())
    assert refused.value.field == "config.maxTotalTokens"


AT_THE_BOUNDS = [
    ("replicas-1000", create(minReplicas=1000, maxReplicas=1000)),
    ("cooldown-a-week", create(cooldownTime=604_800)),
    # Scale to zero as soon as idle: flapping by choice (the replay tool compresses to it).
    ("cooldown-zero", create(cooldownTime=0)),
    ("threshold-10000", create(scaleUpRequestThreshold=10_000)),
    # The replay tool's setting: the sim model's whole context window.
    ("replay-total-tokens", create(maxTotalTokens=262_144)),
    ("gemmas-whole-32k", create(baseModel="gemma-3-270m", maxTotalTokens=32_768)),
    ("batched-tokens-2mi", create(maxNumBatchedTokens=2_097_152)),
    ("speculation-batch-4096", create(speculationDisableByBatchSize=4096)),
    ("queue-a-million", create(maxQueueLength=1_000_000)),
    ("ray-none-delay", create(**policy("ray", downscale_to_zero_delay_s=-1))),
    ("knative-defaults", create(**policy("knative", **default_params("knative")))),
    ("ray-defaults", create(**policy("ray", **default_params("ray")))),
    ("wakegate-defaults", create(**policy("wakegate", **default_params("wakegate")))),
]


@pytest.mark.parametrize("body", [b for _, b in AT_THE_BOUNDS], ids=[i for i, _ in AT_THE_BOUNDS])
def test_values_at_their_bounds_and_every_policy_default_are_accepted(body: Any) -> None:
    parse_create(body)


def test_every_policy_knob_has_a_range() -> None:
    for name in ("wakegate", "knative", "ray", "always-on"):
        assert set(default_params(name)) <= set(POLICY_PARAM_RANGES), name


@pytest.mark.parametrize(
    "raw",
    [
        b'{"name": "nan-llm", "config": {"baseModel": "sim-llm", "scalingPolicy": '
        b'{"name": "wakegate", "params": {"rate_window_s": NaN}}}}',
        b'{"name": "inf-llm", "config": {"baseModel": "sim-llm", "cooldownTime": Infinity}}',
        b'{"name": "ninf-llm", "config": {"baseModel": "sim-llm", "cooldownTime": -Infinity}}',
    ],
    ids=["nan", "infinity", "minus-infinity"],
)
def test_non_json_numbers_in_a_request_are_a_400_naming_the_body(stack: Stack, raw: bytes) -> None:
    before = names(stack)
    r = stack.api(
        "POST", "/v2/deployments", content=raw, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "body"
    assert names(stack) == before


def test_out_of_bounds_values_over_http_are_400_and_store_nothing(stack: Stack, name: str) -> None:
    before = names(stack)
    huge = b'{"name": "%s", "config": {"baseModel": "sim-llm", "cooldownTime": 1%s}}' % (
        name.encode(),
        b"0" * 400,
    )
    r = stack.api(
        "POST", "/v2/deployments", content=huge, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "config.cooldownTime"
    body = {"name": name, "config": {"baseModel": "sim-llm", **policy("ray", upscale_delay_s=-1)}}
    r = stack.api("POST", "/v2/deployments", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "config.scalingPolicy.params.upscale_delay_s"
    assert names(stack) == before

    stack.create(name, baseModel="sim-llm")
    stored = stack.api("GET", f"/v2/deployments/{name}").json()["data"]
    r = stack.api("PUT", f"/v2/deployments/{name}", json={"config": {"maxReplicas": 10**12}})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "config.maxReplicas"
    # Within the field's bound (2 Mi) but beyond the model's context window.
    r = stack.api("PUT", f"/v2/deployments/{name}", json={"config": {"maxTotalTokens": 2**21}})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "config.maxTotalTokens"
    assert stack.api("GET", f"/v2/deployments/{name}").json()["data"] == stored
    stack.delete(name)


def test_a_deployment_whose_pass_fails_does_not_stop_the_others(
    make_stack: Callable[..., Stack], name: str
) -> None:
    """One deployment's error is logged and retried; the rest of the pass goes on (here its
    base model left the catalogue: a models-file entry removed since it was created)."""
    stack = make_stack(backend="sim", sim_pool="cpu=4", mqtt=False)
    broken, healthy = f"{name}-broken", f"{name}-healthy"
    now = time.time()
    config = {"base_model": "retired-model", "accelerator": "cpu", "min_replicas": 1}
    spec = DeploymentSpec(
        stack.tenant, broken, "u", None, DeploymentConfig.from_dict(config), "ready", 1, now, now
    )

    async def store_broken() -> None:
        store = Store.from_url(stack.redis_url)
        try:
            assert await store.create_deployment(spec, [])
        finally:
            await store.close()

    run_async(store_broken())
    # Sorted first: the same pass reaches the broken deployment before the healthy one.
    assert broken < healthy
    stack.create(healthy, baseModel="sim-llm", accelerator="cpu", minReplicas=1,
                 customArgs=["--load-s", "0.1"])  # fmt: skip
    wait_until(lambda: stack.ready_replicas(healthy) == 1, 60, "the healthy deployment's replica")
    wait_until(
        lambda: f"{stack.tenant}/{broken}: pass failed" in stack.scalers[0].log.read_text(),
        30,
        "the broken deployment's error in the scaler log",
    )
    assert all(s.alive() for s in stack.scalers)
