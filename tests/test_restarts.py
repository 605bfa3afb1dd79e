"""Crashes and restarts of the gateway and the scaler lose nothing and duplicate nothing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import httpx
import pytest
import redis
from harness import Stack, wait_until

from wakegate.store import dep_key


def test_gateway_killed_with_requests_queued_loses_no_deployment_and_recovers(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack()
    stack.create(name, minReplicas=0, maxReplicas=1, cooldownTime=60)
    outcomes: list[str] = []

    def client(i: int) -> None:
        try:
            r = stack.generate(name, f"Tell me about {i}", 32)
            outcomes.append(str(r.status_code))
        except httpx.HTTPError as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    wait_until(lambda: stack.queued(name) >= 3, 20, "requests waiting in the queue")
    stack.gateway.kill9()
    for t in threads:
        t.join(60)
    assert len(outcomes) == 6  # every client got an answer or a connection error, none hangs

    stack.start_gateway()
    assert name in [d["name"] for d in stack.api("GET", "/v2/deployments").json()["data"]]
    r = stack.generate(name)
    assert r.status_code == 200, r.text
    assert r.json()["generated_text"].strip()
    # The dead gateway's entries expire instead of blocking the queue for good.
    wait_until(lambda: stack.queued(name) == 0, 30, "orphaned queue entries expire")
    assert all(s.alive() for s in stack.scalers)
    assert len(stack.replicas_started(name)) == 1


def test_gateway_restart_keeps_serving_queued_and_new_requests(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack()
    stack.create(name, minReplicas=1, maxReplicas=1, cooldownTime=60)
    wait_until(lambda: stack.ready_replicas(name) == 1, 60, "min replica ready")
    stack.gateway.stop()  # graceful: SIGTERM
    stack.start_gateway()
    for _ in range(3):
        r = stack.generate(name)
        assert r.status_code == 200, r.text
    assert len(stack.replicas_started(name)) == 1


def test_restarted_scaler_adopts_running_replicas_instead_of_starting_new_ones(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack()
    stack.create(name, minReplicas=0, maxReplicas=2, cooldownTime=120)
    assert stack.generate(name).status_code == 200
    before = stack.replicas_running(name)
    assert len(before) == 1

    stack.scalers[0].kill9()
    stack.scalers.clear()
    # While no scaler runs, the replica keeps serving.
    assert stack.generate(name).status_code == 200
    stack.start_scaler()
    time.sleep(5)  # several reconcile passes and a leader lease period
    assert stack.replicas_running(name) == before
    assert stack.replicas_started(name) == before
    assert set(stack.registry(name)) == before
    assert stack.ready_replicas(name) == 1
    assert stack.generate(name).status_code == 200


def forget_address(stack: Stack, name: str) -> None:
    """Make the registry look as if the scaler died after the backend launched the replica but
    before it recorded where the replica listens."""
    key = f"{stack.tenant}/{name}"
    r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        (replica_id,) = r.hkeys(dep_key(key, "replicas"))
        rec = json.loads(r.hget(dep_key(key, "replicas"), replica_id))
        rec.update(state="starting", url="", handle={})
        r.hset(dep_key(key, "replicas"), replica_id, json.dumps(rec))
        r.hdel(dep_key(key, "routable"), replica_id)
    finally:
        r.close()


@pytest.mark.parametrize("address_recorded", [True, False], ids=["address-known", "no-address"])
def test_replica_started_but_not_ready_when_the_scaler_died_is_adopted_and_probed(
    make_stack: Callable[..., Stack], name: str, address_recorded: bool
) -> None:
    stack = make_stack()
    stack.create(name, minReplicas=1, maxReplicas=1, cooldownTime=120)
    wait_until(lambda: stack.replicas_running(name), 30, "replica launched")
    stack.scalers[0].kill9()
    stack.scalers.clear()
    if not address_recorded:
        forget_address(stack, name)
    stack.start_scaler()
    wait_until(lambda: stack.ready_replicas(name) == 1, 60, "adopted replica becomes ready")
    assert len(stack.replicas_started(name)) == 1
    assert stack.generate(name).status_code == 200
