"""Settings from the environment and TOML: each value converted to its field's type, a bad
one refused with a message naming the variable (or the file's key) it came from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from wakegate.settings import Settings, SettingsError, load_settings, settings_env

ROOT = Path(__file__).resolve().parent.parent

ENV_CASES = [
    ("port", "9000", 9000),
    ("queue_timeout_s", "2.5", 2.5),
    ("queue_timeout_s", "3", 3.0),
    ("state_dir", "/tmp/wg", Path("/tmp/wg")),
    ("adapter_dir", "/srv/adapters", Path("/srv/adapters")),
    ("adapter_dir", "none", None),
    ("quota_max_deployments_per_tenant", "7", 7),
    ("quota_max_deployments_per_tenant", "none", None),
    ("quota_max_deployments_per_tenant", "None", None),
    ("quota_max_replicas_per_deployment", "null", None),
    ("quota_max_gpus_per_tenant", "12", 12),
    ("quota_max_gpus_per_tenant", " 12 ", 12),
    ("ray_address", "auto", "auto"),
    ("ray_address", "none", None),
    ("ray_num_cpus", "0.5", 0.5),
    ("backend", "sim", "sim"),
]


@pytest.mark.parametrize(
    ("field", "raw", "expected"),
    ENV_CASES,
    ids=[f"{f}={r.strip() or 'empty'}" for f, r, _ in ENV_CASES],
)
def test_an_environment_value_becomes_the_fields_type(
    monkeypatch: pytest.MonkeyPatch, field: str, raw: str, expected: Any
) -> None:
    monkeypatch.setenv(f"WAKEGATE_{field.upper()}", raw)
    assert getattr(load_settings(), field) == expected


BAD_ENV = [
    ("port", "eighty", "input should be a valid integer"),
    ("queue_timeout_s", "soon", "input should be a valid number"),
    ("queue_timeout_s", "0", "input should be greater than 0"),
    ("body_timeout_s", "inf", "input should be a finite number"),
    ("lease_ms", "500", "input should be greater than or equal to 1000"),
    ("quota_max_gpus_per_tenant", "4.5", "input should be a valid integer"),
    ("quota_max_gpus_per_tenant", "lots", "input should be a valid integer"),
    ("quota_max_deployments_per_tenant", "-1", "input should be greater than or equal to 0"),
    ("quota_max_replicas_per_deployment", "-3", "input should be greater than or equal to 0"),
    # Only optional settings may be none.
    ("max_queue_length", "none", "input should be a valid integer"),
    ("max_queue_length", "0", "input should be greater than or equal to 1"),
    ("gateway_workers", "-2", "input should be greater than or equal to 0"),
    ("auth_failures_window_s", "0", "input should be greater than or equal to 1"),
    ("redis_appendfsync", "never", "input should be 'everysec' or 'always'"),
]


@pytest.mark.parametrize(
    ("field", "raw", "reason"), BAD_ENV, ids=[f"{f}={r}" for f, r, _ in BAD_ENV]
)
def test_a_bad_value_is_refused_naming_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch, field: str, raw: str, reason: str
) -> None:
    monkeypatch.setenv(f"WAKEGATE_{field.upper()}", raw)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert str(refused.value).startswith(f"WAKEGATE_{field.upper()}: {reason}")
    assert str(refused.value).endswith(f"(got {raw!r})")


def test_every_bad_value_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAKEGATE_PORT", "x")
    monkeypatch.setenv("WAKEGATE_SCALER_PORT", "y")
    monkeypatch.setenv("WAKEGATE_LOG_LEVEL", "DEBUG")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    lines = str(refused.value).splitlines()
    assert [line.split(":")[0] for line in lines] == ["WAKEGATE_PORT", "WAKEGATE_SCALER_PORT"]


def test_the_conventional_redis_and_mqtt_variables_are_read_after_wakegates_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://conventional:6379/0")
    monkeypatch.setenv("MQTT_URL", "mqtt://conventional:1883")
    settings = load_settings()
    assert settings.redis_url == "redis://conventional:6379/0"
    assert settings.mqtt_url == "mqtt://conventional:1883"
    monkeypatch.setenv("WAKEGATE_REDIS_URL", "redis://own:6379/0")
    assert load_settings().redis_url == "redis://own:6379/0"
    # An empty variable is not set.
    monkeypatch.setenv("WAKEGATE_REDIS_URL", "")
    assert load_settings().redis_url == "redis://conventional:6379/0"


def test_toml_values_are_converted_and_none_spells_unlimited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "wakegate.toml"
    config.write_text(
        "[wakegate]\n"
        "port = 9100\n"
        "queue_timeout_s = 30\n"
        'quota_max_deployments_per_tenant = "none"\n'
        "quota_max_gpus_per_tenant = 12\n"
        'models_file = "/etc/wakegate/models.toml"\n'
    )
    settings = load_settings(config)
    assert settings.port == 9100
    assert settings.queue_timeout_s == 30.0
    assert settings.quota_max_deployments_per_tenant is None
    assert settings.quota_max_gpus_per_tenant == 12
    assert settings.models_file == Path("/etc/wakegate/models.toml")


def test_settings_env_reproduces_an_unlimited_quota_in_a_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parent = Settings(quota_max_deployments_per_tenant=None, quota_max_gpus_per_tenant=4)
    for key, value in settings_env(parent).items():
        monkeypatch.setenv(key, value)
    child = load_settings()
    assert child.quota_max_deployments_per_tenant is None
    assert child.quota_max_gpus_per_tenant == 4
    assert child.quota_max_replicas_per_deployment == parent.quota_max_replicas_per_deployment


def test_the_environment_wins_over_the_config_file_and_flags_over_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "wakegate.toml"
    config.write_text('[wakegate]\nport = 9100\nhost = "0.0.0.0"\nredis_url = "redis://file"\n')
    monkeypatch.setenv("WAKEGATE_CONFIG", str(config))
    monkeypatch.setenv("WAKEGATE_PORT", "9200")
    monkeypatch.setenv("REDIS_URL", "redis://env")
    settings = load_settings()
    assert (settings.port, settings.host, settings.redis_url) == (9200, "0.0.0.0", "redis://env")
    assert load_settings(port=9300, host=None).port == 9300


def test_a_bad_value_in_the_config_file_names_its_key_and_the_file(tmp_path: Path) -> None:
    config = tmp_path / "wakegate.toml"
    config.write_text('[wakegate]\nlease_ms = 10\nport = "http"\nportt = 1\n')
    with pytest.raises(SettingsError) as refused:
        load_settings(config)
    assert str(refused.value).splitlines() == [
        f"port (in {config}): input should be a valid integer, unable to parse string as an"
        " integer (got 'http')",
        f"lease_ms (in {config}): input should be greater than or equal to 1000 (got 10)",
        f"portt (in {config}): unknown setting",
    ]


def test_secrets_in_bad_values_are_not_repeated(tmp_path: Path) -> None:
    config = tmp_path / "wakegate.toml"
    config.write_text("[wakegate]\nredis_url = 6379\ndefault_token = 12345\n")
    with pytest.raises(SettingsError) as refused:
        load_settings(config)
    assert "redis_url (in" in str(refused.value) and "default_token (in" in str(refused.value)
    assert "6379" not in str(refused.value) and "12345" not in str(refused.value)


def test_settings_made_in_code_are_validated_too() -> None:
    assert Settings(state_dir="somewhere", port="9000").state_dir == Path("somewhere")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lease_ms"):
        Settings(lease_ms=10)


def clean_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAKEGATE_")}
    for k in ("REDIS_URL", "MQTT_URL"):
        env.pop(k, None)
    return {**env, "WAKEGATE_STATE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT), **variables}


@pytest.mark.parametrize("process", ["router", "scaler"])
def test_a_process_started_with_a_bad_variable_exits_naming_it(
    process: str, tmp_path: Path
) -> None:
    """The gateway and the scaler stop at start-up with the message, not a traceback."""
    env = clean_env(tmp_path, WAKEGATE_QUEUE_TIMEOUT_S="soon", REDIS_URL="redis://127.0.0.1:1/0")
    done = subprocess.run(
        [sys.executable, "-m", process], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "bad configuration: WAKEGATE_QUEUE_TIMEOUT_S: input should be a valid number,"
        " unable to parse string as a number (got 'soon')"
    )


def test_the_cli_refuses_a_bad_variable_naming_it(tmp_path: Path) -> None:
    env = clean_env(tmp_path, WAKEGATE_PORT="eighty")
    done = subprocess.run(
        [sys.executable, "-m", "wakegate", "quota", "show"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "WAKEGATE_PORT: input should be a valid integer" in done.stderr
    assert "Traceback" not in done.stderr
