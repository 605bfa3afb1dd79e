"""The `sim` backend: replicas are simulated engines on a simulated GPU pool.

Every replica lives in one sim host process (scaler/sim/host.py), driven over HTTP. The host
records its address in `<state_dir>/sim-host.json`; a scaler that finds no live host there
starts one in its own session, so that the host and its replicas outlive the scaler and a
restarted scaler adopts them, as with the local backend. Only models of the `sim` engine
(e.g. `sim-llm`) run here.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from scaler.backends import NoCapacity, RunningReplica, replica_env
from scaler.engines import Engine
from scaler.engines.sim import SimEngine
from scaler.sim.host import STATE_FILE
from scaler.sim.pool import parse_pool
from wakegate.catalog import pool_units
from wakegate.engines import EngineRefused
from wakegate.settings import Settings
from wakegate.spec import DeploymentSpec

log = logging.getLogger(__name__)

HOST_START_TIMEOUT_S = 20.0
HTTP_MARGIN_S = 30.0


class SimHostError(RuntimeError):
    """The sim host failed or answered an error."""


class PoolExhausted(NoCapacity, SimHostError):
    """The simulated pool has no free GPU of the kind a replica needs (409 pool_exhausted):
    the replica waits for capacity."""


def host_alive(pid: int, state_dir: Path) -> bool:
    """A sim host for `state_dir` runs as `pid` (guards against pid reuse)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # a host this process started and that died is a zombie
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"scaler.sim.host" in args and str(state_dir).encode() in args


# What a call to the host may fail with before it has an answer (no host, or no reply in time).
HostUnreachable = (aiohttp.ClientError, TimeoutError)


@dataclass(frozen=True)
class _Reply:
    """The sim host's answer, read whole (its answers are small)."""

    status_code: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise SimHostError(f"sim host answered {self.status_code}: {_detail(self)}")


def _detail(resp: _Reply) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:300]
    return str(data.get("detail", data)) if isinstance(data, dict) else str(data)


class SimBackend:
    name = "sim"
    knows_whole_pool = True

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._dir = settings.state_dir.resolve()
        self._dir.mkdir(parents=True, exist_ok=True)
        self._http: aiohttp.ClientSession | None = None  # made on first use, in the loop
        self._start_lock = asyncio.Lock()
        self._proc: subprocess.Popen[bytes] | None = None  # a host this process started

    # --- the host ---------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self._dir / STATE_FILE

    def _record(self) -> dict[str, Any] | None:
        try:
            rec = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) and "pid" in rec and "url" in rec else None

    def _live_record(self) -> dict[str, Any] | None:
        rec = self._record()
        return rec if rec is not None and host_alive(int(rec["pid"]), self._dir) else None

    async def _call(self, method: str, url: str, limit_s: float = 10.0, **kwargs: Any) -> _Reply:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        rec = self._record() or {}
        headers = {"Authorization": f"Bearer {rec['token']}"} if rec.get("token") else {}
        async with self._http.request(
            method, url, timeout=aiohttp.ClientTimeout(total=limit_s), headers=headers, **kwargs
        ) as resp:
            return _Reply(resp.status, await resp.read())

    async def host_url(self, start: bool = False) -> str | None:
        """The live host's control URL; with `start`, one is started when none runs."""
        rec = self._live_record()
        if rec is not None:
            return str(rec["url"])
        if not start:
            return None
        async with self._start_lock:
            return await asyncio.to_thread(self._start_host)

    def _start_host(self) -> str:
        # A file lock, so two scalers (or a scaler and a benchmark) never start two hosts.
        with open(self._dir / "sim-host.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            rec = self._live_record()
            if rec is not None:
                return str(rec["url"])
            s = self._settings
            argv = [
                sys.executable,
                "-m",
                "scaler.sim.host",
                "--host",
                s.replica_host,
                "--port",
                "0",
                "--state-dir",
                str(self._dir),
                "--pool",
                s.sim_pool,
                "--acquire-s",
                str(s.sim_acquire_s),
                "--time-scale",
                str(s.sim_time_scale),
                "--log-level",
                s.log_level,
            ]
            if s.replica_advertise_host:
                argv += ["--advertise-host", s.replica_advertise_host]
            log_path = self._dir / "sim-host.log"
            with open(log_path, "ab") as fh:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    # The host runs every simulated replica: it gets a replica's environment,
                    # plus the path to this project's modules (it is one of them).
                    env=replica_env({}, keep=("PYTHONPATH", "PYTHONUNBUFFERED")),
                    start_new_session=True,  # outlives the scaler, like local replicas
                )
            deadline = time.monotonic() + HOST_START_TIMEOUT_S
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise SimHostError(
                        f"sim host exited with {proc.returncode} at start-up; see {log_path}"
                    )
                rec = self._record()
                if rec is not None and rec.get("pid") == proc.pid:
                    self._proc = proc
                    log.info("started sim host %s at %s", proc.pid, rec["url"])
                    return str(rec["url"])
                time.sleep(0.05)
            proc.kill()
            proc.wait()
            raise SimHostError(f"sim host did not come up in {HOST_START_TIMEOUT_S}s")

    def _start_timeout(self) -> float:
        rec = self._record() or {}
        acquire_s = float(rec.get("acquire_s", self._settings.sim_acquire_s))
        scale = float(rec.get("time_scale", self._settings.sim_time_scale)) or 1.0
        return acquire_s / scale + HTTP_MARGIN_S

    # --- Backend ----------------------------------------------------------------------------

    async def start(
        self,
        spec: DeploymentSpec,
        replica_id: str,
        engine: Engine,
        api_key: str | None = None,
    ) -> RunningReplica:
        if not isinstance(engine, SimEngine):
            raise EngineRefused(
                "config.baseModel",
                f"the sim backend runs only simulated models (engine 'sim', e.g. sim-llm); "
                f"{spec.base_model!r} needs engine {engine.name!r}",
            )
        params = engine.sim_params(spec)
        url = await self.host_url(start=True)
        assert url is not None
        body = {
            "replica_id": replica_id,
            "deployment": spec.key,
            "revision": spec.revision,
            "accelerator": spec.accelerator,
            "params": params,
        }
        if api_key:
            body["api_key"] = api_key  # the host checks it on the replica's routes
        resp = await self._call("POST", f"{url}/replicas", self._start_timeout(), json=body)
        if resp.status_code == 409 and "pool_exhausted" in resp.text:
            raise PoolExhausted(_detail(resp))
        if resp.status_code != 200:
            raise SimHostError(
                f"sim host refused {replica_id} ({resp.status_code}): {_detail(resp)}"
            )
        data = resp.json()
        log.info("started sim replica %s of %s at %s", replica_id, spec.key, data["url"])
        return RunningReplica(
            replica_id=replica_id,
            deployment=spec.key,
            revision=spec.revision,
            url=str(data["url"]),
            handle={"host": url, "accelerator": spec.accelerator},
        )

    async def stop(self, replica: RunningReplica, grace_s: float) -> None:
        url = await self.host_url()
        if url is None:
            return  # no host, no replicas
        try:
            resp = await self._call(
                "DELETE",
                f"{url}/replicas/{quote(replica.replica_id, safe='')}",
                grace_s + HTTP_MARGIN_S,
                params={"grace_s": str(grace_s)},
            )
        except HostUnreachable:
            if await self.host_url() is None:
                return  # the host died with its replicas
            raise
        if resp.status_code not in (200, 404):
            raise SimHostError(f"sim host could not stop {replica.replica_id}: {_detail(resp)}")
        log.info("stopped sim replica %s of %s", replica.replica_id, replica.deployment)

    async def list(self) -> list[RunningReplica]:
        url = await self.host_url()
        if url is None:
            return []  # no host: every simulated replica is gone
        try:
            resp = await self._call("GET", f"{url}/replicas")
        except HostUnreachable:
            if await self.host_url() is None:
                return []
            raise  # a live host that does not answer: better no answer than a wrong one
        resp.raise_for_status()
        return [
            RunningReplica(
                replica_id=r["replica_id"],
                deployment=r["deployment"],
                revision=int(r["revision"]),
                url=r["url"],
                handle={"host": url, "accelerator": r["accelerator"]},
                alive=r["state"] != "stopped",
            )
            for r in resp.json()
        ]

    async def free_accelerators(self) -> dict[str, int]:
        url = await self.host_url()
        if url is None:
            return parse_pool(self._settings.sim_pool)
        resp = await self._call("GET", f"{url}/pool")
        resp.raise_for_status()
        return {sku: int(v["free"]) for sku, v in resp.json().items()}

    def takes(self, spec: DeploymentSpec, engine_name: str) -> tuple[str, int]:
        # What the host's Pool takes for the replica's accelerator.
        return pool_units(spec.accelerator)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    # --- beyond the protocol ----------------------------------------------------------------

    async def usage(self) -> dict[str, Any]:
        """GPU lease intervals per deployment (GET /usage on the host); empty without one."""
        url = await self.host_url()
        if url is None:
            return {"usage": {}, "gpu_seconds": {}}
        resp = await self._call("GET", f"{url}/usage")
        resp.raise_for_status()
        return dict(resp.json())

    async def stop_all(self, grace_s: float = 10.0) -> int:
        """Stop every replica and the host itself (test stacks and `wakegate up` shutdown)."""
        rec = self._live_record()
        if rec is None:
            return 0
        pid, url = int(rec["pid"]), str(rec["url"])
        stopped = 0
        try:
            resp = await self._call(
                "POST", f"{url}/shutdown", grace_s + HTTP_MARGIN_S, params={"grace_s": str(grace_s)}
            )
            stopped = int(resp.json().get("stopped", 0))
        except (*HostUnreachable, ValueError) as exc:
            log.warning("sim host %s did not shut down on request (%s); killing it", pid, exc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and host_alive(pid, self._dir):
            await asyncio.sleep(0.05)
        if host_alive(pid, self._dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while host_alive(pid, self._dir):
                await asyncio.sleep(0.05)
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.state_file.read_text()).get("pid") == pid:
                self.state_file.unlink()
        return stopped
