"""docker-compose.yml validates with `docker compose config` and has the stack it promises.

`docker compose config` needs no Docker engine. `make test` installs Compose v2 first
(scripts/install-compose.sh) and sets WAKEGATE_REQUIRE_COMPOSE, so in CI a missing Compose
fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def compose_cmd() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        probe = subprocess.run([*cmd, "version"], capture_output=True, text=True)
        if probe.returncode == 0 and ("v2." in probe.stdout or " 2." in probe.stdout):
            return cmd
    return None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    cmd = compose_cmd()
    if cmd is None:
        if os.environ.get("WAKEGATE_REQUIRE_COMPOSE"):
            pytest.fail("Docker Compose v2 not found; run scripts/install-compose.sh")
        pytest.skip("Docker Compose v2 not installed (scripts/install-compose.sh installs it)")
    return cmd


def config(compose: list[str], profile: str) -> dict[str, Any]:
    env = {**os.environ, "COMPOSE_PROFILES": profile}
    out = subprocess.run(
        [*compose, "config", "--format", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_cpu_stack_validates_with_persistent_redis_broker_gateway_scaler_and_prometheus(
    compose: list[str],
) -> None:
    services = config(compose, "cpu")["services"]
    assert set(services) == {"redis", "mosquitto", "gateway", "scaler", "prometheus"}
    assert "--appendonly" in services["redis"]["command"]
    # Bounded: beyond its memory limit Redis refuses writes (the gateway answers 503), never
    # evicts a queue entry or a spec.
    command = services["redis"]["command"]
    assert "--maxmemory" in command
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v["target"] == "/data" for v in services["redis"]["volumes"])
    for name in ("gateway", "scaler"):
        env = services[name]["environment"]
        assert env["REDIS_URL"].startswith("redis://redis:")
        assert env["MQTT_URL"].startswith("mqtt://mosquitto:")
        assert services[name]["build"]["target"] == "cpu"


def test_gpu_profile_runs_the_vllm_scaler_with_gpus_instead_of_the_cpu_one(
    compose: list[str],
) -> None:
    services = config(compose, "gpu")["services"]
    assert "scaler" not in services
    gpu = services["scaler-gpu"]
    assert gpu["build"]["target"] == "gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "scaler" in gpu["networks"]["default"]["aliases"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM vllm/vllm-openai:" in dockerfile and " AS gpu" in dockerfile


def test_prometheus_scrapes_the_gateway_and_the_scaler() -> None:
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = scrape["scrape_configs"]
    targets = {t for job in jobs for static in job["static_configs"] for t in static["targets"]}
    assert targets == {"gateway:8080", "scaler:8081"}


def test_the_gpu_profiles_model_catalogue_is_valid() -> None:
    from wakegate.catalog import parse_models_file

    entries = parse_models_file(ROOT / "deploy" / "models.toml")
    assert entries and all(e.engine == "vllm" for e in entries.values())
