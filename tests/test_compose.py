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


def test_cpu_stack_validates_with_persistent_redis_broker_gateway_scaler_and_monitoring(
    compose: list[str],
) -> None:
    services = config(compose, "cpu")["services"]
    assert set(services) == {
        "secrets", "redis", "mosquitto", "gateway", "scaler", "prometheus", "grafana",
    }  # fmt: skip
    assert "--appendonly" in services["redis"]["command"]
    # Bounded: beyond its memory limit Redis refuses writes (the gateway answers 503), never
    # evicts a queue entry or a spec.
    command = services["redis"]["command"]
    assert "--maxmemory" in command
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v["target"] == "/data" for v in services["redis"]["volumes"])
    for name in ("gateway", "scaler"):
        env = services[name]["environment"]
        assert env["WAKEGATE_CONFIG"] == "/run/wakegate/wakegate.toml"
        assert services[name]["build"]["target"] == "cpu"


def test_compose_credentials_are_made_once_private_and_point_everything_at_each_other(
    compose: list[str], tmp_path: Path
) -> None:
    """Redis with a password, the broker without anonymous clients, the gateway and scaler
    with the URLs and key, Prometheus with the metrics token: all from the `secrets` service."""
    import stat
    import tomllib

    from wakegate.tools.compose_secrets import make_compose_secrets

    services = config(compose, "cpu")["services"]
    assert services["secrets"]["command"][:2] == ["wakegate", "compose-secrets"]
    for name in ("redis", "mosquitto", "gateway", "scaler", "prometheus", "grafana"):
        mounts = {v["target"]: v for v in services[name]["volumes"]}
        assert mounts["/run/wakegate"]["read_only"], name
    assert "/run/wakegate/redis.conf" in services["redis"]["command"]
    assert services["mosquitto"]["command"][-1] == "/run/wakegate/mosquitto.conf"

    folder = tmp_path / "secrets"
    files = {p.name: p for p in make_compose_secrets(folder)}
    assert "requirepass " in files["redis.conf"].read_text()
    mosquitto = files["mosquitto.conf"].read_text()
    assert "allow_anonymous false" in mosquitto and "password_file" in mosquitto
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files.values())
    settings = tomllib.loads(files["wakegate.toml"].read_text())["wakegate"]
    password = files["redis-password"].read_text().strip()
    assert settings["redis_url"] == f"redis://:{password}@redis:6379/0"
    assert settings["mqtt_url"].startswith("mqtt://wakegate:")
    assert settings["secret_key_file"] == str(folder / "secret.key")
    assert settings["metrics_token_file"] == str(folder / "metrics-token")
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    for job in prometheus["scrape_configs"]:
        assert job["authorization"]["credentials_file"] == "/run/wakegate/prometheus-token"
    assert files["prometheus-token"].read_text() == files["metrics-token"].read_text()
    # Grafana's admin password: a file of its own, read through GF_SECURITY_ADMIN_PASSWORD__FILE.
    assert len(files["grafana-admin-password"].read_text().strip()) >= 32
    grafana_env = services["grafana"]["environment"]
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/wakegate/grafana-admin-password"
    # A second run keeps every credential.
    before = {name: p.read_bytes() for name, p in files.items()}
    make_compose_secrets(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


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


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(compose: list[str]) -> None:
    """Grafana's provisioning and dashboards are the repository's files, mounted read-only
    where its provisioning points; the data source is the stack's Prometheus."""
    for profile in ("cpu", "gpu"):
        services = config(compose, profile)["services"]
        grafana = services["grafana"]
        assert grafana["image"].startswith("grafana/grafana:")
        assert "prometheus" in grafana["depends_on"]
        assert grafana["depends_on"]["secrets"]["condition"] == "service_completed_successfully"
        mounts = {v["target"]: v for v in grafana["volumes"]}
        grafana_dir = ROOT / "deploy" / "grafana"
        provisioning = mounts["/etc/grafana/provisioning"]
        assert Path(provisioning["source"]) == grafana_dir / "provisioning"
        assert provisioning["read_only"]
        dashboards = next(
            v for v in grafana["volumes"] if v.get("source") == str(grafana_dir / "dashboards")
        )
        assert dashboards["read_only"]
        assert mounts["/var/lib/grafana"]["type"] == "volume"  # its database survives restarts
        env = grafana["environment"]
        assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"  # unless the operator opens it
        assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
        assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].startswith(dashboards["target"])
    provider = yaml.safe_load(
        (grafana_dir / "provisioning" / "dashboards" / "wakegate.yml").read_text()
    )
    (files,) = provider["providers"]
    assert files["type"] == "file" and files["options"]["path"] == dashboards["target"]
    assert (grafana_dir / "dashboards" / "wakegate.json").is_file()
    datasources = yaml.safe_load(
        (grafana_dir / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (prometheus,) = datasources["datasources"]
    assert prometheus["type"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"
    # The port the data source's URL names, open to the project's network only.
    assert services["prometheus"]["expose"] == ["9090"]


def test_only_the_gateway_is_published_and_the_ports_file_binds_loopback_only(
    compose: list[str],
) -> None:
    """Review 2026-12b, finding 6: Prometheus (no authentication: every tenant's metrics),
    the scaler and Grafana were published on every interface."""
    for profile in ("cpu", "gpu"):
        services = config(compose, profile)["services"]
        published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
        assert list(published) == ["gateway"], profile
        assert {p["target"] for p in published["gateway"]} == {8080}
    env = {**os.environ, "COMPOSE_PROFILES": "cpu"}
    out = subprocess.run(
        [*compose, "-f", "docker-compose.yml", "-f", "deploy/compose.ports.yml", "config",
         "--format", "json"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    services = json.loads(out.stdout)["services"]
    for name in ("grafana", "scaler"):
        assert [p["host_ip"] for p in services[name]["ports"]] == ["127.0.0.1"], name
    assert "ports" not in services["prometheus"]


def test_the_gpu_profiles_model_catalogue_is_valid() -> None:
    from wakegate.catalog import parse_models_file

    entries = parse_models_file(ROOT / "deploy" / "models.toml")
    assert entries and all(e.engine == "vllm" for e in entries.values())
