"""Settings from the environment and TOML: each value converted to its field's type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wakegate.settings import Settings, load_settings, settings_env

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
    ("port", "eighty"),
    ("queue_timeout_s", "soon"),
    ("quota_max_gpus_per_tenant", "4.5"),
    ("quota_max_gpus_per_tenant", "lots"),
    # Only optional settings may be none.
    ("max_queue_length", "none"),
]


@pytest.mark.parametrize(("field", "raw"), BAD_ENV, ids=[f"{f}={r}" for f, r in BAD_ENV])
def test_a_value_that_is_not_of_the_fields_type_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, field: str, raw: str
) -> None:
    monkeypatch.setenv(f"WAKEGATE_{field.upper()}", raw)
    with pytest.raises(ValueError, match=field):
        load_settings()


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("quota_max_deployments_per_tenant", "-1"),
        ("quota_max_replicas_per_deployment", "-3"),
        ("max_queue_length", "0"),
    ],
    ids=["negative-deployments-quota", "negative-replicas-quota", "zero-queue-quota"],
)
def test_impossible_quotas_are_refused(
    monkeypatch: pytest.MonkeyPatch, field: str, raw: str
) -> None:
    monkeypatch.setenv(f"WAKEGATE_{field.upper()}", raw)
    with pytest.raises(ValueError, match=field):
        load_settings()


def test_toml_values_are_converted_and_none_spells_unlimited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "wakegate.toml"
    config.write_text(
        "[wakegate]\n"
        "port = 9100\n"
        "queue_timeout_s = 30\n"
        'quota_max_deployments_per_tenant = "none"\n'
        "quota_max_gpus_per_tenant = 8\n"
        'models_file = "/etc/wakegate/models.toml"\n'
    )
    settings = load_settings(config)
    assert settings.port == 9100
    assert settings.queue_timeout_s == 30.0
    assert settings.quota_max_deployments_per_tenant is None
    assert settings.quota_max_gpus_per_tenant == 8
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
