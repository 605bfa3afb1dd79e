"""Cold starts, scale-out and scale-to-zero with real llama.cpp replicas."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from harness import Stack, wait_until


def metric(stack: Stack, name: str, deployment: str) -> float:
    text = httpx.get(f"{stack.base}/metrics", headers=stack.metrics_headers).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and f'deployment="{deployment}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_first_request_to_a_cold_deployment_starts_exactly_one_replica(
    stack: Stack, name: str
) -> None:
    stack.create(name, minReplicas=0, maxReplicas=2, cooldownTime=60)
    time.sleep(2)  # a few reconcile passes: nothing may start without a request
    assert stack.replicas_started(name) == set()
    r = stack.generate(name)
    assert r.status_code == 200, r.text
    assert r.json()["generated_text"].strip()
    assert len(stack.replicas_started(name)) == 1
    key = f"{stack.tenant}/{name}"
    assert metric(stack, "wakegate_wakes_total", key) == 1
    assert metric(stack, "wakegate_cold_start_seconds_count", key) == 1
    stack.delete(name)


def test_twenty_concurrent_cold_requests_start_one_replica_and_all_succeed(
    stack: Stack, name: str
) -> None:
    stack.create(name, minReplicas=0, maxReplicas=1, cooldownTime=60)
    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda i: stack.generate(name, f"Count to {i}:", 4), range(20)))
    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses]
    assert all(r.json()["generated_text"].strip() for r in responses)
    assert len(stack.replicas_started(name)) == 1
    assert metric(stack, "wakegate_wakes_total", f"{stack.tenant}/{name}") == 1
    stack.delete(name)


class Load:
    """Closed-loop clients that keep `n` requests outstanding until stopped."""

    def __init__(self, stack: Stack, name: str, n: int) -> None:
        self.stack, self.name = stack, name
        self.stop = threading.Event()
        self.codes: list[int] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def _run(self) -> None:
        while not self.stop.is_set():
            r = self.stack.generate(self.name, "Write a haiku about the sea:", 12)
            self.codes.append(r.status_code)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)


def scale_out_then_in(stack: Stack, name: str, min_replicas: int) -> None:
    stack.create(
        name, minReplicas=min_replicas, maxReplicas=2, scaleUpRequestThreshold=1, cooldownTime=4
    )
    most_running = 0
    with Load(stack, name, 4) as load:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and stack.ready_replicas(name) < 2:
            most_running = max(most_running, len(stack.replicas_running(name)))
            time.sleep(0.2)
        assert stack.ready_replicas(name) == 2, stack.logs()
        # Sustained load at max: a third replica must never appear.
        until = time.monotonic() + 5
        while time.monotonic() < until:
            most_running = max(most_running, len(stack.replicas_running(name)))
            time.sleep(0.2)
    assert load.codes and set(load.codes) == {200}, load.codes
    assert most_running == 2
    scaler_metrics = httpx.get(
        f"http://127.0.0.1:{stack.scaler_port}/metrics", headers=stack.metrics_headers
    ).text
    key = f"{stack.tenant}/{name}"
    decisions = [
        ln
        for ln in scaler_metrics.splitlines()
        if ln.startswith(f'wakegate_scaling_decisions_total{{deployment="{key}"')
    ]
    assert any('reason="wake"' in ln or 'reason="scale up"' in ln for ln in decisions)
    assert f'wakegate_replica_start_seconds_count{{deployment="{key}"}} 2.0' in scaler_metrics
    assert len(stack.replicas_started(name)) == 2
    wait_until(
        lambda: len(stack.replicas_running(name)) == min_replicas,
        60,
        f"drain down to {min_replicas} replica(s)",
    )
    time.sleep(6)  # more than a cooldown: nothing else stops, nothing restarts
    assert len(stack.replicas_running(name)) == min_replicas
    assert stack.ready_replicas(name) == min_replicas
    stack.delete(name)


def test_sustained_load_scales_out_to_max_then_drains_to_zero(stack: Stack, name: str) -> None:
    scale_out_then_in(stack, name, min_replicas=0)


def test_sustained_load_scales_out_to_max_then_drains_to_min_one(stack: Stack, name: str) -> None:
    scale_out_then_in(stack, name, min_replicas=1)
