"""`wakegate up`: the embedded stack from one command, stopped without orphans, persistent."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from harness import ROOT, free_port, wait_until


def processes_mentioning(marker: str) -> list[int]:
    """Live processes whose command line or environment mentions `marker`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
            status = (proc / "status").read_text()
        except OSError:
            continue
        if "State:\tZ" in status:
            continue
        if marker.encode() in blob:
            found.append(int(proc.name))
    return found


def start_up(state: Path, port: int, log: Path, **extra_env: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "WAKEGATE_STATE_DIR": str(state),
        "WAKEGATE_PORT": str(port),
        "WAKEGATE_SCALER_PORT": str(free_port()),
    }
    for var in ("REDIS_URL", "MQTT_URL"):
        env.pop(var, None)
    env.update(extra_env)
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "wakegate", "up"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )


def test_up_serves_a_real_model_stops_cleanly_and_remembers_deployments(tmp_path: Path) -> None:
    state = tmp_path / "state"
    log = tmp_path / "up.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    up = start_up(state, port, log)
    try:
        wait_until(lambda: "wakegate is up." in log.read_text(), 90, "wakegate up")
        out = log.read_text()
        assert "embedded Redis (AOF on)" in out and "embedded MQTT broker" in out
        token = (state / "token").read_text().strip()
        assert token in out
        headers = {"Authorization": f"Bearer {token}"}
        r = httpx.post(
            f"{base}/v2/deployments",
            headers=headers,
            json={
                "name": "my-llm",
                "config": {
                    "baseModel": "gemma-3-270m",
                    "minReplicas": 0,
                    "maxReplicas": 1,
                    "cooldownTime": 600,
                },
            },
        )
        assert r.status_code == 200, r.text
        r = httpx.post(
            f"{base}/default/deployments/v2/llms/my-llm/generate",
            headers=headers,
            json={"inputs": "The capital of France is", "parameters": {"max_new_tokens": 8}},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert r.json()["generated_text"].strip()
        assert processes_mentioning(str(state)), "the stack runs under its state dir"
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    assert "all stopped" in log.read_text()
    wait_until(lambda: not processes_mentioning(str(state)), 10, "no process left behind")

    # A second `up` finds the deployment created before (Redis AOF under the state dir).
    port = free_port()
    up = start_up(state, port, log)
    try:
        wait_until(lambda: log.read_text().count("wakegate is up.") == 2, 90, "second up")
        r = httpx.get(f"http://127.0.0.1:{port}/v2/deployments", headers=headers)
        assert [d["name"] for d in r.json()["data"]] == ["my-llm"]
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
    wait_until(lambda: not processes_mentioning(str(state)), 10, "no process left behind")


def test_up_uses_the_configured_redis_and_broker_instead_of_embedded_ones(
    tmp_path: Path, infra: dict[str, Any], fresh_redis_url: str
) -> None:
    state = tmp_path / "state"
    log = tmp_path / "up.log"
    port = free_port()
    up = start_up(state, port, log, REDIS_URL=fresh_redis_url, MQTT_URL=infra["mqtt_url"])
    try:
        wait_until(lambda: "wakegate is up." in log.read_text(), 90, "wakegate up")
        out = log.read_text()
        assert f"using Redis at {fresh_redis_url}" in out
        assert f"using MQTT broker at {infra['mqtt_url']}" in out
        assert "embedded" not in out
        token = (state / "token").read_text().strip()
        r = httpx.get(
            f"http://127.0.0.1:{port}/users/current", headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 200
        # The operator's token: its own file, readable by its owner only, named in the output.
        admin_file = state / "admin-token"
        assert str(admin_file.resolve()) in out
        assert admin_file.stat().st_mode & 0o777 == 0o600
        admin = {"Authorization": f"Bearer {admin_file.read_text().strip()}"}
        r = httpx.get(f"http://127.0.0.1:{port}/admin/v1/quotas", headers=admin)
        assert r.status_code == 200, r.text
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    assert infra["procs"]["redis"].alive(), "an external Redis is not ours to stop"


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^\s*(make \w+)\s*$", ci, flags=re.M)
    assert commands == ["make test"], ci
    assert re.search(r"^make test$", readme, flags=re.M), "README shows the test command"
    assert re.search(r"^make up$", readme, flags=re.M), "README shows the run command"
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
