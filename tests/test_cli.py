"""The operator's commands: `wakegate deployments ...` against a real gateway, `wakegate events`
against the real broker while a deployment wakes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest
from click.testing import CliRunner, Result
from harness import ROOT, Stack, wait_until

from wakegate.settings import Settings
from wakegate.tools.cli import main
from wakegate.tools.cli_common import TOKEN_ENV, URL_ENV
from wakegate.tools.up import TOKEN_FILE, write_connect_file

SIM_ARGS = ["--load-s", "1", "--ttft-s", "0.05", "--tps", "50", "--batch", "1"]


def cli(stack: Stack, *args: str) -> Result:
    """`wakegate ARGS` in this process, pointed at the stack's gateway as its tenant."""
    env = {"WAKEGATE_URL": stack.base, "WAKEGATE_TOKEN": stack.token}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_deployments_are_created_listed_updated_and_deleted_through_the_api(
    make_stack: Callable[..., Stack], name: str, tmp_path: Path
) -> None:
    stack = make_stack(backend="sim", sim_pool="a10_24gb=2,cpu=2")
    args = [f"--custom-arg={a}" for a in SIM_ARGS]
    # Refused by the API: its message, naming the field; exit code 1; nothing created.
    bad = cli(stack, "deployments", "create", name, "--base-model", "sim-llm",
              "--min-replicas", "3", "--max-replicas", "1", *args)  # fmt: skip
    assert bad.exit_code == 1
    assert "400: config.minReplicas: must not exceed maxReplicas (3 > 1)" in bad.stderr
    unknown = cli(stack, "deployments", "create", name, "--base-model", "no-such-model")
    assert unknown.exit_code == 1 and "config.baseModel: unknown base model" in unknown.stderr
    assert json.loads(cli(stack, "deployments", "list", "--json").stdout) == []

    # Created from a YAML file and flags; the flags win over the file.
    config = tmp_path / "dep.yaml"
    config.write_text(
        "description: from a file\n"
        "config:\n  baseModel: sim-llm\n  max_replicas: 1\n  cooldownTime: 30\n"
        "  scalingPolicy: {name: knative, params: {stable_window_s: 10}}\n"
        "  customArgs: [" + ", ".join(json.dumps(a) for a in SIM_ARGS) + "]\n"
    )
    made = cli(stack, "deployments", "create", name, "--config", str(config),
               "--max-replicas", "2", "--json")  # fmt: skip
    assert made.exit_code == 0, made.output
    dep = json.loads(made.stdout)
    assert dep["name"] == name and dep["description"] == "from a file"
    assert dep["config"]["maxReplicas"] == 2 and dep["config"]["cooldownTime"] == 30
    assert dep["config"]["scalingPolicy"] == {"name": "knative", "params": {"stable_window_s": 10}}
    assert stack.api("GET", f"/v2/deployments/{name}").json()["data"]["config"] == dep["config"]

    listed = cli(stack, "deployments", "list", "--json")
    assert [d["name"] for d in json.loads(listed.stdout)] == [name]
    table = cli(stack, "deployments", "list").stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "STATUS", "REPLICAS", "MIN", "MAX"]
    assert row.split()[:7] == [name, "ready", "0", "0", "2", "sim-llm", "a10_24gb_100"]
    detail = cli(stack, "deployments", "get", name).stdout
    assert "knative (stable_window_s=10)" in detail and "Created" in detail

    # An update that needs a replica, waited for: the first replica's Ready ends the wait.
    updated = cli(stack, "deployments", "update", name, "--min-replicas", "1", "--wait",
                  "--timeout", "60", "--json", *args)  # fmt: skip
    assert updated.exit_code == 0, updated.output + stack.logs()
    dep = json.loads(updated.stdout)
    assert dep["config"]["minReplicas"] == 1 and dep["currentReplicas"] == 1
    assert "Ready" in updated.stderr and "is ready" in updated.stderr
    refused = cli(stack, "deployments", "update", name, "--max-replicas", "0")
    assert refused.exit_code == 1 and "config.maxReplicas" in refused.stderr
    assert cli(stack, "deployments", "update", name).exit_code == 2  # nothing to change

    gone = cli(stack, "deployments", "delete", name, "--yes", "--json")
    assert gone.exit_code == 0 and json.loads(gone.stdout) == {"deleted": name}
    missing = cli(stack, "deployments", "get", name)
    assert missing.exit_code == 1 and f"404: deployment {name} not found" in missing.stderr


def test_a_wrong_token_or_no_gateway_is_a_clear_error(stack: Stack, name: str) -> None:
    runner = CliRunner()
    wrong = runner.invoke(
        main,
        ["deployments", "list", "--gateway", stack.base, "--token", "pb_wrong"],
    )
    assert wrong.exit_code == 1 and "401: invalid API token" in wrong.stderr
    # The Predibase SDK's variables work too.
    env = {"PREDIBASE_GATEWAY": "http://127.0.0.1:9", "PREDIBASE_API_TOKEN": stack.token}
    down = runner.invoke(main, ["deployments", "get", name], env=env)
    assert down.exit_code == 1 and "cannot reach the gateway at http://127.0.0.1:9" in down.stderr


def test_without_a_gateway_or_token_given_the_stack_of_the_state_dir_is_used(
    stack: Stack, tmp_path: Path
) -> None:
    unset: dict[str, str | None] = {v: None for v in (*URL_ENV, *TOKEN_ENV)}
    state = tmp_path / "state"
    env = {**unset, "WAKEGATE_STATE_DIR": str(state), "WAKEGATE_PORT": str(stack.port)}
    none = CliRunner().invoke(main, ["deployments", "list"], env=env)
    assert none.exit_code == 2 and "no API token" in none.stderr
    assert CliRunner().invoke(main, ["status", "--once"], env=env).exit_code == 2
    state.mkdir()
    (state / TOKEN_FILE).write_text(stack.token + "\n")  # as `wakegate up` leaves it
    found = CliRunner().invoke(main, ["deployments", "list", "--json"], env=env)
    assert found.exit_code == 0, found.output
    assert isinstance(json.loads(found.stdout), list)
    # Every command that talks to the API finds them the same way.
    status = CliRunner().invoke(main, ["status", "--json"], env=env)
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["tenant"] == stack.tenant
    pool = CliRunner().invoke(main, ["accelerators", "--json"], env=env)
    assert pool.exit_code == 0, pool.output
    assert "skus" in json.loads(pool.stdout)

    # The gateway's address too: `wakegate up --port N` leaves it in its connect file.
    write_connect_file(Settings(state_dir=state, port=stack.port))
    del env["WAKEGATE_PORT"]
    for args in (["deployments", "list", "--json"], ["status", "--json"], ["accelerators"]):
        ran = CliRunner().invoke(main, args, env=env)
        assert ran.exit_code == 0, (args, ran.output)


class Lines:
    """Lines of a child's stream, read as they come."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def having(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


def _events_proc(stack: Stack, *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "REDIS_URL": stack.redis_url,
        "MQTT_URL": stack.mqtt_url or "",
        "WAKEGATE_STATE_DIR": str(stack.state_dir),
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "wakegate", "events", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


@pytest.mark.parametrize("as_json", [True, False], ids=["json-lines", "human-lines"])
def test_events_follow_a_deployment_waking_from_the_broker(
    make_stack: Callable[..., Stack], name: str, as_json: bool
) -> None:
    stack = make_stack(backend="sim", sim_pool="a10_24gb=2,cpu=2")
    stack.create(name, baseModel="sim-llm", customArgs=SIM_ARGS, minReplicas=0, maxReplicas=1)
    proc = _events_proc(stack, f"{stack.tenant}/{name}", *(["--json"] if as_json else []))
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        wait_until(lambda: err.having("following"), 30, "events to subscribe")
        r = stack.generate(name, "wake up", 4)
        assert r.status_code == 200, r.text
        if as_json:

            def seen(kind: str, **fields: Any) -> bool:
                for line in out.lines:
                    e = json.loads(line)
                    if e["kind"] == kind and all(e.get(k) == v for k, v in fields.items()):
                        return True
                return False

            wait_until(lambda: seen("replica", state="ready"), 30, "a replica ready event")
            assert seen("lifecycle", eventType="Created"), out.lines  # the stored history
            assert seen("wake", deployment=f"{stack.tenant}/{name}")
            assert seen("decision", current=0, desired=1), out.lines
        else:
            wait_until(lambda: out.having("replica") and out.having(" ready at "), 30, "ready")
            assert out.having("scale 0 -> 1 replica(s)"), out.lines
            assert out.having("Created (revision 1)"), out.lines
        # Ctrl-C ends it cleanly.
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0, err.lines
        assert not err.having("Traceback")
    finally:
        proc.kill()
        proc.wait()


def test_events_refuses_a_name_that_is_no_deployment_name() -> None:
    result = CliRunner().invoke(main, ["events", "a/#"], env={"MQTT_URL": "mqtt://127.0.0.1:9"})
    assert result.exit_code == 2 and "DEPLOYMENT" in result.stderr
