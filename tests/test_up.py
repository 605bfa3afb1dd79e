"""`wakegate up`: the embedded stack from one command, stopped without orphans, persistent."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner
from harness import ROOT, free_port, wait_until

from wakegate.tools.cli import main
from wakegate.tools.cli_common import TOKEN_ENV, URL_ENV


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
        "WAKEGATE_PRIVATE_PORT": str(free_port()),
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

        # Every CLI command finds this stack's gateway (not on 8080) and token by itself.
        unset: dict[str, str | None] = {v: None for v in (*URL_ENV, *TOKEN_ENV, "WAKEGATE_PORT")}
        cli_env = {**unset, "WAKEGATE_STATE_DIR": str(state)}
        for args in (["status", "--json"], ["deployments", "list", "--json"]):
            ran = CliRunner().invoke(main, args, env=cli_env)
            assert ran.exit_code == 0 and "my-llm" in ran.stdout, (args, ran.output)
        # Predibase's quick start as is, on this machine without a GPU: refused, saying what
        # the pool has and what to do; the pool is listed.
        pool = CliRunner().invoke(main, ["accelerators", "--json"], env=cli_env)
        assert pool.exit_code == 0 and json.loads(pool.stdout)["known"], pool.output
        r = httpx.post(
            f"{base}/v2/deployments",
            headers=headers,
            json={"name": "quick-start", "config": {"baseModel": "qwen3-8b"}},
        )
        assert r.status_code == 400 and r.json()["field"] == "config.baseModel", r.text
        assert "no l40s_48gb GPU" in r.text and "gemma-3-270m" in r.text
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    assert "all stopped" in log.read_text()
    wait_until(lambda: not processes_mentioning(str(state)), 30, "no process left behind")

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
    wait_until(lambda: not processes_mentioning(str(state)), 30, "no process left behind")


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


def test_up_guards_redis_and_the_broker_with_generated_credentials_in_a_private_state_dir(
    tmp_path: Path,
) -> None:
    import asyncio
    import stat

    import aiomqtt
    import redis

    state = tmp_path / "state"
    log = tmp_path / "up.log"
    port, scaler_port, private_port = free_port(), free_port(), free_port()
    up = start_up(state, port, log, WAKEGATE_BACKEND="sim", WAKEGATE_SCALER_PORT=str(scaler_port),
                  WAKEGATE_PRIVATE_PORT=str(private_port))  # fmt: skip
    try:
        wait_until(lambda: "wakegate is up." in log.read_text(), 90, "wakegate up")
        out = log.read_text()
        # The gateway's private data-plane listener (direct ingress) is up and printed.
        assert f"private      http://127.0.0.1:{private_port}" in out
        assert httpx.get(f"http://127.0.0.1:{private_port}/healthz").status_code == 200
        redis_port = int(re.findall(r"embedded Redis .* on 127\.0\.0\.1:(\d+)", out)[0])
        mqtt_port = int(re.findall(r"embedded MQTT broker .* on 127\.0\.0\.1:(\d+)", out)[0])
        redis_password = (state / "redis-password").read_text().strip()
        mqtt_password = (state / "mqtt-password").read_text().strip()
        assert redis_password not in out and mqtt_password not in out

        # Redis: NOAUTH without the password, served with it.
        anonymous = redis.Redis(port=redis_port)
        try:
            anonymous.ping()
            raise AssertionError("Redis answered a client without the password")
        except redis.AuthenticationError:
            pass
        finally:
            anonymous.close()
        assert redis.Redis(port=redis_port, password=redis_password).ping()

        # The broker: an anonymous CONNECT is refused, the generated user is admitted.
        async def connects(**auth: str) -> bool:
            try:
                async with aiomqtt.Client("127.0.0.1", mqtt_port, timeout=30, **auth):
                    return True
            except aiomqtt.MqttError:
                return False

        assert not asyncio.run(connects())
        assert not asyncio.run(connects(username="wakegate", password="wrong"))
        assert asyncio.run(connects(username="wakegate", password=mqtt_password))

        # The gateway serves with those credentials.
        token = (state / "token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        r = httpx.get(f"http://127.0.0.1:{port}/users/current", headers=headers)
        assert r.status_code == 200, r.text
        r = httpx.post(
            f"http://127.0.0.1:{port}/v2/deployments",
            headers=headers,
            json={"name": "gated", "config": {"baseModel": "sim-llm", "hfToken": "hf_PLAIN_up"}},
        )
        assert r.status_code == 200, r.text

        # /metrics: the metrics token up made opens both; nothing else does.
        metrics = {"Authorization": f"Bearer {(state / 'metrics-token').read_text().strip()}"}
        for p in (port, scaler_port):
            assert httpx.get(f"http://127.0.0.1:{p}/metrics").status_code == 401
            assert httpx.get(f"http://127.0.0.1:{p}/metrics", headers=metrics).status_code == 200

        # The CLI finds the running stack through the state dir (no REDIS_URL).
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MQTT_URL")}
        env["WAKEGATE_STATE_DIR"] = str(state)
        listed = subprocess.run(
            [sys.executable, "-m", "wakegate", "tokens", "list"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        assert '"tenant": "default"' in listed.stdout and token not in listed.stdout

        # Everything under the state dir is its owner's alone: the dir 0700, secrets, the
        # AOF (with the sealed hfToken, never the plain one) and logs 0600.
        wait_until(
            lambda: any(b"wgsealed:v1:" in p.read_bytes() for p in aof_files(state)),
            30,
            "the sealed hfToken in the AOF",
        )
        assert not any(b"hf_PLAIN_up" in p.read_bytes() for p in aof_files(state))
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        for name in ("token", "admin-token", "redis-password", "mqtt-password", "secret.key",
                     "metrics-token", "connect.toml"):  # fmt: skip
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
        for path in state.rglob("*"):
            if path.is_symlink():
                continue
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
        assert aof_files(state)
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0


def aof_files(state: Path) -> list[Path]:
    return [p for p in (state / "redis").rglob("*.aof*") if p.is_file()]
