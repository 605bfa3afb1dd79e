"""Control plane over HTTP against the shared stack: CRUD, events, auth and bad input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from harness import Stack, wait_until

SDK_CREATE_KEYS = [
    "baseModel",
    "customArgs",
    "cooldownTime",
    "hfToken",
    "minReplicas",
    "maxReplicas",
    "scaleUpRequestThreshold",
    "maxTotalTokens",
    "loraxImageTag",
    "requestLoggingEnabled",
    "directIngress",
    "preloadedAdapters",
    "speculator",
    "prefixCaching",
    "backend",
    "disableAdapters",
    "usesGuaranteedCapacity",
    "chunkedPrefill",
    "speculationDisableByBatchSize",
    "maxNumBatchedTokens",
    "cacheModel",
    "mergeAdapter",
    "computeSpec",
    "quantization",
    "accelerator",
]


def full_config(**values: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = dict.fromkeys(SDK_CREATE_KEYS)
    cfg.update(values)
    return cfg


def names(stack: Stack) -> list[str]:
    r = stack.api("GET", "/v2/deployments")
    assert r.status_code == 200
    return sorted(d["name"] for d in r.json()["data"])


def test_every_config_field_is_stored_and_shown_back_except_the_secret(
    stack: Stack, name: str
) -> None:
    cfg = full_config(
        baseModel="gemma-3-270m",
        customArgs=["--n_threads", "1"],
        cooldownTime=120,
        hfToken="hf_secret",
        minReplicas=0,
        maxReplicas=2,
        scaleUpRequestThreshold=3,
        maxTotalTokens=2048,
        loraxImageTag="v1",
        requestLoggingEnabled=True,
        directIngress=False,
        preloadedAdapters=["a/1"],
        speculator=None,
        prefixCaching=True,
        backend="v2",
        disableAdapters=False,
        usesGuaranteedCapacity=False,
        chunkedPrefill=True,
        speculationDisableByBatchSize=8,
        maxNumBatchedTokens=512,
        cacheModel=True,
        mergeAdapter=False,
        computeSpec={"requests": {"inference": {"sku": "a10_24gb"}}, "region": None},
        accelerator=None,
    )
    r = stack.api("POST", "/v2/deployments", json={"name": name, "config": cfg, "description": "d"})
    assert r.status_code == 200, r.text
    got = stack.api("GET", f"/v2/deployments/{name}").json()["data"]
    shown = got["config"]
    for key, value in cfg.items():
        if key != "hfToken" and value is not None:
            assert shown[key] == value, key
    assert "hfToken" not in shown
    assert got["accelerator"] == {"id": "a10_24gb_100"}
    assert got["currentReplicas"] == 0
    assert got["description"] == "d"
    stack.delete(name)


def test_update_treats_null_as_unchanged(stack: Stack, name: str) -> None:
    stack.create(name, minReplicas=0, maxReplicas=1, cooldownTime=77)
    update = {k: None for k in SDK_CREATE_KEYS[:22]}
    update["maxReplicas"] = 3
    r = stack.api("PUT", f"/v2/deployments/{name}", json={"config": update})
    assert r.status_code == 200, r.text
    cfg = stack.api("GET", f"/v2/deployments/{name}").json()["data"]["config"]
    assert cfg["maxReplicas"] == 3
    assert cfg["cooldownTime"] == 77
    assert cfg["baseModel"] == "gemma-3-270m"
    events = stack.api("GET", f"/llms/{name}/events", params={"detailed": "false"}).json()
    assert [e["eventType"] for e in events["ComputeEvents"]] == ["Updating", "Ready"]
    stack.delete(name)


def test_create_is_idempotent_for_an_identical_retry_and_409_otherwise(
    stack: Stack, name: str
) -> None:
    body = {"name": name, "config": {"baseModel": "gemma-3-270m", "maxReplicas": 1}}
    first = stack.api("POST", "/v2/deployments", json=body)
    again = stack.api("POST", "/v2/deployments", json=body)
    assert first.status_code == again.status_code == 200
    assert first.json()["data"]["uuid"] == again.json()["data"]["uuid"]
    body["config"]["maxReplicas"] = 2
    clash = stack.api("POST", "/v2/deployments", json=body)
    assert clash.status_code == 409
    assert name in clash.json()["error"]
    stack.delete(name)


def test_delete_hides_the_deployment_and_events_say_deleted(stack: Stack, name: str) -> None:
    stack.create(name)
    assert stack.api("DELETE", f"/v2/deployments/{name}").status_code == 200
    assert stack.api("GET", f"/v2/deployments/{name}").status_code == 404
    assert name not in names(stack)
    ev = stack.api("GET", f"/llms/{name}/events").json()
    assert ev["deploymentStatus"] == "deleted"


def test_users_current_names_the_tenant(stack: Stack) -> None:
    body = stack.api("GET", "/users/current").json()
    assert body["tenant"]["shortCode"] == stack.tenant
    assert {"id", "username", "uuid"} <= body.keys()
    assert set(body["tenant"]["subscription"]) == {
        "id",
        "tier",
        "isTrial",
        "expiration",
        "daysRemainingInPlan",
        "active",
    }


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}],
    ids=["no-token", "unknown-token", "wrong-scheme"],
)
def test_requests_without_a_valid_token_get_401(stack: Stack, headers: dict[str, str]) -> None:
    for method, path in [
        ("GET", "/users/current"),
        ("GET", "/v2/deployments"),
        ("POST", f"/{stack.tenant}/deployments/v2/llms/x/generate"),
    ]:
        r = httpx.request(method, stack.base + path, headers=headers, json={})
        assert r.status_code == 401, (method, path)
        assert "token" in r.json()["error"]


BAD_CREATES = [
    (
        {
            "name": "ok-name",
            "config": {"baseModel": "gemma-3-270m", "minReplicas": 3, "maxReplicas": 1},
        },
        "config.minReplicas",
    ),
    (
        {"name": "ok-name", "config": {"baseModel": "gemma-3-270m", "minReplicas": -1}},
        "config.minReplicas",
    ),
    (
        {"name": "ok-name", "config": {"baseModel": "gemma-3-270m", "cooldownTime": -5}},
        "config.cooldownTime",
    ),
    (
        {"name": "ok-name", "config": {"baseModel": "gemma-3-270m", "maxReplicas": 0}},
        "config.maxReplicas",
    ),
    (
        {"name": "ok-name", "config": {"baseModel": "gemma-3-270m", "scaleUpRequestThreshold": 0}},
        "config.scaleUpRequestThreshold",
    ),
    ({"name": "ok-name", "config": {"baseModel": "no-such-model"}}, "config.baseModel"),
    ({"name": "ok-name", "config": {"maxReplicas": 1}}, "config.baseModel"),
    (
        {"name": "ok-name", "config": {"baseModel": "gemma-3-270m", "accelerator": "tpu_v9"}},
        "config.accelerator",
    ),
    (
        {
            "name": "ok-name",
            "config": {
                "baseModel": "gemma-3-270m",
                "computeSpec": {"requests": {"inference": {"sku": "x"}}},
            },
        },
        "config.computeSpec.requests",
    ),
    ({"name": "Bad_Name!", "config": {"baseModel": "gemma-3-270m"}}, "name"),
    ({"name": "v2", "config": {"baseModel": "gemma-3-270m"}}, "name"),
    (
        {"name": "ok-name", "config": {"baseModel": "gemma-3-270m", "maxReplicas": 1.5}},
        "config.maxReplicas",
    ),
    (
        {"name": "ok-name", "config": {"baseModel": "gemma-3-270m", "backend": "vllm"}},
        "config.backend",
    ),
    (
        {"name": "ok-name", "config": {"baseModel": "gemma-3-270m", "minReplica": 1}},
        "config.minReplica",
    ),
    ({"config": {"baseModel": "gemma-3-270m"}}, "name"),
    ([1, 2], "body"),
    # Refused by the engine profile (llama.cpp, vLLM, LoRAX), not by the wire format.
    (
        {"name": "ok-name", "config": {"baseModel": "gemma-3-270m", "speculator": "medusa"}},
        "config.speculator",
    ),
    (
        {"name": "ok-name", "config": {"baseModel": "qwen3-8b", "loraxImageTag": "main"}},
        "config.loraxImageTag",
    ),
    (
        {
            "name": "ok-name",
            "config": {"baseModel": "mistral-7b-instruct-v0-3", "quantization": "marlin"},
        },
        "config.quantization",
    ),
]


@pytest.mark.parametrize(
    ("body", "field"), BAD_CREATES, ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD_CREATES)]
)
def test_bad_create_gets_400_naming_the_field_and_stores_nothing(
    stack: Stack, body: Any, field: str
) -> None:
    before = names(stack)
    r = stack.api("POST", "/v2/deployments", json=body)
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["field"] == field
    assert field.split(".")[-1] in err["error"]
    assert names(stack) == before


def test_malformed_json_and_oversized_bodies_get_4xx_json(stack: Stack) -> None:
    before = names(stack)
    r = stack.api(
        "POST",
        "/v2/deployments",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["field"] == "body"
    huge = (
        b'{"name": "big", "config": {"baseModel": "gemma-3-270m"}, "description": "'
        + (b"x" * (9 * 1024 * 1024))
        + b'"}'
    )
    r = stack.api(
        "POST", "/v2/deployments", content=huge, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413
    assert r.json()["field"] == "body"
    assert names(stack) == before


def test_bad_update_changes_nothing(stack: Stack, name: str) -> None:
    stack.create(name, minReplicas=0, maxReplicas=2)
    before = stack.api("GET", f"/v2/deployments/{name}").json()["data"]
    r = stack.api("PUT", f"/v2/deployments/{name}", json={"config": {"minReplicas": 5}})
    assert r.status_code == 400
    assert r.json()["field"] == "config.minReplicas"
    assert stack.api("GET", f"/v2/deployments/{name}").json()["data"] == before
    stack.delete(name)


def test_update_the_engine_cannot_honour_gets_400_and_changes_nothing(
    stack: Stack, name: str
) -> None:
    stack.create(name, minReplicas=0, maxReplicas=1)
    before = stack.api("GET", f"/v2/deployments/{name}").json()["data"]
    r = stack.api("PUT", f"/v2/deployments/{name}", json={"config": {"quantization": "fp8"}})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "config.quantization"
    assert stack.api("GET", f"/v2/deployments/{name}").json()["data"] == before
    stack.delete(name)


def test_a_gpu_deployment_the_engine_can_honour_is_created(
    make_stack: Callable[..., Stack], name: str
) -> None:
    # On a pool that has its GPU (this host's has none: tests/test_pool.py).
    stack = make_stack(backend="sim", sim_pool="l40s_48gb=1")
    wait_until(
        lambda: stack.api("GET", "/v2/accelerators").json()["data"]["known"], 30, "pool report"
    )
    cfg = {"baseModel": "qwen3-8b", "minReplicas": 0, "speculator": "auto", "prefixCaching": True}
    r = stack.api("POST", "/v2/deployments", json={"name": name, "config": cfg})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["accelerator"] == {"id": "l40s_48gb_100"}


def test_bad_generate_parameters_get_422_naming_the_field(stack: Stack, name: str) -> None:
    stack.create(name)
    url = stack.deploy_url(name)
    cases = [
        ({"inputs": "", "parameters": {}}, "inputs"),
        ({"inputs": "hi", "parameters": {"temperature": -1}}, "parameters.temperature"),
        ({"inputs": "hi", "parameters": {"top_p": 1.5}}, "parameters.top_p"),
        ({"inputs": "hi", "parameters": {"max_new_tokens": 0}}, "parameters.max_new_tokens"),
        ({"parameters": {}}, "inputs"),
    ]
    for body, field in cases:
        r = httpx.post(url, headers=stack.headers, json=body)
        assert r.status_code == 422, body
        assert r.json()["error_type"] == "validation"
        assert r.json()["field"] == field
    assert stack.replicas_started(name) == set(), "bad input must not wake a replica"
    stack.delete(name)


def test_unknown_deployment_and_foreign_tenant_get_404(stack: Stack) -> None:
    r = httpx.post(stack.deploy_url("does-not-exist"), headers=stack.headers, json={"inputs": "hi"})
    assert r.status_code == 404
    r = httpx.post(
        f"{stack.base}/other-tenant/deployments/v2/llms/x",
        headers=stack.headers,
        json={"inputs": "hi"},
    )
    assert r.status_code == 404
