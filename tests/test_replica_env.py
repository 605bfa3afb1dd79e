"""Replicas start with a minimal environment (finding 3 of the security review): nothing of
the scaler's own configuration (REDIS_URL, MQTT_URL, WAKEGATE_*) or its cloud credentials."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Stack, wait_until

from scaler.backends import replica_env

SCALER_ENV = {
    "PATH": "/usr/bin",
    "HOME": "/home/wakegate",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TMPDIR": "/tmp/w",
    "HF_HOME": "/models/hf",
    "HF_HUB_OFFLINE": "1",
    "HUGGING_FACE_HUB_CACHE": "/models/hub",
    "CUDA_VISIBLE_DEVICES": "0,1",
    "NVIDIA_VISIBLE_DEVICES": "all",
    "HTTPS_PROXY": "http://proxy:3128",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "MQTT_URL": "mqtt://127.0.0.1:1883",
    "WAKEGATE_REDIS_URL": "redis://127.0.0.1:6379/0",
    "WAKEGATE_DEFAULT_TOKEN": "pb_operator",
    "WAKEGATE_STATE_DIR": "/var/lib/wakegate",
    "AWS_ACCESS_KEY_ID": "AKIA",
    "AWS_SECRET_ACCESS_KEY": "secret",
    "GOOGLE_APPLICATION_CREDENTIALS": "/etc/gcp.json",
    "KUBECONFIG": "/etc/kube",
    "HF_TOKEN": "hf_operator",
    "HUGGING_FACE_HUB_TOKEN": "hf_operator",
    "PYTHONPATH": "/src/wakegate",
    "RAY_ADDRESS": "ray://head:10001",
}

KEPT = {
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "HUGGING_FACE_HUB_CACHE",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "HTTPS_PROXY",
}


@pytest.mark.parametrize(
    ("plan_env", "replica_id", "keep", "expected"),
    [
        pytest.param({}, None, (), {k: SCALER_ENV[k] for k in KEPT}, id="only-what-engines-need"),
        pytest.param(
            {"HF_TOKEN": "hf_tenant", "VLLM_API_KEY": "k"},
            "d-1",
            (),
            {
                **{k: SCALER_ENV[k] for k in KEPT},
                "HF_TOKEN": "hf_tenant",
                "VLLM_API_KEY": "k",
                "WAKEGATE_REPLICA_ID": "d-1",
            },
            id="plan-env-and-replica-id-added-deployment-token-not-the-operators",
        ),
        pytest.param(
            {"HF_HOME": "/elsewhere"},
            None,
            ("PYTHONPATH",),
            {
                **{k: SCALER_ENV[k] for k in KEPT},
                "HF_HOME": "/elsewhere",
                "PYTHONPATH": "/src/wakegate",
            },
            id="plan-overrides-inherited-and-keep-adds-a-name",
        ),
        pytest.param(
            {},
            None,
            ("HF_TOKEN",),
            {k: SCALER_ENV[k] for k in KEPT},
            id="operator-hub-token-never-inherited",
        ),
    ],
)
def test_replica_env_keeps_only_what_an_engine_needs(
    plan_env: dict[str, str],
    replica_id: str | None,
    keep: tuple[str, ...],
    expected: dict[str, str],
) -> None:
    assert replica_env(plan_env, replica_id, keep, inherited=SCALER_ENV) == expected


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.decode().partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


def test_a_local_replica_process_has_no_redis_url_or_wakegate_settings(
    stack: Stack, name: str
) -> None:
    assert "REDIS_URL" in stack.env  # what the scaler that starts it has
    stack.create(name, minReplicas=1, maxReplicas=1)
    (replica_id,) = wait_until(lambda: stack.replicas_running(name), 60, "replica launched")
    manifest = json.loads((stack.state_dir / "replicas" / f"{replica_id}.json").read_text())
    env = environ_of(int(manifest["pid"]))
    assert env["WAKEGATE_REPLICA_ID"] == replica_id
    assert "PATH" in env
    leaked = sorted(n for n in env if n in ("REDIS_URL", "MQTT_URL") or n.startswith("WAKEGATE_"))
    # Only what the launch plan sets for the replica itself: its id and the model's chat
    # template (scaler/replica/llamacpp.py), never the scaler's own settings.
    assert leaked == ["WAKEGATE_CHAT_TEMPLATE", "WAKEGATE_REPLICA_ID"]
    assert env["WAKEGATE_CHAT_TEMPLATE"] == "gemma3"
    stack.delete(name)


def test_the_sim_host_running_simulated_replicas_has_no_redis_url(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack(backend="sim")
    stack.create(name, baseModel="sim-llm", minReplicas=1, customArgs=["--load-s", "0"])
    wait_until(lambda: stack.sim_replicas(name), 60, "simulated replica started")
    host = json.loads((stack.state_dir / "sim-host.json").read_text())
    env = environ_of(int(host["pid"]))
    assert "PATH" in env
    assert not [n for n in env if n in ("REDIS_URL", "MQTT_URL") or n.startswith("WAKEGATE_")]
