"""What one tenant can make Redis hold is bounded: async jobs expire and leave with their
deployment, request-log entries are cut to a size, and a Redis at its maxmemory makes the
gateway answer 503 with Retry-After, leaving nothing half-written."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from harness import Stack, start_redis, wait_until

from router.jobs import job_ttl_s
from router.request_log import clip_messages, clip_text
from wakegate.store import JOB_DEPLOYMENTS, dep_key, tenant_deployments_key

LOADS_FOR_EVER = ["--load-s", "600"]
FAST = ["--load-s", "0.2", "--ttft-s", "0.01", "--tps", "500"]


def client(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.redis_url, decode_responses=True)


def job_keys(stack: Stack, name: str) -> list[str]:
    r = client(stack)
    try:
        prefix = dep_key(f"{stack.tenant}/{name}", "")
        return sorted(k for part in ("job:*", "claim:*") for k in r.scan_iter(match=prefix + part))
    finally:
        r.close()


def submit(stack: Stack, name: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        stack.deploy_url(name) + "/async", headers=stack.headers, json=body, timeout=30
    )


# --- async jobs ---------------------------------------------------------------------------


def test_a_job_expires_from_its_creation_and_never_stores_the_api_token(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack(backend="sim", queue_timeout_s=120, async_result_ttl_s=3600)
    stack.create(name, baseModel="sim-llm", customArgs=LOADS_FOR_EVER)
    secret = "hf_ADAPTER_SECRET"
    r = submit(stack, name, {"inputs": "hi", "parameters": {"api_token": secret}})
    assert r.status_code == 202, r.text
    key = dep_key(f"{stack.tenant}/{name}", f"job:{r.json()['id']}")
    rc = client(stack)
    try:
        ttl = rc.ttl(key)
        assert 0 < ttl <= job_ttl_s(120, 3600)
        assert ttl > 3600, "it lives for the queue timeout and its runs, then its result TTL"
        stored = rc.hgetall(key)
    finally:
        rc.close()
    assert json.loads(stored["status"]) == "queued"
    assert secret not in json.dumps(stored)
    assert "api_token" not in json.loads(stored["request"])["parameters"]
    stack.delete(name)


def test_deleting_a_deployment_purges_its_queued_jobs(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack(backend="sim")
    stack.create(name, baseModel="sim-llm", customArgs=LOADS_FOR_EVER)
    ids = [submit(stack, name, {"inputs": f"job {i}"}).json()["id"] for i in range(3)]
    assert len(job_keys(stack, name)) == 3, ids
    key = f"{stack.tenant}/{name}"
    rc = client(stack)
    try:
        assert rc.sismember(JOB_DEPLOYMENTS, key)
        assert stack.api("DELETE", f"/v2/deployments/{name}").status_code == 200
        # The purge removes the jobs, then the spec, then the job index entry: wait for the last.
        wait_until(
            lambda: not rc.exists(dep_key(key, "spec")) and not rc.sismember(JOB_DEPLOYMENTS, key),
            60,
            f"{name} purged, spec and job index entry",
        )
        assert job_keys(stack, name) == []
        assert not rc.exists(dep_key(key, "running"), dep_key(key, "queue"))
    finally:
        rc.close()


# --- request log --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "budget", "kept", "cut"),
    [
        ("short", 10, "short", False),
        ("exactly10!", 10, "exactly10!", False),
        ("a" * 11, 10, "a" * 10, True),
        ("é" * 6, 5, "é" * 2, True),  # two bytes each: never half a character
        ("anything", 0, "", True),
    ],
    ids=["fits", "fits-exactly", "cut-to-budget", "cut-between-characters", "no-budget"],
)
def test_log_text_is_cut_to_its_byte_budget(text: str, budget: int, kept: str, cut: bool) -> None:
    assert clip_text(text, budget) == (kept, cut)


def test_log_messages_share_one_byte_budget_earliest_first() -> None:
    messages = [{"role": "system", "content": "s" * 6}, {"role": "user", "content": "u" * 10}]
    kept, cut = clip_messages(messages, 20)
    assert cut
    assert kept == [{"role": "system", "content": "s" * 6}, {"role": "user", "content": "u" * 4}]
    assert clip_messages(messages, 100) == (messages, False)


def test_request_log_entries_are_truncated_served_or_refused(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack(backend="sim", request_log_max_bytes=1000)
    stack.create(
        name, baseModel="sim-llm", customArgs=FAST, maxTotalTokens=256, requestLoggingEnabled=True
    )
    start = time.time()
    served = stack.generate(name, "é" * 3000, 4)  # one "word": one prompt token on the sim
    assert served.status_code == 200, served.text
    # 301 prompt tokens do not fit a 256-token context: the replica refuses it.
    refused = stack.generate(name, "w " * 300 + "é" * 3000, 4)
    assert 400 <= refused.status_code < 500, refused.text
    r = stack.api("GET", f"/v2/deployments/{name}/requests", params={"start": start - 1})
    entries = [json.loads(line) for line in r.text.splitlines()]
    assert [e["status"] for e in entries] == [200, refused.status_code]
    for e in entries:
        assert e["truncated"] is True
        assert len(e["prompt"].encode()) <= 1000
    assert entries[0]["prompt"] == "é" * 500
    assert entries[0]["output"]
    stack.delete(name)


# --- Redis at its maxmemory -----------------------------------------------------------------

MAXMEMORY = 64 * 1024 * 1024


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server of its own with a memory limit and no eviction, like `wakegate up`'s."""
    proc, url = start_redis(
        tmp_path, "--maxmemory", str(MAXMEMORY), "--maxmemory-policy", "noeviction"
    )
    yield url + "/0"
    proc.stop()


def fill(r: redis.Redis) -> None:
    """Write until Redis refuses, then hold it there (a limit just under what it uses, so
    nothing the stack frees meanwhile opens room)."""
    for i in itertools.count():
        try:
            r.set(f"filler:{i}", b"x" * (1024 * 1024))
        except redis.exceptions.OutOfMemoryError:
            break
    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory", used - 4 * 1024 * 1024)


def unfill(r: redis.Redis) -> None:
    r.config_set("maxmemory", MAXMEMORY)
    for key in r.scan_iter(match="filler:*"):
        r.delete(key)


def test_redis_at_its_maxmemory_gets_503_with_retry_after_and_nothing_half_written(
    small_redis: str, infra: dict[str, Any], tmp_path: Path, name: str
) -> None:
    stack = Stack(tmp_path / "stack", small_redis, infra["mqtt_url"], backend="sim").start()
    try:
        stack.create(name, baseModel="sim-llm", customArgs=LOADS_FOR_EVER)
        key = f"{stack.tenant}/{name}"
        r = client(stack)
        try:
            fill(r)
            lorax = submit(stack, name, {"inputs": "async"})
            assert lorax.status_code == 503, lorax.text
            assert int(lorax.headers["Retry-After"]) > 0
            assert lorax.json()["error_type"] == "overloaded"
            sync = stack.generate(name, "sync", 4, timeout=30)
            assert sync.status_code == 503, sync.text
            assert int(sync.headers["Retry-After"]) > 0
            openai = httpx.post(
                stack.deploy_url(name) + "/v1/completions",
                headers=stack.headers,
                json={"model": "", "prompt": "hi", "max_tokens": 2},
                timeout=30,
            )
            assert openai.status_code == 503, openai.text
            assert openai.json()["error"]["message"]
            create = stack.api(
                "POST",
                "/v2/deployments",
                json={"name": name + "-2", "config": {"baseModel": "sim-llm"}},
            )
            assert create.status_code == 503, create.text
            assert create.json()["error"] and create.headers["Retry-After"]
            # Nothing half-written: no job, no queue entry, no reserved name.
            assert job_keys(stack, name) == []
            assert r.zcard(dep_key(key, "queue")) == 0 and r.hlen(dep_key(key, "qmeta")) == 0
            assert not r.sismember(tenant_deployments_key(stack.tenant), name + "-2")
            assert not r.exists(dep_key(f"{key}-2", "spec"))

            unfill(r)
            again = submit(stack, name, {"inputs": "async"})
            assert again.status_code == 202, again.text
            assert len(job_keys(stack, name)) == 1
        finally:
            unfill(r)
            r.close()
        stack.delete(name)
    finally:
        stack.stop()
