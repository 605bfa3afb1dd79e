"""Priorities, queue limits and retries on another replica, with real llama.cpp replicas."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

import httpx
import openai
import pytest
from harness import Stack, wait_until
from openai import OpenAI
from test_queue_e2e import busy_replica


def test_priority_orders_the_queue(stack: Stack, name: str) -> None:
    stack.create(name, minReplicas=1, maxReplicas=1, cooldownTime=60)
    wait_until(lambda: stack.ready_replicas(name) == 1, 60, "replica ready")
    long_request = busy_replica(stack, name)
    finished: list[str] = []

    def send(label: str, priority: int) -> None:
        r = httpx.post(
            stack.deploy_url(name) + "/generate",
            timeout=120,
            headers={**stack.headers, "X-Wakegate-Priority": str(priority)},
            json={"inputs": f"{label}:", "parameters": {"max_new_tokens": 2}},
        )
        assert r.status_code == 200, r.text
        finished.append(label)

    threads = []
    for n, (label, priority) in enumerate([("low-1", 0), ("low-2", 0), ("high", 5)], 1):
        threads.append(threading.Thread(target=send, args=(label, priority)))
        threads[-1].start()
        wait_until(lambda n=n: stack.queued(name) == n, 10, f"{label} queued")
    long_request.join(120)
    for t in threads:
        t.join(60)
    assert finished == ["high", "low-1", "low-2"]
    stack.delete(name)


def test_queue_limit_answers_429_with_retry_after_and_changes_nothing(
    stack: Stack, name: str
) -> None:
    stack.create(name, minReplicas=1, maxReplicas=1, cooldownTime=60, maxQueueLength=2)
    wait_until(lambda: stack.ready_replicas(name) == 1, 60, "replica ready")
    long_request = busy_replica(stack, name)
    waiting = [threading.Thread(target=stack.generate, args=(name, "x", 2)) for _ in range(2)]
    for t in waiting:
        t.start()
    wait_until(lambda: stack.queued(name) == 2, 10, "queue full")

    r = stack.generate(name, "one too many", 2)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "2"
    assert r.json()["error_type"] == "overloaded"
    client = OpenAI(api_key=stack.token, base_url=stack.deploy_url(name) + "/v1", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model="", prompt="hi", max_tokens=2)
    with httpx.stream("POST", stack.deploy_url(name), headers=stack.headers,
                      json={"inputs": "hi", "stream": True}) as resp:  # fmt: skip
        assert resp.status_code == 429, "a full queue refuses a stream before its 200"
    assert stack.queued(name) == 2

    long_request.join(120)
    for t in waiting:
        t.join(60)
    assert stack.generate(name, "room again", 2).status_code == 200
    stack.delete(name)


def test_request_whose_replica_was_killed_is_retried_on_another(
    make_stack: Callable[..., Stack], name: str
) -> None:
    # A slow reconcile keeps the dead replica registered, so requests really reach it.
    stack = make_stack(reconcile_interval_s=600)
    stack.create(name, minReplicas=2, maxReplicas=2, cooldownTime=600)
    wait_until(lambda: stack.ready_replicas(name) == 2, 90, "two replicas ready")
    victim = sorted(stack.registry(name))[0]
    os.kill(int(stack.registry(name)[victim]["handle"]["pid"]), signal.SIGKILL)
    codes = [stack.generate(name, f"Request {i}:", 4).status_code for i in range(6)]
    streamed = []
    with httpx.stream("POST", stack.deploy_url(name), headers=stack.headers, timeout=60,
                      json={"inputs": "Once", "stream": True,
                            "parameters": {"max_new_tokens": 4}}) as resp:  # fmt: skip
        streamed = [line for line in resp.iter_lines() if line.startswith("data:")]
    assert codes == [200] * 6
    assert streamed and "error" not in streamed[-1]
    metrics = httpx.get(f"{stack.base}/metrics", headers=stack.metrics_headers).text
    retried = [ln for ln in metrics.splitlines() if ln.startswith("wakegate_retries_total{")]
    assert retried and float(retried[0].rsplit(" ", 1)[1]) >= 1


def test_request_the_replica_refuses_gets_its_4xx_at_once_and_is_not_retried(
    stack: Stack, name: str
) -> None:
    # A 64-token context: a long prompt is refused by llama.cpp itself (400). Another replica
    # would refuse it too, so the gateway passes the error through, retries nowhere and keeps
    # routing to the replica.
    stack.create(name, minReplicas=1, maxReplicas=1, cooldownTime=60, maxTotalTokens=64)
    wait_until(lambda: stack.ready_replicas(name) == 1, 90, "replica ready")
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 40
    refused = stack.generate(name, long_prompt, 8)
    assert 400 <= refused.status_code < 500, refused.text
    assert "replica answered 400" in refused.json()["error"]
    # llama-cpp-python refuses a stream after its 200 and closes that connection; the gateway
    # must find the reason on another one, each time (the close races the next request).
    for _ in range(3):
        streamed = httpx.post(
            stack.deploy_url(name) + "/generate_stream",
            headers=stack.headers,
            json={"inputs": long_prompt, "parameters": {"max_new_tokens": 8}},
            timeout=60,
        )
        assert '"error_type":"validation"' in streamed.text.replace(" ", ""), streamed.text
        assert "context" in streamed.text, streamed.text
    metrics = httpx.get(f"{stack.base}/metrics", headers=stack.metrics_headers).text
    retried = [ln for ln in metrics.splitlines()
               if ln.startswith("wakegate_retries_total{") and f'/{name}"' in ln]  # fmt: skip
    assert all(ln.endswith(" 0.0") for ln in retried), "a refusal is never retried elsewhere"
    ok = stack.generate(name, "Hello", 4)
    assert ok.status_code == 200, ok.text
    stack.delete(name)
