"""Many deployments on one finite pool, on a real stack with the sim backend.

The pool is one simulated A10, so the second deployment always finds it taken. Requests wait
in the queue while the allocator keeps the GPU where the rule says; nothing is ever marked
failed for a full pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
from harness import Stack, wait_until
from test_quotas import set_quotas

FAST = ["--load-s", "0.5", "--ttft-s", "0.02", "--tps", "200", "--batch", "4"]


def one_gpu_stack(make_stack: Callable[..., Stack], **settings: Any) -> Stack:
    return make_stack(backend="sim", sim_pool="a10_24gb=1,cpu=4", **settings)


def create(stack: Stack, name: str, **config: Any) -> None:
    stack.create(
        name,
        baseModel="sim-llm",
        accelerator="a10_24gb_100",
        customArgs=FAST,
        cooldownTime=600,
        **config,
    )


def events(stack: Stack, name: str) -> list[str]:
    body = stack.api("GET", f"/llms/{name}/events").json()
    return [e["eventType"] for e in body["ComputeEvents"]]


def scaler_metric(stack: Stack, line_start: str) -> float | None:
    text = httpx.get(
        f"http://127.0.0.1:{stack.scaler_port}/metrics", headers=stack.metrics_headers
    ).text
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


def three_more_passes(stack: Stack) -> None:
    """Wait until the scaler has made three more passes than it had made now."""
    passes = scaler_metric(stack, "wakegate_scaler_passes_total") or 0.0
    wait_until(
        lambda: (scaler_metric(stack, "wakegate_scaler_passes_total") or 0) >= passes + 3,
        30,
        "three more passes",
    )


def warm_up(stack: Stack, name: str) -> None:
    r = stack.generate(name, "warm", 4)
    assert r.status_code == 200, r.text + stack.logs()
    wait_until(lambda: stack.ready_replicas(name) == 1, 30, f"{name} ready")


def test_full_pool_request_waits_then_is_served_once_a_gpu_frees(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = one_gpu_stack(make_stack)
    hog, cold = f"{name}-hog", f"{name}-cold"
    # min_replicas hold the GPU: the cold deployment is the same tenant's, which is at its
    # fair share (the whole pool), so nothing is taken and the pool stays full.
    create(stack, hog, minReplicas=1, maxReplicas=1)
    wait_until(lambda: stack.ready_replicas(hog) == 1, 30, "the hog's replica")
    create(stack, cold, minReplicas=0, maxReplicas=1)
    with ThreadPoolExecutor(1) as pool:
        waiting: Future[httpx.Response] = pool.submit(stack.generate, cold, "hello", 4)
        wait_until(
            lambda: "WaitingForCapacity" in events(stack, cold), 30, "the wait to be announced"
        )
        body = stack.api("GET", f"/v2/deployments/{cold}").json()["data"]
        assert body["status"] == "ready"
        assert body["waitingForCapacity"]["reason"] == "waiting for a free a10_24gb GPU"
        assert (
            scaler_metric(
                stack, f'wakegate_waiting_for_capacity{{deployment="{stack.tenant}/{cold}"}}'
            )
            == 1.0
        )
        assert not waiting.done() and stack.queued(cold) == 1
        assert stack.sim_replicas(cold) == {}
        stack.delete(hog)  # its GPU frees
        r = waiting.result(timeout=60)
    assert r.status_code == 200, r.text + stack.logs()
    assert r.json()["generated_text"] == " tok" * 4
    seen = events(stack, cold)
    assert "Failed" not in seen and "CapacityAvailable" in seen
    body = stack.api("GET", f"/v2/deployments/{cold}").json()["data"]
    assert body["status"] == "ready" and body["waitingForCapacity"] is None


def test_idle_replica_in_its_cooldown_is_reclaimed_for_a_cold_deployment(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = one_gpu_stack(make_stack, reclaim_grace_s=0)
    idle, cold = f"{name}-idle", f"{name}-cold"
    create(stack, idle, minReplicas=0, maxReplicas=1)
    warm_up(stack, idle)  # served, now kept only by its 600 s cooldown
    (victim,) = stack.sim_replicas(idle)
    create(stack, cold, minReplicas=0, maxReplicas=1)
    r = stack.generate(cold, "hello", 4, timeout=60)
    assert r.status_code == 200, r.text + stack.logs()
    assert "Reclaimed" in events(stack, idle)
    wait_until(lambda: victim not in stack.sim_replicas(idle), 30, "the victim stopped")
    # Not started again by the same rule: with nothing queued it stays at zero.
    stack.generate(cold, "again", 2)
    assert stack.registry(idle) == {} and stack.sim_replicas(idle) == {}
    assert scaler_metric(stack, 'wakegate_reclaims_total{sku="a10_24gb"}') == 1.0
    # Its next request waits for the GPU in turn (the cold deployment is busy, nothing idle).
    seen = events(stack, idle)
    assert "Failed" not in seen


def test_guaranteed_deployment_keeps_its_idle_replica(
    make_stack: Callable[..., Stack], name: str
) -> None:
    # The operator grants every tenant one GPU of reserved capacity.
    stack = one_gpu_stack(make_stack, reclaim_grace_s=0, quota_guaranteed_gpus_per_tenant=1)
    guaranteed, cold = f"{name}-g", f"{name}-cold"
    create(stack, guaranteed, minReplicas=0, maxReplicas=1, usesGuaranteedCapacity=True)
    warm_up(stack, guaranteed)
    kept = set(stack.sim_replicas(guaranteed))
    create(stack, cold, minReplicas=0, maxReplicas=1)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(stack.generate, cold, "hello", 4)
        wait_until(lambda: "WaitingForCapacity" in events(stack, cold), 30, "the cold wait")
        # Several passes later the guaranteed replica still serves and nothing was reclaimed.
        three_more_passes(stack)
        assert set(stack.sim_replicas(guaranteed)) == kept
        assert "Reclaimed" not in events(stack, guaranteed)
        assert not waiting.done()
        stack.delete(guaranteed)
        r = waiting.result(timeout=60)
    assert r.status_code == 200, r.text + stack.logs()
    assert "Failed" not in events(stack, cold)


def test_guaranteed_replicas_beyond_a_lowered_grant_are_reclaimed(
    make_stack: Callable[..., Stack], name: str
) -> None:
    """Review 2026-12b, finding 1: a guaranteed deployment's idle replica held the pool
    against another tenant's request. The flag counts only within the operator's grant: once
    the grant is withdrawn, the idle replica goes to the other tenant's cold deployment."""
    stack = one_gpu_stack(make_stack, reclaim_grace_s=0)
    set_quotas(stack, stack.tenant, guaranteedGpusPerTenant=1)
    guaranteed, cold = f"{name}-g", f"{name}-cold"
    create(stack, guaranteed, minReplicas=0, maxReplicas=1, usesGuaranteedCapacity=True)
    warm_up(stack, guaranteed)
    (kept,) = stack.sim_replicas(guaranteed)
    beta_headers = cold_deployment_of_beta(stack, name, cold)
    set_quotas(stack, stack.tenant, guaranteedGpusPerTenant=0)
    r = beta_generates(stack, beta_headers, cold)
    assert r.status_code == 200, r.text + stack.logs()
    assert "Reclaimed" in events(stack, guaranteed)
    wait_until(lambda: kept not in stack.sim_replicas(guaranteed), 30, "the replica stopped")


def test_min_replicas_beyond_the_grant_give_way_to_a_poorer_tenant(
    make_stack: Callable[..., Stack], name: str
) -> None:
    """Review 2026-12b, finding 3: minReplicas equal to the pool held it against every other
    tenant. Without a grant for them, a tenant above its fair share gives one of its replicas
    to another tenant's cold deployment, and then waits for capacity (no flapping)."""
    stack = make_stack(backend="sim", sim_pool="a10_24gb=2", reclaim_grace_s=0)
    pin, cold = f"{name}-pin", f"{name}-cold"
    create(stack, pin, minReplicas=2, maxReplicas=2)
    wait_until(lambda: stack.ready_replicas(pin) == 2, 30, "the pin holding the whole pool")
    beta_headers = cold_deployment_of_beta(stack, name, cold)
    r = beta_generates(stack, beta_headers, cold)
    assert r.status_code == 200, r.text + stack.logs()
    wait_until(lambda: len(stack.sim_replicas(pin)) == 1, 30, "one of the pin's replicas gone")
    body = stack.api("GET", f"/v2/deployments/{pin}").json()["data"]
    assert body["status"] == "ready"
    assert body["waitingForCapacity"]["reason"] == "waiting for a free a10_24gb GPU"
    assert "Reclaimed" in events(stack, pin)
    # Several passes later nothing moved back: beta keeps its replica, the pin its one.
    three_more_passes(stack)
    assert len(stack.sim_replicas(pin)) == 1 and stack.ready_replicas(pin) == 1


def test_min_replicas_within_the_grant_keep_the_pool(
    make_stack: Callable[..., Stack], name: str
) -> None:
    """The same pin with a grant covering its minReplicas: the operator reserved them, so the
    other tenant's request waits for capacity."""
    stack = make_stack(backend="sim", sim_pool="a10_24gb=2", reclaim_grace_s=0)
    set_quotas(stack, stack.tenant, guaranteedGpusPerTenant=2)
    pin, cold = f"{name}-pin", f"{name}-cold"
    create(stack, pin, minReplicas=2, maxReplicas=2)
    wait_until(lambda: stack.ready_replicas(pin) == 2, 30, "the pin holding the whole pool")
    beta_headers = cold_deployment_of_beta(stack, name, cold)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(beta_generates, stack, beta_headers, cold)
        url = f"{stack.base}/v2/deployments/{cold}"
        wait_until(
            lambda: httpx.get(url, headers=beta_headers).json()["data"]["waitingForCapacity"],
            30,
            "beta waiting for capacity",
        )
        three_more_passes(stack)
        assert len(stack.sim_replicas(pin)) == 2 and not waiting.done()
        assert "Reclaimed" not in events(stack, pin)
        stack.delete(pin)
        r = waiting.result(timeout=60)
    assert r.status_code == 200, r.text + stack.logs()


def test_gpu_quota_makes_a_deployment_wait_with_gpus_free_in_the_pool(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack(backend="sim", sim_pool="a10_24gb=4", quota_max_gpus_per_tenant=1)
    first, second = f"{name}-a", f"{name}-b"
    create(stack, first, minReplicas=1, maxReplicas=1)
    wait_until(lambda: stack.ready_replicas(first) == 1, 30, "the tenant's one GPU in use")
    create(stack, second, minReplicas=0, maxReplicas=1)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(stack.generate, second, "hello", 4)
        wait_until(lambda: "WaitingForCapacity" in events(stack, second), 30, "the quota wait")
        body = stack.api("GET", f"/v2/deployments/{second}").json()["data"]
        assert body["waitingForCapacity"]["reason"] == (
            "tenant GPU quota reached (maxGpusPerTenant=1)"
        )
        assert stack.sim_replicas(second) == {} and not waiting.done()
        stack.delete(first)  # the tenant's GPU comes back
        r = waiting.result(timeout=60)
    assert r.status_code == 200, r.text + stack.logs()
    assert "Failed" not in events(stack, second)


def acme_on_the_whole_pool(stack: Stack, name: str, custom_args: list[str]) -> None:
    """Tenant acme's deployment that takes both GPUs of the pool under load."""
    stack.create(
        name,
        baseModel="sim-llm",
        accelerator="a10_24gb_100",
        customArgs=custom_args,
        maxReplicas=2,
        scaleUpRequestThreshold=1,
        cooldownTime=600,
    )


def beta_generates(stack: Stack, headers: dict[str, str], cold: str) -> httpx.Response:
    return httpx.post(
        f"{stack.base}/beta/deployments/v2/llms/{cold}/generate",
        headers=headers,
        json={"inputs": "hello", "parameters": {"max_new_tokens": 4}},
        timeout=60,
    )


def cold_deployment_of_beta(stack: Stack, name: str, cold: str) -> dict[str, str]:
    """A second tenant, beta, with a token and a deployment `cold` on the same SKU (fast to
    load); returns beta's request headers."""
    from wakegate.store import Store

    beta = "pb_beta_" + name

    async def seed() -> None:
        store = Store.from_url(stack.redis_url)
        await store.ensure_tenant("beta")
        await store.add_token(beta, "beta")
        await store.close()

    asyncio.run(seed())
    headers = {"Authorization": f"Bearer {beta}"}
    r = httpx.post(
        f"{stack.base}/v2/deployments",
        headers=headers,
        json={"name": cold, "config": {"baseModel": "sim-llm", "accelerator": "a10_24gb_100",
              "customArgs": FAST, "cooldownTime": 600}},
        timeout=30,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    return headers


def test_cold_deployment_of_a_tenant_below_its_share_gets_a_drained_replica(
    make_stack: Callable[..., Stack], name: str
) -> None:
    """Tenant acme's sustained load holds the whole pool; tenant beta's first request gets a
    replica drained from acme (whose requests in flight finish) instead of waiting for the
    load to stop."""
    stack = make_stack(backend="sim", sim_pool="a10_24gb=2", reclaim_grace_s=0)
    busy, cold = f"{name}-busy", f"{name}-cold"
    slow = ["--load-s", "0.5", "--ttft-s", "0.02", "--tps", "10", "--batch", "1"]
    acme_on_the_whole_pool(stack, busy, slow)
    beta_headers = cold_deployment_of_beta(stack, name, cold)
    with ThreadPoolExecutor(5) as pool:
        load = [pool.submit(stack.generate, busy, f"long {i}", 30, 120) for i in range(4)]
        wait_until(lambda: stack.ready_replicas(busy) == 2, 30, "acme holding the whole pool")
        wait_until(lambda: stack.in_flight(busy) == 2, 30, "both replicas serving")
        r = beta_generates(stack, beta_headers, cold)
        assert r.status_code == 200, r.text + stack.logs()
        assert [f.result().status_code for f in load] == [200] * 4  # none cut
    assert "Reclaimed" in events(stack, busy)


def test_cold_deployment_of_a_tenant_below_its_share_gets_a_cancelled_start(
    make_stack: Callable[..., Stack], name: str
) -> None:
    """Tenant acme's two replicas are still loading and hold the whole pool; tenant beta's
    first request has acme's newest start cancelled (nothing ran on it) instead of waiting
    for both to load and one to drain. acme keeps its other start, and its requests are
    served by it."""
    stack = make_stack(backend="sim", sim_pool="a10_24gb=2", reclaim_grace_s=0)
    loading, cold = f"{name}-loading", f"{name}-cold"
    slow_load = ["--load-s", "15", "--ttft-s", "0.02", "--tps", "200", "--batch", "4"]
    acme_on_the_whole_pool(stack, loading, slow_load)
    beta_headers = cold_deployment_of_beta(stack, name, cold)

    def states() -> list[str]:
        return sorted(rec["state"] for rec in stack.registry(loading).values())

    with ThreadPoolExecutor(4) as pool:
        load = [pool.submit(stack.generate, loading, f"q {i}", 4, 120) for i in range(4)]
        wait_until(lambda: states() == ["starting", "starting"], 30, "acme loading on both GPUs")
        started = set(stack.registry(loading))
        r = beta_generates(stack, beta_headers, cold)
        assert r.status_code == 200, r.text + stack.logs()
        # Served before acme's loads ended: the GPU came from a start, not a drain.
        assert stack.ready_replicas(loading) == 0, stack.logs()
        kept = set(stack.registry(loading))
        assert len(kept) == 1 and kept < started
        assert [f.result().status_code for f in load] == [200] * 4
    body = stack.api("GET", f"/llms/{loading}/events").json()
    (reclaimed,) = [e for e in body["ComputeEvents"] if e["eventType"] == "Reclaimed"]
    assert "starting replica(s) cancelled" in reclaimed["message"]
    # No flapping: acme, still wanting two, waits for the GPU it gave instead of taking it
    # back from beta (a pool of two: a start of acme's would be a second record).
    three_more_passes(stack)
    assert set(stack.registry(loading)) == kept
    assert "Failed" not in events(stack, loading)
