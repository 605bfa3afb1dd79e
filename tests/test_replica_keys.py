"""Per-replica keys (finding 7 of the security review): a replica answers only requests that
carry the key the scaler gave it, which the gateway reads from the replica's record; a direct
call to the replica's address, published or guessed, gets 401."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import httpx
from harness import Stack, wait_until

COMPLETION = {"prompt": "hello", "max_tokens": 2}


def ready_record(stack: Stack, name: str) -> dict[str, Any]:
    def one_ready() -> dict[str, Any] | None:
        ready = [r for r in stack.registry(name).values() if r["state"] == "ready"]
        return ready[0] if ready else None

    record: dict[str, Any] = wait_until(one_ready, 120, "a ready replica")
    return record


def assert_guarded(stack: Stack, name: str, record: dict[str, Any], model: str) -> None:
    url, key = record["url"], record["key"]
    assert len(key) >= 32
    body = {**COMPLETION, "model": model}
    assert httpx.post(url + "/v1/completions", json=body, timeout=30).status_code == 401
    wrong = {"Authorization": "Bearer not-the-key"}
    assert (
        httpx.post(url + "/v1/completions", json=body, headers=wrong, timeout=30).status_code == 401
    )
    right = {"Authorization": f"Bearer {key}"}
    assert (
        httpx.post(url + "/v1/completions", json=body, headers=right, timeout=60).status_code == 200
    )
    r = stack.generate(name, max_new_tokens=2)
    assert r.status_code == 200, r.text
    for log in [stack.gateway.log, *(s.log for s in stack.scalers)]:
        assert key not in log.read_text(errors="replace"), log


def test_sim_replica_refuses_calls_without_its_key_and_serves_the_gateway(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack(backend="sim")
    stack.create(name, baseModel="sim-llm", minReplicas=1, customArgs=["--load-s", "0"])
    record = ready_record(stack, name)
    # Replica ids carry 64 random bits: two tenants' deployments may share a name, and ids
    # name Ray actors, Pods and manifest files (review finding 18).
    assert re.fullmatch(rf"{name}-[0-9a-f]{{16}}", record["id"]), record["id"]
    assert_guarded(stack, name, record, "sim-llm")
    # The host's own listing (its control API) does not give the key away either.
    sim_host = json.loads((stack.state_dir / "sim-host.json").read_text())
    host = httpx.get(sim_host["url"] + "/replicas", timeout=10, headers=bearer(sim_host["token"]))
    assert host.status_code == 200 and record["id"] in host.text
    assert record["key"] not in host.text
    # Review 2026-12b, finding 11: the control API lists and stops every tenant's replicas;
    # without the host's token (in its owner-only state file) it answers nothing but health.
    assert (stack.state_dir / "sim-host.json").stat().st_mode & 0o077 == 0
    for method, path in (
        ("GET", "/replicas"),
        ("GET", "/pool"),
        ("GET", "/usage"),
        ("DELETE", f"/replicas/{record['id']}"),
        ("POST", "/shutdown"),
    ):
        r = httpx.request(method, sim_host["url"] + path, timeout=10,
                          headers=bearer("wrong"))  # fmt: skip
        assert r.status_code == 401, (method, path)
    assert httpx.get(sim_host["url"] + "/health", timeout=10).status_code == 200
    assert stack.sim_replicas(name), "nothing was stopped"
    assert record["key"] not in (stack.state_dir / "sim-host.log").read_text()


def test_llamacpp_replica_refuses_calls_without_its_key_and_serves_the_gateway(
    stack: Stack, name: str
) -> None:
    stack.create(name, minReplicas=1, maxReplicas=1)
    record = ready_record(stack, name)
    assert_guarded(stack, name, record, "gemma-3-270m")
    # Neither argv (any local user reads it) nor the replica's log holds the key.
    replica_log = (stack.state_dir / "replicas" / f"{record['id']}.log").read_text()
    assert record["key"] not in replica_log
    pid = record["handle"]["pid"]
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        assert record["key"].encode() not in fh.read()
    stack.delete(name)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
