"""Async requests that outlive gateways and replicas; request logs on demand only."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import redis
from harness import Stack, wait_until

from wakegate.store import dep_key


def submit(stack: Stack, name: str, prompt: str, tokens: int = 8) -> str:
    r = httpx.post(stack.deploy_url(name) + "/async", headers=stack.headers, timeout=30,
                   json={"inputs": prompt, "parameters": {"max_new_tokens": tokens}})  # fmt: skip
    assert r.status_code == 202, r.text
    assert r.headers["Location"].endswith(r.json()["id"])
    return str(r.json()["id"])


def job(stack: Stack, name: str, job_id: str) -> dict[str, Any]:
    r = httpx.get(f"{stack.deploy_url(name)}/async/{job_id}", headers=stack.headers, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def done(stack: Stack, name: str, job_id: str, timeout: float = 120) -> dict[str, Any]:
    return dict(wait_until(lambda: (j := job(stack, name, job_id))["status"] in ("done", "failed")
                           and j, timeout, f"async request {job_id}"))  # fmt: skip


def test_async_request_returns_an_id_at_once_and_its_result_later(stack: Stack, name: str) -> None:
    stack.create(name, minReplicas=0, maxReplicas=1, cooldownTime=60)
    t0 = time.monotonic()
    job_id = submit(stack, name, "The capital of France is")
    assert time.monotonic() - t0 < 5, "no waiting for the cold start"
    assert job(stack, name, job_id)["status"] in ("queued", "running")
    result = done(stack, name, job_id)
    assert result["status"] == "done", result
    assert result["result"]["generated_text"].strip()
    missing = httpx.get(f"{stack.deploy_url(name)}/async/nope", headers=stack.headers)
    assert missing.status_code == 404
    stack.delete(name)


def test_async_requests_survive_kill9_of_the_gateway_that_accepted_them(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack()
    stack.create(name, minReplicas=0, maxReplicas=1, cooldownTime=60)
    queued = [submit(stack, name, f"Story {i}:", 8) for i in range(3)]
    stack.gateway.kill9()  # before any of them ran: the replica is still cold
    stack.start_gateway()
    for job_id in queued:
        assert done(stack, name, job_id)["status"] == "done"
    # Killed while running one: its claim lapses, another gateway runs it again.
    long_job = submit(stack, name, "Write a long story about a dragon:", 300)
    wait_until(lambda: job(stack, name, long_job)["status"] == "running", 60, "running")
    stack.gateway.kill9()
    stack.start_gateway()
    result = done(stack, name, long_job, timeout=180)
    assert result["status"] == "done" and result["attempts"] == 2, result


def test_async_request_survives_kill9_of_the_replica_serving_it(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack(reconcile_interval_s=60)
    stack.create(name, minReplicas=2, maxReplicas=2, cooldownTime=600)
    wait_until(lambda: stack.ready_replicas(name) == 2, 90, "two replicas ready")
    long_job = submit(stack, name, "Write a long story about a dragon:", 300)
    wait_until(lambda: job(stack, name, long_job)["status"] == "running", 60, "running")
    r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        members = r.zrange(dep_key(f"{stack.tenant}/{name}", "inflight"), 0, -1)
    finally:
        r.close()
    (serving,) = [m.split("|")[0] for m in members if m.endswith("|" + long_job)]
    os.kill(int(stack.registry(name)[serving]["handle"]["pid"]), signal.SIGKILL)
    result = done(stack, name, long_job, timeout=180)
    assert result["status"] == "done", result
    assert result["replica"] != serving and result["attempts"] == 2


def test_request_logs_are_kept_and_downloadable_only_when_enabled(stack: Stack, name: str) -> None:
    logged, silent = name + "-log", name + "-quiet"
    stack.create(logged, minReplicas=0, maxReplicas=1, cooldownTime=60,
                 requestLoggingEnabled=True)  # fmt: skip
    stack.create(silent, minReplicas=0, maxReplicas=1, cooldownTime=60)
    start = time.time()
    assert stack.generate(logged, "Log me:", 4).status_code == 200
    httpx.post(stack.deploy_url(logged) + "/v1/chat/completions", headers=stack.headers,
               timeout=120, json={"model": "", "max_tokens": 4,
                                  "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert stack.generate(silent, "Do not log me:", 4).status_code == 200
    assert done(stack, logged, submit(stack, logged, "Async, log me:", 4))["status"] == "done"
    assert done(stack, silent, submit(stack, silent, "Async, not me:", 4))["status"] == "done"

    r = stack.api("GET", f"/v2/deployments/{logged}/requests",
                  params={"start": start - 1, "end": time.time() + 1})  # fmt: skip
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    entries = [json.loads(line) for line in r.text.splitlines()]
    assert [e["api"] for e in entries] == ["lorax", "openai", "async"]
    assert entries[2]["prompt"] == "Async, log me:" and entries[2]["output"]
    assert entries[0]["prompt"] == "Log me:" and entries[0]["output"]
    assert entries[1]["messages"] == [{"role": "user", "content": "hi"}]
    assert all(e["replica"] and e["status"] == 200 for e in entries)
    assert all(e["ttft_s"] is not None for e in entries[:2])
    later = stack.api("GET", f"/v2/deployments/{logged}/requests",
                      params={"start": time.time() + 60, "end": time.time() + 120})  # fmt: skip
    assert later.text == ""
    assert stack.api("GET", f"/v2/deployments/{silent}/requests").text == ""
    r2 = redis.Redis.from_url(stack.redis_url)
    try:
        assert not r2.exists(dep_key(f"{stack.tenant}/{silent}", "reqlog"))
    finally:
        r2.close()
    bad = stack.api("GET", f"/v2/deployments/{logged}/requests", params={"start": "yesterday"})
    assert bad.status_code == 400 and bad.json()["field"] == "start"
    stack.delete(logged)
    stack.delete(silent)
