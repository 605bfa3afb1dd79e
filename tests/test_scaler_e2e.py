"""The scaler with real processes: lost events, leader hand-over, failures, live updates."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import Stack, start_mosquitto, wait_until


def leader_of(stack: Stack, ports: list[int]) -> list[int]:
    out = []
    for port in ports:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()["leader"]:
                out.append(port)
        except httpx.HTTPError:
            continue
    return out


def events(stack: Stack, name: str) -> list[dict[str, Any]]:
    body = stack.api("GET", f"/llms/{name}/events", params={"detailed": "false"}).json()
    return list(body["ComputeEvents"])


def status(stack: Stack, name: str) -> str:
    return str(stack.api("GET", f"/v2/deployments/{name}").json()["data"]["status"])


def update(stack: Stack, name: str, **config: Any) -> None:
    r = stack.api("PUT", f"/v2/deployments/{name}", json={"config": config})
    assert r.status_code == 200, r.text


def test_cold_request_wakes_its_deployment_with_the_broker_stopped(
    make_stack: Callable[..., Stack], name: str, tmp_path: Path
) -> None:
    broker, url = start_mosquitto(tmp_path)
    stack = make_stack(mqtt=url)
    stack.create(name, minReplicas=0, maxReplicas=1, cooldownTime=60)
    broker.stop()
    t0 = time.monotonic()
    r = stack.generate(name)
    assert r.status_code == 200, r.text
    assert r.json()["generated_text"].strip()
    assert len(stack.replicas_started(name)) == 1
    # Reconcile runs every second in the test stack; the replica itself loads in seconds.
    assert time.monotonic() - t0 < 30


def test_killed_leader_hands_over_to_the_standby_without_duplicates(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack()
    standby = stack.start_scaler()
    ports = [stack.scaler_port, int(standby.env["WAKEGATE_SCALER_PORT"])]  # type: ignore[index]
    assert leader_of(stack, ports) == [stack.scaler_port]
    stack.create(name, minReplicas=1, maxReplicas=1, cooldownTime=60)
    wait_until(lambda: stack.ready_replicas(name) == 1, 60, "replica ready")
    first = stack.replicas_running(name)

    stack.scalers[0].kill9()
    # The lease (3 s in tests) runs out and the standby takes over.
    wait_until(lambda: leader_of(stack, ports[1:]) == ports[1:], 15, "standby becomes leader")
    time.sleep(4)  # a few passes of the new leader
    assert stack.replicas_running(name) == first, "no duplicate, no restart"
    assert stack.replicas_started(name) == first

    # The new leader acts: a cold deployment wakes.
    other = name + "-b"
    stack.create(other, minReplicas=0, maxReplicas=1, cooldownTime=60)
    assert stack.generate(other).status_code == 200
    assert len(stack.replicas_started(other)) == 1


def test_a_replica_that_dies_is_replaced(make_stack: Callable[..., Stack], name: str) -> None:
    stack = make_stack()
    stack.create(name, minReplicas=1, maxReplicas=1, cooldownTime=60)
    wait_until(lambda: stack.ready_replicas(name) == 1, 60, "replica ready")
    (victim,) = stack.replicas_running(name)
    pid = int(stack.registry(name)[victim]["handle"]["pid"])
    os.kill(pid, signal.SIGKILL)

    def replaced() -> bool:
        # One read of the registry: two reads could see the dead replica still "ready" and
        # then gone, before its replacement has even been launched.
        registry = stack.registry(name)
        ready = {rid for rid, r in registry.items() if r["state"] == "ready"}
        return victim not in registry and len(ready) == 1

    wait_until(replaced, 60, "replacement replica ready")
    assert len(stack.replicas_started(name)) == 2
    assert stack.generate(name).status_code == 200


def broken_model(tmp_path: Path) -> Path:
    """A models file whose `broken-gguf` entry names a file llama.cpp cannot load: its
    replicas exit during start-up. (customArgs can no longer break an engine: the gateway
    refuses any flag outside the engine's allowlist.)"""
    weights = tmp_path / "broken.gguf"
    weights.write_bytes(b"not a GGUF file")
    models = tmp_path / "models.toml"
    models.write_text(
        '[models."broken-gguf"]\n'
        'engine = "llamacpp"\n'
        f'weights = "{weights}"\n'
        "context_window = 2048\n"
        'default_accelerator = "cpu"\n'
    )
    return models


@pytest.mark.parametrize("reconcile_s", [1, 600], ids=["reconcile-1s", "retries-on-own-timer"])
def test_failing_engine_backs_off_then_marks_the_deployment_failed(
    make_stack: Callable[..., Stack], name: str, reconcile_s: int, tmp_path: Path
) -> None:
    stack = make_stack(reconcile_interval_s=reconcile_s, models_file=broken_model(tmp_path))
    stack.create(name, baseModel="broken-gguf", minReplicas=0, maxReplicas=1, cooldownTime=60)
    t0 = time.monotonic()
    r = stack.generate(name, timeout=60)
    # The waiting request is answered as soon as the deployment is failed, not at the timeout.
    assert r.status_code == 424, r.text
    assert r.json()["error_type"] == "generation"
    elapsed = time.monotonic() - t0
    assert 6 <= elapsed < 45, "three attempts with 2 s and 4 s backoff between them"
    assert len(stack.replicas_started(name)) == 3
    assert status(stack, name) == "failed"
    # The scaler appends the Failed event just after the status the 424 answers from.
    failed = wait_until(
        lambda: [e for e in events(stack, name) if e["eventType"] == "Failed"],
        30,
        "the Failed event",
    )
    assert len(failed) == 1 and "exited" in failed[0]["message"]
    time.sleep(4)
    assert len(stack.replicas_started(name)) == 3, "no more attempts once failed"
    # An update is the way out. One that is still wrong gets three attempts of its own.
    update(stack, name, maxTotalTokens=1024)
    r = stack.generate(name, timeout=60)
    assert r.status_code == 424, r.text
    assert len(stack.replicas_started(name)) == 6
    # Fix the model and the deployment serves again.
    update(stack, name, baseModel="gemma-3-270m", customArgs=["--n_threads", "1"])
    assert status(stack, name) == "ready"
    r = stack.generate(name)
    assert r.status_code == 200, r.text


class SteadyLoad:
    def __init__(self, stack: Stack, name: str, clients: int) -> None:
        self.stack, self.name = stack, name
        self.stop = threading.Event()
        self.codes: list[int] = []
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]

    def run(self) -> None:
        while not self.stop.is_set():
            self.codes.append(self.stack.generate(self.name, "Name a colour:", 6).status_code)

    def __enter__(self) -> SteadyLoad:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)


def test_rolling_update_under_steady_load_fails_no_request(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack()
    stack.create(name, minReplicas=1, maxReplicas=1, cooldownTime=60, maxTotalTokens=2048)
    wait_until(lambda: stack.ready_replicas(name) == 1, 60, "replica ready")
    (old,) = stack.replicas_running(name)
    with SteadyLoad(stack, name, 2) as load:
        time.sleep(2)
        update(stack, name, maxTotalTokens=1024)
        assert status(stack, name) == "updating"
        assert [e["eventType"] for e in events(stack, name)] == ["Updating"]
        wait_until(
            lambda: "Ready" in [e["eventType"] for e in events(stack, name)], 90, "replica ready"
        )
        # Ready is announced when the new replica is; the old one is drained and stopped after.
        wait_until(
            lambda: len(running := stack.replicas_running(name)) == 1 and old not in running,
            60,
            "old replica drained and stopped",
        )
        time.sleep(2)
    assert load.codes and set(load.codes) == {200}, load.codes
    (new,) = stack.replicas_running(name)
    assert new != old
    assert status(stack, name) == "ready"
    record = stack.registry(name)[new]
    assert record["revision"] == 2
    argv = Path(f"/proc/{record['handle']['pid']}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"--n_ctx") + 1] == b"1024", "the new replica runs the new settings"


def test_min_replicas_update_applies_live(make_stack: Callable[..., Stack], name: str) -> None:
    stack = make_stack()
    stack.create(name, minReplicas=0, maxReplicas=2, cooldownTime=2)
    time.sleep(2)
    assert stack.replicas_started(name) == set()
    update(stack, name, minReplicas=1)
    assert [e["eventType"] for e in events(stack, name)] == ["Updating", "Ready"]
    wait_until(lambda: stack.ready_replicas(name) == 1, 60, "min_replicas=1 starts a replica")
    update(stack, name, minReplicas=0)
    wait_until(lambda: not stack.replicas_running(name), 30, "back to zero after cooldown")


def test_max_replicas_update_applies_live(make_stack: Callable[..., Stack], name: str) -> None:
    stack = make_stack()
    stack.create(name, minReplicas=2, maxReplicas=2, cooldownTime=600)
    wait_until(lambda: stack.ready_replicas(name) == 2, 60, "two replicas ready")
    update(stack, name, minReplicas=1, maxReplicas=1)
    # A lowered bound applies at once, not after the 600 s cooldown.
    wait_until(lambda: len(stack.replicas_running(name)) == 1, 30, "drained down to max 1")
    assert stack.generate(name).status_code == 200


def test_cooldown_update_applies_live(make_stack: Callable[..., Stack], name: str) -> None:
    stack = make_stack()
    stack.create(name, minReplicas=0, maxReplicas=1, cooldownTime=3600)
    assert stack.generate(name).status_code == 200
    time.sleep(3)
    assert len(stack.replicas_running(name)) == 1, "a long cooldown keeps the replica"
    update(stack, name, cooldownTime=1)
    wait_until(lambda: not stack.replicas_running(name), 30, "short cooldown scales to zero")


def test_scale_up_threshold_update_applies_live(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack()
    stack.create(name, minReplicas=1, maxReplicas=2, cooldownTime=600, scaleUpRequestThreshold=8)
    wait_until(lambda: stack.ready_replicas(name) == 1, 60, "replica ready")
    with SteadyLoad(stack, name, 3) as load:
        time.sleep(4)
        assert len(stack.replicas_started(name)) == 1, "3 requests fit a threshold of 8"
        update(stack, name, scaleUpRequestThreshold=1)
        wait_until(lambda: stack.ready_replicas(name) == 2, 60, "threshold 1 scales out")
    assert set(load.codes) == {200}
