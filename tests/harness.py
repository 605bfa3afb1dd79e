"""Real processes for the tests: redis-server, mosquitto, and wakegate's gateway and scaler.

Nothing here is a fake: the test session starts the same binaries and the same entry points
that `wakegate up` runs, on free ports, with state under a temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from wakegate.procs import free_port
from wakegate.store import Store

ROOT = Path(__file__).resolve().parent.parent
# Databases of the test redis-server: one per isolated test stack (tests/conftest.py), with
# room for the suite to grow (an empty database costs Redis nothing).
REDIS_DATABASES = 256


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # the thing may not be up yet
            last_exc = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


class Proc:
    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None):
        self.name, self.argv, self.log, self.env = name, argv, log, env
        self.p: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as fh:
            self.p = subprocess.Popen(
                self.argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})},
            )
        return self

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.p is None or self.p.poll() is not None:
            return
        self.p.send_signal(sig)
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start_redis(tmp: Path, *extra: str, binary: str | None = None) -> tuple[Proc, str]:
    """A redis-server on a free port (`binary`: another one than PATH's); `extra` arguments
    are added to its command line."""
    binary = binary or shutil.which("redis-server")
    assert binary, "redis-server is required (make test installs it)"
    port = free_port()
    data = tmp / "redis"
    data.mkdir(parents=True, exist_ok=True)
    proc = Proc(
        "redis",
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--databases",
            str(REDIS_DATABASES),
            *extra,
        ],
        tmp / "redis.log",
    ).start()
    wait_until(lambda: port_open(port), 15, "redis-server")
    return proc, f"redis://127.0.0.1:{port}"


def start_mosquitto(tmp: Path) -> tuple[Proc, str]:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    binary = shutil.which("mosquitto", path=search)
    assert binary, "mosquitto is required (make test installs it)"
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = Proc("mosquitto", [binary, "-c", str(conf)], tmp / "mosquitto.log").start()
    wait_until(lambda: port_open(port), 15, "mosquitto")
    return proc, f"mqtt://127.0.0.1:{port}"


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


class Stack:
    """One wakegate installation: its own Redis database, state dir, gateway and scaler."""

    def __init__(self, tmp: Path, redis_url: str, mqtt_url: str | None, **settings: Any) -> None:
        self.tmp = tmp
        self.redis_url = redis_url
        self.mqtt_url = mqtt_url
        self.port = free_port()
        self.scaler_port = free_port()
        # The gateway's private data-plane listener (direct ingress).
        self.private_port = free_port()
        self.state_dir = tmp / "state"
        self.tenant = "acme"
        self.token = "pb_test_" + tmp.name.replace("_", "-")
        # /metrics is for operators: every stack has a metrics token (metrics_headers).
        self.metrics_token = "wgm_test_" + tmp.name.replace("_", "-")
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "metrics-token").write_text(self.metrics_token + "\n")
        env = {
            "REDIS_URL": redis_url,
            "WAKEGATE_STATE_DIR": str(self.state_dir),
            "WAKEGATE_PORT": str(self.port),
            "WAKEGATE_SCALER_PORT": str(self.scaler_port),
            "WAKEGATE_PRIVATE_PORT": str(self.private_port),
            "WAKEGATE_RECONCILE_INTERVAL_S": "1",
            "WAKEGATE_SCALER_LEASE_TTL_S": "3",
            "WAKEGATE_LEASE_MS": "4000",
            "WAKEGATE_DRAIN_TIMEOUT_S": "20",
            "WAKEGATE_KEEPALIVE_S": "2",
            "WAKEGATE_QUEUE_TIMEOUT_S": "120",
            "WAKEGATE_METRICS_TOKEN_FILE": str(tmp / "metrics-token"),
            # Tests send wrong tokens on purpose; the limit has a test of its own.
            "WAKEGATE_AUTH_FAILURES_MAX": "100000",
            "PYTHONUNBUFFERED": "1",
        }
        if mqtt_url:
            env["MQTT_URL"] = mqtt_url
        env.update({f"WAKEGATE_{k.upper()}": str(v) for k, v in settings.items()})
        self.env = env
        self.gateway = Proc("gateway", [sys.executable, "-m", "router"], tmp / "gateway.log", env)
        self.scalers: list[Proc] = []
        self.base = f"http://127.0.0.1:{self.port}"
        self.private_base = f"http://127.0.0.1:{self.private_port}"

    # --- processes --------------------------------------------------------------------------

    def start(self) -> Stack:
        async def seed() -> None:
            store = self.store()
            await store.ensure_tenant(self.tenant, "Acme Inc")
            await store.add_token(self.token, self.tenant)
            await store.close()

        run_async(seed())
        self.start_scaler()
        self.start_gateway()
        return self

    def start_gateway(self) -> None:
        self.gateway.start()
        wait_until(
            lambda: httpx.get(f"{self.base}/healthz").status_code == 200, 30, "gateway health"
        )

    def start_scaler(self, port: int | None = None) -> Proc:
        port = port or (self.scaler_port if not self.scalers else free_port())
        n = len(self.scalers)
        env = {**self.env, "WAKEGATE_SCALER_PORT": str(port)}
        proc = Proc(
            f"scaler{n}", [sys.executable, "-m", "scaler"], self.tmp / f"scaler{n}.log", env
        ).start()
        self.scalers.append(proc)
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200,
            30,
            "scaler health",
        )
        return proc

    def stop(self) -> None:
        self.gateway.stop()
        for s in self.scalers:
            s.stop()
        # Replicas outlive the scaler by design; the test stack removes them like `up` does.
        from scaler.backends import create_backend
        from wakegate.settings import Settings

        async def stop_replicas() -> None:
            settings = Settings(
                state_dir=self.state_dir,
                backend=self.env.get("WAKEGATE_BACKEND", "local"),
                ray_address=self.env.get("WAKEGATE_RAY_ADDRESS"),
                ray_namespace=self.env.get("WAKEGATE_RAY_NAMESPACE", "wakegate"),
            )
            backend: Any = create_backend(settings)
            try:
                await backend.stop_all(grace_s=5)
            finally:
                await backend.close()

        run_async(stop_replicas())

    def logs(self) -> str:
        parts = [f"--- {p.name}\n{p.tail()}" for p in [self.gateway, *self.scalers]]
        return "\n".join(parts)

    def store(self) -> Store:
        """A Store on this stack's Redis with its secret key, if it has one (tokens it adds
        are signed as the gateway requires)."""
        from wakegate.sealing import box_from_settings

        key_file = self.env.get("WAKEGATE_SECRET_KEY_FILE")
        return Store.from_url(
            self.redis_url, box=box_from_settings(Path(key_file) if key_file else None)
        )

    # --- API helpers ------------------------------------------------------------------------

    @property
    def metrics_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.metrics_token}"}

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def api(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> httpx.Response:
        return httpx.request(
            method, self.base + path, headers={**self.headers, **(headers or {})}, timeout=60, **kw
        )

    def deploy_url(self, name: str) -> str:
        return f"{self.base}/{self.tenant}/deployments/v2/llms/{name}"

    def create(self, name: str, **config: Any) -> dict[str, Any]:
        cfg = {"baseModel": "gemma-3-270m", **config}
        r = self.api("POST", "/v2/deployments", json={"name": name, "config": cfg})
        assert r.status_code == 200, r.text
        return dict(r.json()["data"])

    def delete(self, name: str) -> None:
        self.api("DELETE", f"/v2/deployments/{name}")

    def generate(
        self,
        name: str,
        prompt: str = "The capital of France is",
        max_new_tokens: int = 8,
        timeout: float = 120,
        **params: Any,
    ) -> httpx.Response:
        return httpx.post(
            self.deploy_url(name) + "/generate",
            headers=self.headers,
            json={"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens, **params}},
            timeout=timeout,
        )

    # --- what runs ---------------------------------------------------------------------------

    def replicas_started(self, name: str) -> set[str]:
        """Every replica ever launched for a deployment (the local backend keeps a log each)."""
        folder = self.state_dir / "replicas"
        return {p.stem for p in folder.glob(f"{name}-*.log")} if folder.exists() else set()

    def replicas_running(self, name: str) -> set[str]:
        folder = self.state_dir / "replicas"
        alive: set[str] = set()
        for manifest in folder.glob(f"{name}-*.json") if folder.exists() else []:
            try:
                m = json.loads(manifest.read_text())
            except (OSError, ValueError):
                continue  # removed since the listing, or still being written
            try:
                os.kill(int(m["pid"]), 0)
            except ProcessLookupError:
                continue
            env_file = Path(f"/proc/{m['pid']}/environ")
            if env_file.exists() and m["replica_id"].encode() in env_file.read_bytes():
                alive.add(m["replica_id"])
        return alive

    def registry(self, name: str) -> dict[str, dict[str, Any]]:
        import redis

        from wakegate.store import dep_key

        r = redis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            raw = r.hgetall(dep_key(f"{self.tenant}/{name}", "replicas"))
        finally:
            r.close()
        return {k: json.loads(v) for k, v in raw.items()}

    def _zcard(self, name: str, part: str) -> int:
        import redis

        from wakegate.store import dep_key

        r = redis.Redis.from_url(self.redis_url)
        try:
            return int(r.zcard(dep_key(f"{self.tenant}/{name}", part)))
        finally:
            r.close()

    def queued(self, name: str) -> int:
        """Requests waiting in the deployment's queue."""
        return self._zcard(name, "queue")

    def in_flight(self, name: str) -> int:
        """Requests holding a replica slot."""
        return self._zcard(name, "inflight")

    def ready_replicas(self, name: str) -> int:
        return sum(1 for r in self.registry(name).values() if r["state"] == "ready")

    def sim_replicas(self, name: str) -> dict[str, str]:
        """Replica id -> state of the deployment's replicas on the sim host (sim backend)."""
        from scaler.backends.sim import SimBackend
        from wakegate.settings import Settings

        async def fetch() -> dict[str, str]:
            backend = SimBackend(Settings(state_dir=self.state_dir))
            try:
                url = await backend.host_url()
                if url is None:
                    return {}
                r = await backend._call("GET", url + "/replicas")
                key = f"{self.tenant}/{name}"
                return {x["replica_id"]: x["state"] for x in r.json() if x["deployment"] == key}
            finally:
                await backend.close()

        return dict(run_async(fetch()))
