"""Races between writers of one deployment, and a DELETE that does not wait for start-ups.

Spec writes are compare-and-set on the revision and status the writer read
(wakegate/store.py REPLACE_SPEC): a PUT racing a DELETE never brings the deployment back, and
the scaler's status changes never overwrite `deleting` or a user's newer revision.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest
import redis
from harness import Stack, wait_until

from wakegate.spec import DeploymentConfig, DeploymentSpec
from wakegate.store import DEPLOYMENTS, Store, dep_key

LOADS_FOR_EVER = ["--load-s", "600"]


def spec_of(revision: int = 1, status: str = "ready") -> DeploymentSpec:
    return DeploymentSpec(
        tenant="acme",
        name="d",
        uuid=str(uuid.uuid4()),
        description=None,
        config=DeploymentConfig(base_model="sim-llm"),
        status=status,
        revision=revision,
        created_at=0.0,
        updated_at=0.0,
    )


# --- the compare-and-set, store level -------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "read", "written"),
    [
        ((1, "ready"), (1, "ready"), True),
        ((2, "ready"), (1, "ready"), False),
        ((1, "deleting"), (1, "ready"), False),
        ((1, "failed"), (1, "ready"), False),
        ((1, "updating"), (1, "updating"), True),
        (None, (1, "ready"), False),
    ],
    ids=[
        "unchanged-since-read-is-written",
        "newer-revision-stored-wins",
        "deleted-since-read-stays-deleting",
        "status-changed-since-read-wins",
        "rollout-read-as-updating-is-written",
        "purged-since-read-is-never-recreated",
    ],
)
async def test_a_spec_is_replaced_only_while_it_is_what_the_writer_read(
    store: Store, stored: tuple[int, str] | None, read: tuple[int, str], written: bool
) -> None:
    if stored is not None:
        await store.put_deployment(spec_of(*stored))
    before = await store.redis.get(dep_key("acme/d", "spec"))
    seen = spec_of(*read)
    update = replace(seen, revision=seen.revision + 1, description="changed")
    assert await store.replace_deployment(seen, update) is written
    after = await store.get_deployment("acme/d")
    if written:
        assert after is not None and after.description == "changed"
    else:
        assert await store.redis.get(dep_key("acme/d", "spec")) == before


# --- PUT racing DELETE on a real stack ------------------------------------------------------


def stored_spec(stack: Stack, name: str) -> dict[str, Any] | None:
    r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        raw = r.get(dep_key(f"{stack.tenant}/{name}", "spec"))
        return json.loads(raw) if raw else None
    finally:
        r.close()


def indexed(stack: Stack, name: str) -> bool:
    r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        return bool(r.sismember(DEPLOYMENTS, f"{stack.tenant}/{name}"))
    finally:
        r.close()


async def put_and_delete_together(stack: Stack, name: str, puts: int) -> tuple[list[int], int]:
    url = f"{stack.base}/v2/deployments/{name}"
    async with httpx.AsyncClient(headers=stack.headers, timeout=60) as client:
        replies = await asyncio.gather(
            *(client.put(url, json={"description": f"put {i}"}) for i in range(puts)),
            client.delete(url),
        )
    for r in replies:
        assert r.headers["Content-Type"].startswith("application/json"), r.text
    return [r.status_code for r in replies[:-1]], replies[-1].status_code


def test_put_racing_delete_never_resurrects_the_deployment(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack(backend="sim")
    names = [f"{name}-{i}" for i in range(25)]
    for n in names:
        stack.create(n, baseModel="sim-llm", minReplicas=0, maxReplicas=1)
        put_codes, delete_code = asyncio.run(put_and_delete_together(stack, n, puts=4))
        assert delete_code == 200
        # A PUT either landed before the DELETE, or lost to it (404) or to another PUT (409).
        assert set(put_codes) <= {200, 404, 409}, put_codes
        assert stack.api("GET", f"/v2/deployments/{n}").status_code == 404
        spec = stored_spec(stack, n)
        assert spec is None or spec["status"] == "deleting", f"{n} came back: {spec}"
    # Once purged, nothing is written back: no spec without its index entry either. (The purge
    # deletes the spec, then removes the index entry: wait for both.)
    for n in names:
        wait_until(
            lambda n=n: stored_spec(stack, n) is None and not indexed(stack, n),
            60,
            f"{n} purged, spec and index entry",
        )
    for n in names:
        assert stored_spec(stack, n) is None
        assert stack.api("GET", f"/v2/deployments/{n}").status_code == 404


def test_concurrent_updates_each_land_or_get_409_naming_the_revision(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack(backend="sim")
    stack.create(name, baseModel="sim-llm", minReplicas=0, maxReplicas=1)
    codes = asyncio.run(concurrent_puts(stack, name, 8))
    # Concurrent PUTs each either land (on a fresh read if need be) or get 409 naming revision.
    assert set(codes) <= {200, 409}, codes
    spec = stored_spec(stack, name)
    assert spec is not None
    assert spec["revision"] == 1 + codes.count(200)
    stack.delete(name)


async def concurrent_puts(stack: Stack, name: str, n: int) -> list[int]:
    url = f"{stack.base}/v2/deployments/{name}"
    async with httpx.AsyncClient(headers=stack.headers, timeout=60) as client:
        replies = await asyncio.gather(
            *(client.put(url, json={"description": f"put {i}"}) for i in range(n))
        )
    for r in replies:
        if r.status_code == 409:
            assert r.json()["field"] == "revision", r.text
    return [r.status_code for r in replies]


# --- DELETE stops a starting replica at once --------------------------------------------------


def test_delete_while_a_replica_loads_stops_it_and_frees_the_name_at_once(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack(backend="sim")
    stack.create(name, baseModel="sim-llm", minReplicas=1, maxReplicas=1, customArgs=LOADS_FOR_EVER)
    loading = wait_until(
        lambda: [r for r, st in stack.sim_replicas(name).items() if st == "loading"],
        30,
        "a loading replica",
    )
    assert stack.api("DELETE", f"/v2/deployments/{name}").status_code == 200
    # Far below the 300 s start timeout the replica would otherwise load for.
    wait_until(
        lambda: all(stack.sim_replicas(name).get(r, "stopped") == "stopped" for r in loading),
        60,
        "the loading replica stopped",
    )
    wait_until(
        lambda: (
            stack.api(
                "POST",
                "/v2/deployments",
                json={"name": name, "config": {"baseModel": "sim-llm", "minReplicas": 0}},
            ).status_code
            == 200
        ),
        60,
        "the name free again",
    )


def test_a_restarted_scaler_keeps_the_start_timeout_of_a_replica_it_adopts(
    make_stack: Callable[..., Stack], name: str
) -> None:
    timeout_s = 20
    stack = make_stack(backend="sim", replica_start_timeout_s=timeout_s)
    stack.create(name, baseModel="sim-llm", minReplicas=1, maxReplicas=1, customArgs=LOADS_FOR_EVER)
    rec = wait_until(
        lambda: next((r for r in stack.registry(name).values() if r["url"]), None),
        30,
        "a launched replica",
    )
    stack.scalers[0].stop()
    stack.scalers.clear()
    # The replica's start timeout runs out while no scaler watches it.
    wait_until(lambda: time.time() > rec["created_at"] + timeout_s, timeout_s + 5, "timeout")
    assert stack.sim_replicas(name).get(rec["id"]) == "loading"
    # A new leader that granted it another full timeout would stop it no sooner than
    # timeout_s after it started, so the deadline counts from here, the scaler's start-up
    # (slow on a loaded machine) included, rather than from its health check.
    restarted = time.monotonic()
    stack.start_scaler()
    # The new leader gives it up at once instead of granting it another full timeout.
    # (Stopped on the host first, then its record removed: wait for both.)
    wait_until(
        lambda: (
            stack.sim_replicas(name).get(rec["id"], "stopped") == "stopped"
            and rec["id"] not in stack.registry(name)
        ),
        restarted + timeout_s * 0.9 - time.monotonic(),
        "the overdue replica stopped and its record removed",
    )
    stack.delete(name)
