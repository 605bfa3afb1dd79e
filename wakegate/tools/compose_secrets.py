"""Credentials of the compose stack (docker-compose.yml), made once into its secrets volume.

The one-shot `secrets` service runs `wakegate compose-secrets /run/wakegate` before anything
else starts: a Redis password (in a redis.conf), a broker user (a mosquitto config and password
file, no anonymous clients), the secret key and the metrics token, and the settings file that
points the gateway and the scaler at all of them. Each file is 0600 and owned by the user its
image runs as, so no other container user reads it; an existing file is kept, so restarts and
upgrades keep their credentials.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from wakegate.sealing import generate_key, load_or_create, private_dir, write_private
from wakegate.tools.embedded import MQTT_USER, mosquitto_password_line

# Users the official images run as (redis:7, eclipse-mosquitto:2, prom/prometheus,
# grafana/grafana).
REDIS_UID = 999
MOSQUITTO_UID = 1883
PROMETHEUS_UID = 65534
GRAFANA_UID = 472


def _own(path: Path, uid: int) -> None:
    if os.geteuid() == 0:
        os.chown(path, uid, uid)


def make_compose_secrets(folder: Path) -> list[Path]:
    """Create what is missing under `folder`; returns every file it holds."""
    private_dir(folder)
    # Every service reads its files in the shared volume; only their owners can open them.
    folder.chmod(0o711)

    def password(name: str) -> str:
        return load_or_create(folder / name, lambda: secrets.token_urlsafe(32))

    redis_password = password("redis-password")
    mqtt_password = password("mqtt-password")
    load_or_create(folder / "secret.key", generate_key)
    metrics_token = load_or_create(
        folder / "metrics-token", lambda: "wgm_" + secrets.token_urlsafe(24)
    )

    write_private(folder / "redis.conf", f"requirepass {redis_password}\n")
    _own(folder / "redis.conf", REDIS_UID)
    if write_private(
        folder / "mosquitto.passwd", mosquitto_password_line(MQTT_USER, mqtt_password)
    ):
        _own(folder / "mosquitto.passwd", MOSQUITTO_UID)
    write_private(
        folder / "mosquitto.conf",
        "listener 1883\nallow_anonymous false\n"
        f"password_file {folder / 'mosquitto.passwd'}\npersistence false\nlog_dest stdout\n",
    )
    _own(folder / "mosquitto.conf", MOSQUITTO_UID)
    # Prometheus reads its own copy of the metrics token (it runs as another user).
    write_private(folder / "prometheus-token", metrics_token + "\n")
    _own(folder / "prometheus-token", PROMETHEUS_UID)
    # Grafana reads its admin password (GF_SECURITY_ADMIN_PASSWORD__FILE) as its own user.
    password("grafana-admin-password")
    _own(folder / "grafana-admin-password", GRAFANA_UID)
    write_private(
        folder / "wakegate.toml",
        "[wakegate]\n"
        f'redis_url = "redis://:{redis_password}@redis:6379/0"\n'
        f'mqtt_url = "mqtt://{MQTT_USER}:{mqtt_password}@mosquitto:1883"\n'
        f'secret_key_file = "{folder / "secret.key"}"\n'
        f'metrics_token_file = "{folder / "metrics-token"}"\n',
    )
    return sorted(p for p in folder.iterdir() if p.is_file())
