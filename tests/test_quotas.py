"""Operator quotas: defaults, per-tenant overrides, enforcement, the admin API and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from harness import Stack, run_async, wait_until

from wakegate.quotas import (
    QuotaExceeded,
    QuotaOverride,
    Quotas,
    check_deployment,
    effective_quotas,
    queue_limit,
)
from wakegate.spec import MAX_QUEUE_LENGTH, DeploymentConfig, DeploymentSpec
from wakegate.store import DEPLOYMENTS, Store, TenantFull
from wakegate.tools.cli import main as cli
from wakegate.tools.up import load_or_create_admin_token

DEFAULTS = Quotas(max_deployments=10, max_replicas=8, max_gpus=None, max_queue_length=100)


def spec_of(tenant: str = "acme", name: str = "d", **config: Any) -> DeploymentSpec:
    return DeploymentSpec(
        tenant=tenant,
        name=name,
        uuid=str(uuid.uuid4()),
        description=None,
        config=DeploymentConfig.from_dict({"base_model": "sim-llm", **config}),
        status="ready",
        revision=1,
        created_at=0.0,
        updated_at=0.0,
    )


# --- pure: merging, clamping, checking ----------------------------------------------------

MERGES = [
    ("no-override-is-the-defaults", None, DEFAULTS),
    (
        "override-beats-the-default",
        QuotaOverride(max_replicas_per_deployment=2, max_gpus_per_tenant=4),
        Quotas(10, 2, 4, 100),
    ),
    (
        "null-override-is-unlimited",
        QuotaOverride(max_deployments_per_tenant=None),
        Quotas(None, 8, None, 100),
    ),
    (
        "unlimited-queue-is-the-longest-a-deployment-may-ask",
        QuotaOverride(max_queue_length_per_deployment=None),
        Quotas(10, 8, None, MAX_QUEUE_LENGTH),
    ),
    ("fields-left-out-keep-the-default", QuotaOverride(), DEFAULTS),
    (
        "override-grants-reserved-gpus-and-bounds-the-tenants-replicas",
        QuotaOverride(guaranteed_gpus_per_tenant=2, max_replicas_per_tenant=6),
        Quotas(10, 8, None, 100, max_tenant_replicas=6, guaranteed_gpus=2),
    ),
    (
        "null-grant-is-every-gpu",
        QuotaOverride(guaranteed_gpus_per_tenant=None),
        Quotas(10, 8, None, 100, guaranteed_gpus=None),
    ),
]


@pytest.mark.parametrize(
    ("override", "expected"), [m[1:] for m in MERGES], ids=[m[0] for m in MERGES]
)
def test_effective_quotas_merge_the_override_over_the_defaults(
    override: QuotaOverride | None, expected: Quotas
) -> None:
    assert effective_quotas(DEFAULTS, override) == expected


QUEUE_LIMITS = [
    ("unset-is-the-quota", {}, 100),
    ("below-the-quota-is-kept", {"max_queue_length": 5}, 5),
    ("above-the-quota-is-clamped", {"max_queue_length": 1_000_000}, 100),
]


@pytest.mark.parametrize(
    ("config", "expected"), [q[1:] for q in QUEUE_LIMITS], ids=[q[0] for q in QUEUE_LIMITS]
)
def test_queue_limit_is_the_deployments_own_clamped_to_the_quota(
    config: dict[str, Any], expected: int
) -> None:
    assert queue_limit(spec_of(**config), DEFAULTS) == expected


GPUS2 = Quotas(None, 8, 2, 100)
GRANT2 = Quotas(None, 8, None, 100, guaranteed_gpus=2)
GUARANTEED = {"uses_guaranteed_capacity": True, "accelerator": "a10_24gb_100"}
CHECKS: list[tuple[str, dict[str, Any], Quotas, tuple[str, str, int] | None]] = [
    (
        "guaranteed-capacity-without-a-grant-is-refused",
        GUARANTEED,
        DEFAULTS,
        ("config.usesGuaranteedCapacity", "guaranteedGpusPerTenant", 0),
    ),
    ("guaranteed-capacity-within-a-grant", GUARANTEED, GRANT2, None),
    (
        "guaranteed-capacity-with-an-unlimited-grant",
        GUARANTEED,
        Quotas(None, 8, None, 100, guaranteed_gpus=None),
        None,
    ),
    (
        "guaranteed-replica-larger-than-the-grant-is-refused",
        {**GUARANTEED, "accelerator": "a10_24gb_400"},
        GRANT2,
        ("config.usesGuaranteedCapacity", "guaranteedGpusPerTenant", 2),
    ),
    (
        "guaranteed-capacity-on-cpu-is-refused-the-grant-is-gpus",
        {**GUARANTEED, "accelerator": "cpu"},
        GRANT2,
        ("config.usesGuaranteedCapacity", "guaranteedGpusPerTenant", 2),
    ),
    (
        "not-asking-for-guaranteed-capacity-needs-no-grant",
        {"uses_guaranteed_capacity": False},
        DEFAULTS,
        None,
    ),
    (
        "min-replicas-above-the-tenants-replica-quota-cpu-included",
        {"accelerator": "cpu", "min_replicas": 5, "max_replicas": 5},
        Quotas(None, 8, None, 100, max_tenant_replicas=4),
        ("config.minReplicas", "maxReplicasPerTenant", 4),
    ),
    (
        "max-replicas-beyond-the-tenants-replica-quota-wait-for-capacity",
        {"accelerator": "cpu", "min_replicas": 4, "max_replicas": 8},
        Quotas(None, 8, None, 100, max_tenant_replicas=4),
        None,
    ),
    ("replicas-within-the-quota", {"min_replicas": 8, "max_replicas": 8}, DEFAULTS, None),
    (
        "min-replicas-above-the-quota",
        {"min_replicas": 9, "max_replicas": 9},
        DEFAULTS,
        ("config.minReplicas", "maxReplicasPerDeployment", 8),
    ),
    (
        "max-replicas-above-the-quota",
        {"max_replicas": 9},
        DEFAULTS,
        ("config.maxReplicas", "maxReplicasPerDeployment", 8),
    ),
    ("unlimited-replicas", {"max_replicas": 1000}, Quotas(None, None, None, 1), None),
    (
        "one-replica-needs-more-gpus-than-the-quota",
        {"accelerator": "a10_24gb_400"},
        GPUS2,
        ("config.accelerator", "maxGpusPerTenant", 2),
    ),
    (
        "one-replica-of-the-compute-spec-needs-more-gpus",
        {"compute_spec": {"requests": {"inference": {"sku": "a100_80gb_200"}}}},
        Quotas(None, 8, 1, 100),
        ("config.computeSpec", "maxGpusPerTenant", 1),
    ),
    (
        "min-replicas-need-more-gpus-than-the-quota",
        {"min_replicas": 3, "max_replicas": 3},
        GPUS2,
        ("config.minReplicas", "maxGpusPerTenant", 2),
    ),
    (
        "max-replicas-beyond-the-gpu-quota-wait-for-capacity",
        {"min_replicas": 2, "max_replicas": 8},
        GPUS2,
        None,
    ),
    (
        "cpu-replicas-hold-no-gpus",
        {"accelerator": "cpu", "min_replicas": 5, "max_replicas": 5},
        Quotas(None, 8, 0, 100),
        None,
    ),
    (
        "no-gpus-refuses-the-models-default-gpu-accelerator",
        {},
        Quotas(None, 8, 0, 100),
        ("config.baseModel", "maxGpusPerTenant", 0),
    ),
]


@pytest.mark.parametrize(
    ("config", "quotas", "refused"), [c[1:] for c in CHECKS], ids=[c[0] for c in CHECKS]
)
def test_hard_quotas_refuse_what_could_never_fit(
    config: dict[str, Any], quotas: Quotas, refused: tuple[str, str, int] | None
) -> None:
    if refused is None:
        check_deployment(spec_of(**config), quotas)
        return
    with pytest.raises(QuotaExceeded) as exc:
        check_deployment(spec_of(**config), quotas)
    assert (exc.value.field, exc.value.quota, exc.value.limit) == refused
    assert exc.value.quota in exc.value.message and str(exc.value.limit) in exc.value.message


# --- the store: the per-tenant index and overrides -----------------------------------------


async def test_concurrent_creates_never_pass_the_deployments_quota(store: Store) -> None:
    async def create(i: int) -> bool:
        try:
            return await store.create_deployment(spec_of(name=f"d{i}"), [], max_per_tenant=3)
        except TenantFull:
            return False

    results = await asyncio.gather(*(create(i) for i in range(10)))
    assert results.count(True) == 3
    assert await store.tenant_deployment_count("acme") == 3
    assert len(await store.deployment_keys("acme")) == 3


async def test_a_taken_name_reserves_nothing_and_purge_frees_the_place(store: Store) -> None:
    assert await store.create_deployment(spec_of(name="a"), [], max_per_tenant=2)
    assert not await store.create_deployment(spec_of(name="a"), [], max_per_tenant=2)
    assert await store.tenant_deployment_count("acme") == 1
    assert await store.create_deployment(spec_of(name="b"), [], max_per_tenant=2)
    # A retry of an existing name at the quota is not refused for the quota.
    assert not await store.create_deployment(spec_of(name="b"), [], max_per_tenant=2)
    with pytest.raises(TenantFull):
        await store.create_deployment(spec_of(name="c"), [], max_per_tenant=2)
    await store.purge_deployment("acme/a")
    assert await store.tenant_deployment_count("acme") == 1
    assert await store.create_deployment(spec_of(name="c"), [], max_per_tenant=2)


async def test_backfill_counts_deployments_made_before_the_index_and_is_idempotent(
    store: Store,
) -> None:
    for tenant, name in [("acme", "old-1"), ("acme", "old-2"), ("other", "old-3")]:
        # Written the way earlier versions did: spec and global index, no tenant index.
        spec = spec_of(tenant=tenant, name=name)
        await store.redis.sadd(DEPLOYMENTS, spec.key)
        await store.put_deployment(spec)
    await store.redis.sadd(DEPLOYMENTS, "acme/gone")  # index entry of a purged deployment
    assert await store.backfill_tenant_deployments() == 3
    assert await store.backfill_tenant_deployments() == 0
    assert await store.tenant_deployment_count("acme") == 2
    assert await store.tenant_deployment_count("other") == 1
    with pytest.raises(TenantFull):
        await store.create_deployment(spec_of(name="new"), [], max_per_tenant=2)


async def test_override_fields_merge_and_delete_restores_the_defaults(store: Store) -> None:
    assert await store.quota_override("acme") is None
    await store.set_quota_override("acme", QuotaOverride(max_gpus_per_tenant=4))
    merged = await store.set_quota_override("acme", QuotaOverride(max_replicas_per_deployment=None))
    assert merged.to_wire() == {"maxGpusPerTenant": 4, "maxReplicasPerDeployment": None}
    assert await store.quota_override("acme") == merged
    assert (await store.quota_overrides()).keys() == {"acme"}
    assert await store.delete_quota_override("acme")
    assert await store.quota_override("acme") is None
    assert not await store.delete_quota_override("acme")


# --- the HTTP API on the shared stack ------------------------------------------------------


def new_tenant(stack: Stack) -> tuple[str, dict[str, str]]:
    """A tenant of the test's own (quotas are per tenant) and its bearer header."""
    code = "q-" + uuid.uuid4().hex[:8]
    token = "pb_" + uuid.uuid4().hex

    async def seed() -> None:
        store = Store.from_url(stack.redis_url)
        try:
            await store.ensure_tenant(code)
            await store.add_token(token, code)
        finally:
            await store.close()

    run_async(seed())
    return code, {"Authorization": f"Bearer {token}"}


def admin_headers(stack: Stack) -> dict[str, str]:
    token = "wga_" + uuid.uuid4().hex

    async def seed() -> None:
        store = stack.store()  # with the stack's key, if it has one: a signed token
        try:
            await store.add_admin_token(token, "test-operator")
        finally:
            await store.close()

    run_async(seed())
    return {"Authorization": f"Bearer {token}"}


def set_quotas(stack: Stack, tenant: str, **wire: int | None) -> dict[str, Any]:
    r = httpx.put(
        f"{stack.base}/admin/v1/tenants/{tenant}/quotas", headers=admin_headers(stack), json=wire
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def post(stack: Stack, headers: dict[str, str], name: str, **config: Any) -> httpx.Response:
    body = {"name": name, "config": {"baseModel": "sim-llm", **config}}
    return httpx.post(f"{stack.base}/v2/deployments", headers=headers, json=body, timeout=60)


def listed(stack: Stack, headers: dict[str, str]) -> list[str]:
    r = httpx.get(f"{stack.base}/v2/deployments", headers=headers)
    assert r.status_code == 200, r.text
    return sorted(d["name"] for d in r.json()["data"])


def assert_refused(r: httpx.Response, field: str, quota: str, limit: int) -> None:
    assert r.status_code == 403, r.text
    body = r.json()
    assert (body["field"], body["quota"], body["limit"]) == (field, quota, limit)
    assert quota in body["error"] and str(limit) in body["error"]


def test_deployments_quota_refuses_the_next_create_and_changes_nothing(stack: Stack) -> None:
    tenant, headers = new_tenant(stack)
    set_quotas(stack, tenant, maxDeploymentsPerTenant=2)
    assert post(stack, headers, "one").status_code == 200
    assert post(stack, headers, "two").status_code == 200
    assert_refused(post(stack, headers, "three"), "name", "maxDeploymentsPerTenant", 2)
    assert listed(stack, headers) == ["one", "two"]
    # An identical retry of a create that succeeded is still answered 200.
    assert post(stack, headers, "two").status_code == 200

    # A deleted deployment gives its place back once the scaler has purged it.
    assert httpx.delete(f"{stack.base}/v2/deployments/one", headers=headers).status_code == 200
    wait_until(lambda: post(stack, headers, "three").status_code == 200, 30, "a free place")
    assert listed(stack, headers) == ["three", "two"]


def test_replicas_quota_default_and_the_tenants_override(stack: Stack) -> None:
    tenant, headers = new_tenant(stack)
    # The shared stack runs with the default of 64 replicas per deployment.
    assert_refused(
        post(stack, headers, "wide", maxReplicas=65), "config.maxReplicas",
        "maxReplicasPerDeployment", 64,
    )  # fmt: skip
    set_quotas(stack, tenant, maxReplicasPerDeployment=4)
    assert_refused(
        post(stack, headers, "wide", maxReplicas=5), "config.maxReplicas",
        "maxReplicasPerDeployment", 4,
    )  # fmt: skip
    assert listed(stack, headers) == []
    set_quotas(stack, tenant, maxReplicasPerDeployment=None)  # unlimited
    assert post(stack, headers, "wide", maxReplicas=65).status_code == 200


def test_an_update_beyond_a_quota_is_refused_and_the_stored_spec_stays(stack: Stack) -> None:
    tenant, headers = new_tenant(stack)
    set_quotas(stack, tenant, maxReplicasPerDeployment=4)
    assert post(stack, headers, "grows", maxReplicas=2).status_code == 200
    url = f"{stack.base}/v2/deployments/grows"
    before = httpx.get(url, headers=headers).json()["data"]
    r = httpx.put(url, headers=headers, json={"config": {"maxReplicas": 5}})
    assert_refused(r, "config.maxReplicas", "maxReplicasPerDeployment", 4)
    assert httpx.get(url, headers=headers).json()["data"] == before
    r = httpx.put(url, headers=headers, json={"config": {"maxReplicas": 4}})
    assert r.status_code == 200, r.text


def test_gpu_quota_refuses_only_what_could_never_run_within_it(stack: Stack) -> None:
    tenant, headers = new_tenant(stack)
    set_quotas(stack, tenant, maxGpusPerTenant=2)
    assert_refused(
        post(stack, headers, "big", accelerator="a10_24gb_400"), "config.accelerator",
        "maxGpusPerTenant", 2,
    )  # fmt: skip
    assert_refused(
        post(stack, headers, "many", minReplicas=3, maxReplicas=3), "config.minReplicas",
        "maxGpusPerTenant", 2,
    )  # fmt: skip
    assert listed(stack, headers) == []
    # Beyond the quota only at its peak: accepted, the scaler makes it wait for capacity.
    assert post(stack, headers, "bursty", minReplicas=0, maxReplicas=8).status_code == 200
    # CPU replicas hold no GPUs.
    cpu = post(stack, headers, "cpu", accelerator="cpu", maxReplicas=8)
    assert cpu.status_code == 200, cpu.text


def test_guaranteed_capacity_is_the_operators_grant(stack: Stack) -> None:
    """Review 2026-12b, finding 1: any tenant could set usesGuaranteedCapacity. Now a tenant
    without a grant gets a 403 naming it, on create and update, and nothing changes."""
    tenant, headers = new_tenant(stack)
    assert_refused(
        post(stack, headers, "gua", usesGuaranteedCapacity=True),
        "config.usesGuaranteedCapacity", "guaranteedGpusPerTenant", 0,
    )  # fmt: skip
    assert listed(stack, headers) == []
    assert post(stack, headers, "plain").status_code == 200
    url = f"{stack.base}/v2/deployments/plain"
    before = httpx.get(url, headers=headers).json()["data"]
    r = httpx.put(url, headers=headers, json={"config": {"usesGuaranteedCapacity": True}})
    assert_refused(r, "config.usesGuaranteedCapacity", "guaranteedGpusPerTenant", 0)
    assert httpx.get(url, headers=headers).json()["data"] == before

    # The operator grants one GPU: one-GPU replicas may ask for it, larger ones may not.
    shown = set_quotas(stack, tenant, guaranteedGpusPerTenant=1)
    assert shown["quotas"]["guaranteedGpusPerTenant"] == 1
    r = httpx.put(url, headers=headers, json={"config": {"usesGuaranteedCapacity": True}})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["usesGuaranteedCapacity"] is True
    assert_refused(
        post(stack, headers, "big", accelerator="a10_24gb_400", usesGuaranteedCapacity=True),
        "config.usesGuaranteedCapacity", "guaranteedGpusPerTenant", 1,
    )  # fmt: skip

    # Withdrawn: the next update must give the flag up (the allocator already ignores it).
    set_quotas(stack, tenant, guaranteedGpusPerTenant=0)
    r = httpx.put(url, headers=headers, json={"config": {"cooldownTime": 30}})
    assert_refused(r, "config.usesGuaranteedCapacity", "guaranteedGpusPerTenant", 0)
    r = httpx.put(
        url, headers=headers, json={"config": {"cooldownTime": 30, "usesGuaranteedCapacity": False}}
    )
    assert r.status_code == 200, r.text


def test_tenant_replica_quota_counts_cpu_replicas(stack: Stack) -> None:
    """Review 2026-12b, finding 3: CPU replicas counted against nothing. The shared stack
    runs with the defaults: 64 replicas per tenant, 8 GPUs per tenant."""
    tenant, headers = new_tenant(stack)
    admin = admin_headers(stack)
    defaults = httpx.get(f"{stack.base}/admin/v1/quotas", headers=admin).json()["defaults"]
    assert defaults["maxReplicasPerTenant"] == 64 and defaults["maxGpusPerTenant"] == 8
    assert defaults["guaranteedGpusPerTenant"] == 0
    set_quotas(stack, tenant, maxReplicasPerTenant=4, maxReplicasPerDeployment=None)
    assert_refused(
        post(stack, headers, "cpu-many", accelerator="cpu", minReplicas=5, maxReplicas=5),
        "config.minReplicas", "maxReplicasPerTenant", 4,
    )  # fmt: skip
    assert listed(stack, headers) == []
    r = post(stack, headers, "cpu-some", accelerator="cpu", minReplicas=0, maxReplicas=64)
    assert r.status_code == 200, r.text


def test_concurrent_creates_never_exceed_the_deployments_quota(stack: Stack) -> None:
    tenant, headers = new_tenant(stack)
    set_quotas(stack, tenant, maxDeploymentsPerTenant=3)
    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda i: post(stack, headers, f"race-{i}").status_code, range(10)))
    assert sorted(codes) == [200] * 3 + [403] * 7
    assert len(listed(stack, headers)) == 3


def test_admin_routes_take_only_admin_tokens(stack: Stack) -> None:
    tenant, headers = new_tenant(stack)
    admin = admin_headers(stack)
    paths = [
        ("GET", "/admin/v1/quotas"),
        ("GET", f"/admin/v1/tenants/{tenant}/quotas"),
        ("PUT", f"/admin/v1/tenants/{tenant}/quotas"),
        ("DELETE", f"/admin/v1/tenants/{tenant}/quotas"),
    ]
    for method, path in paths:
        for who, auth, status in [
            ("no token", {}, 401),
            ("unknown token", {"Authorization": "Bearer nope"}, 401),
            ("tenant token", headers, 403),
        ]:
            r = httpx.request(method, stack.base + path, headers=auth, json={"maxGpusPerTenant": 1})
            assert r.status_code == status, (method, path, who, r.text)
            assert "error" in r.json()
    # An admin token is no tenant's token.
    assert httpx.get(f"{stack.base}/v2/deployments", headers=admin).status_code == 401
    assert httpx.get(f"{stack.base}/admin/v1/quotas", headers=admin).status_code == 200
    # Nothing was changed by the refused calls.
    shown = httpx.get(f"{stack.base}/admin/v1/tenants/{tenant}/quotas", headers=admin).json()
    assert shown["override"] is None


def test_admin_api_shows_sets_and_removes_overrides(stack: Stack) -> None:
    tenant, _ = new_tenant(stack)
    admin = admin_headers(stack)
    url = f"{stack.base}/admin/v1/tenants/{tenant}/quotas"
    shown = httpx.get(url, headers=admin).json()
    assert shown["override"] is None
    assert shown["quotas"] == shown["defaults"]
    assert shown["quotas"]["maxReplicasPerDeployment"] == 64

    set_quotas(stack, tenant, maxGpusPerTenant=4)
    shown = set_quotas(stack, tenant, maxReplicasPerDeployment=8, maxDeploymentsPerTenant=None)
    assert shown["override"] == {
        "maxGpusPerTenant": 4,
        "maxReplicasPerDeployment": 8,
        "maxDeploymentsPerTenant": None,
    }
    assert shown["quotas"]["maxGpusPerTenant"] == 4
    assert shown["quotas"]["maxDeploymentsPerTenant"] is None
    everything = httpx.get(f"{stack.base}/admin/v1/quotas", headers=admin).json()
    assert everything["overrides"][tenant] == shown["override"]
    assert everything["defaults"] == shown["defaults"]

    removed = httpx.delete(url, headers=admin).json()
    assert removed["override"] is None and removed["quotas"] == removed["defaults"]
    everything = httpx.get(f"{stack.base}/admin/v1/quotas", headers=admin).json()
    assert tenant not in everything["overrides"]


BAD_OVERRIDES = [
    ({"maxGpusPerTenant": -1}, "maxGpusPerTenant"),
    ({"guaranteedGpusPerTenant": -1}, "guaranteedGpusPerTenant"),
    ({"guaranteedGpusPerTenant": True}, "guaranteedGpusPerTenant"),
    ({"maxReplicasPerTenant": "8"}, "maxReplicasPerTenant"),
    ({"maxReplicasPerDeployment": 1001}, "maxReplicasPerDeployment"),
    ({"maxDeploymentsPerTenant": 1.5}, "maxDeploymentsPerTenant"),
    ({"maxQueueLengthPerDeployment": 0}, "maxQueueLengthPerDeployment"),
    ({"maxQueueLengthPerDeployment": 10**400}, "maxQueueLengthPerDeployment"),
    ({"maxGpus": 4}, "maxGpus"),
    ([4], "body"),
]


@pytest.mark.parametrize(
    ("body", "field"), BAD_OVERRIDES, ids=[f for _, f in BAD_OVERRIDES[:-2]] + ["unknown", "list"]
)
def test_a_bad_override_is_a_400_naming_the_field_and_changes_nothing(
    stack: Stack, body: Any, field: str
) -> None:
    tenant, _ = new_tenant(stack)
    admin = admin_headers(stack)
    url = f"{stack.base}/admin/v1/tenants/{tenant}/quotas"
    r = httpx.put(url, headers=admin, content=json.dumps(body).encode())
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field
    assert httpx.get(url, headers=admin).json()["override"] is None


def test_a_bad_tenant_name_on_the_admin_api_is_a_400(stack: Stack) -> None:
    r = httpx.put(
        f"{stack.base}/admin/v1/tenants/Bad_Name/quotas",
        headers=admin_headers(stack),
        json={"maxGpusPerTenant": 1},
    )
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "tenant"


# --- the queue quota on the data plane -----------------------------------------------------


def test_a_deployments_queue_length_is_clamped_to_the_tenants_quota(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack(backend="sim", sim_pool="a10_24gb=4,cpu=4")
    set_quotas(stack, stack.tenant, maxQueueLengthPerDeployment=2)
    # Its one replica loads for ten minutes: whatever is queued stays queued.
    stack.create(
        name, baseModel="sim-llm", customArgs=["--load-s", "600"], maxQueueLength=1_000_000
    )
    shown = stack.api("GET", f"/v2/deployments/{name}").json()["data"]["config"]
    assert shown["maxQueueLength"] == 1_000_000, "the stored value is shown, clamped at use"
    submit = stack.deploy_url(name) + "/async"
    for i in range(2):
        r = httpx.post(submit, headers=stack.headers, json={"inputs": f"q{i}"})
        assert r.status_code == 202, r.text
    assert stack.queued(name) == 2
    r = httpx.post(submit, headers=stack.headers, json={"inputs": "one too many"})
    assert r.status_code == 429, r.text
    r = stack.generate(name, "one too many", 2, timeout=30)
    assert r.status_code == 429, r.text
    assert r.headers["Retry-After"]
    assert stack.queued(name) == 2
    stack.delete(name)


# --- the CLI and `wakegate up` -------------------------------------------------------------


def test_cli_sets_shows_and_unsets_a_tenants_quotas(fresh_redis_url: str) -> None:
    runner = CliRunner()
    env = {"REDIS_URL": fresh_redis_url}

    def run(*args: str) -> Any:
        result = runner.invoke(cli, list(args), env=env)
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    shown = run("quota", "show", "--tenant", "acme")
    assert shown["override"] is None and shown["quotas"] == shown["defaults"]
    set_ = run("quota", "set", "--tenant", "acme", "--max-gpus", "4", "--max-replicas", "8")
    assert set_["override"] == {"maxGpusPerTenant": 4, "maxReplicasPerDeployment": 8}
    set_ = run(
        "quota", "set", "--tenant", "acme", "--guaranteed-gpus", "2",
        "--max-tenant-replicas", "16",
    )  # fmt: skip
    assert set_["quotas"]["guaranteedGpusPerTenant"] == 2
    assert set_["quotas"]["maxReplicasPerTenant"] == 16
    run("quota", "set", "--tenant", "acme", "--max-deployments", "none")
    shown = run("quota", "show", "--tenant", "acme")
    assert shown["quotas"]["maxGpusPerTenant"] == 4
    assert shown["quotas"]["maxReplicasPerDeployment"] == 8
    assert shown["quotas"]["maxDeploymentsPerTenant"] is None
    assert shown["quotas"]["guaranteedGpusPerTenant"] == 2
    assert run("quota", "show")["overrides"] == {"acme": shown["override"]}
    bad = runner.invoke(
        cli, ["quota", "set", "--tenant", "acme", "--guaranteed-gpus", "-1"], env=env
    )
    assert bad.exit_code == 2 and "--guaranteed-gpus" in bad.output

    # The same validation as the admin API, naming the option.
    bad = runner.invoke(cli, ["quota", "set", "--tenant", "acme", "--max-gpus", "-1"], env=env)
    assert bad.exit_code == 2 and "--max-gpus" in bad.output
    bad = runner.invoke(cli, ["quota", "set", "--tenant", "acme", "--max-gpus", "x"], env=env)
    assert bad.exit_code == 2 and "--max-gpus" in bad.output
    bad = runner.invoke(cli, ["quota", "set", "--tenant", "Bad_Name", "--max-gpus", "1"], env=env)
    assert bad.exit_code != 0 and "tenant" in bad.output
    assert run("quota", "show", "--tenant", "acme") == shown

    unset = run("quota", "unset", "--tenant", "acme")
    assert unset["override"] is None and unset["quotas"] == unset["defaults"]
    assert run("quota", "show")["overrides"] == {}


def test_cli_admin_token_opens_admin_routes_only(fresh_redis_url: str) -> None:
    runner = CliRunner()
    env = {"REDIS_URL": fresh_redis_url}
    result = runner.invoke(cli, ["create-token", "--admin"], env=env)
    assert result.exit_code == 0, result.output
    token = result.output.strip()

    async def kinds() -> tuple[str | None, dict[str, Any] | None]:
        store = Store.from_url(fresh_redis_url)
        try:
            return await store.admin_for_token(token), await store.tenant_for_token(token)
        finally:
            await store.close()

    assert run_async(kinds()) == ("admin", None)
    both = runner.invoke(cli, ["create-token", "--admin", "--tenant", "acme"], env=env)
    assert both.exit_code == 2
    neither = runner.invoke(cli, ["create-token"], env=env)
    assert neither.exit_code == 2


def test_up_makes_an_admin_token_readable_by_its_owner_only_once(tmp_path: Path) -> None:
    token, path = load_or_create_admin_token(tmp_path)
    assert path == tmp_path / "admin-token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_admin_token(tmp_path) == (token, path)
