"""The `local` backend: replicas are processes on this host.

Each replica runs in its own session so that it outlives a scaler restart; a manifest per
replica under `<state_dir>/replicas/` lets a new scaler (or `wakegate up` at shutdown) find it
again. GPUs are handed out with CUDA_VISIBLE_DEVICES when `nvidia-smi` reports any (see
scaler/backends/gpus.py): a replica gets `gpu_count` free GPUs of its accelerator's SKU, and
its manifest records them. CPU engines need none, and run on CPU when the host has no GPU.

Capacity: free GPUs by SKU, and `local_cpu_replicas` CPU replica slots (a replica whose
manifest holds no GPU is a CPU replica). A start that finds no free GPU of its SKU, or no CPU
slot, raises NoCapacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from scaler.backends import NoCapacity, RunningReplica, gpus, replica_env
from scaler.backends.adapters import adapter_path
from scaler.engines import Engine
from wakegate.catalog import ACCELERATORS, Accelerator, pool_units
from wakegate.engines import EngineRefused
from wakegate.pool import CPU_ENGINES  # on a host without GPUs they ignore the accelerator
from wakegate.procs import free_port
from wakegate.settings import Settings
from wakegate.spec import DeploymentSpec

log = logging.getLogger(__name__)


def replica_takes(
    accelerator: Accelerator, engine_name: str, host_has_gpus: bool
) -> tuple[str, int]:
    """(SKU, units) one replica takes on a local host: one `cpu` slot for an accelerator
    without GPUs, and for a CPU engine on a host without GPUs (it runs on the CPU whatever its
    accelerator asks); else its accelerator's GPUs. A GPU engine on a host without GPUs still
    takes GPUs, which that host never has: it is refused at start."""
    if accelerator.gpu_count == 0 or (engine_name in CPU_ENGINES and not host_has_gpus):
        return pool_units("cpu")
    return pool_units(accelerator.id)


def free_capacity(
    host_gpus: Sequence[gpus.Gpu],
    live_replica_gpus: Sequence[Sequence[int]],
    cpu_limit: int,
) -> dict[str, int]:
    """Free GPUs by SKU and free CPU replica slots (`cpu`), given the GPU indices each live
    replica holds; one that holds none is a CPU replica. A negative limit is no limit (-1)."""
    busy = {index for held in live_replica_gpus for index in held}
    cpu_replicas = sum(1 for held in live_replica_gpus if not held)
    cpu_free = -1 if cpu_limit < 0 else max(0, cpu_limit - cpu_replicas)
    return {"cpu": cpu_free, **gpus.free_by_sku(host_gpus, busy)}


def pid_alive(pid: int, replica_id: str) -> bool:
    _reap(pid)  # a child of ours that died is a zombie until waited for
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Guard against pid reuse: the process must carry our replica id in its environment.
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        if f"WAKEGATE_REPLICA_ID={replica_id}".encode() in environ:
            return True
        if environ:
            return False  # another process under a reused pid
        # Empty: a zombie, or a process inside execve (Popen returns once the exec is past
        # its point of no return, before the kernel has laid out the new environment).
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        return True


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> int:
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # survives the scaler; stopped by process group
        )
    return proc.pid


def _reap(pid: int) -> None:
    # A replica this process started and that died is a zombie until waited for.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


class LocalBackend:
    name = "local"
    knows_whole_pool = True

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._dir = settings.state_dir / "replicas"
        self._models = settings.state_dir / "models"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._models.mkdir(parents=True, exist_ok=True)
        # Discovered once, here, because `takes` must answer without waiting: at once without
        # nvidia-smi, within a second or two with it, before the scaler serves.
        self._gpus: list[gpus.Gpu] = gpus.discover()
        self._placing = asyncio.Lock()  # GPU choice and manifest write happen together

    def _manifest(self, replica_id: str) -> Path:
        return self._dir / f"{replica_id}.json"

    async def start(
        self,
        spec: DeploymentSpec,
        replica_id: str,
        engine: Engine,
        api_key: str | None = None,
    ) -> RunningReplica:
        host = self._settings.replica_host
        port = free_port(host)
        # Engines that fetch adapters by id themselves (vLLM, LoRAX, TGI) get none here.
        adapters = await asyncio.to_thread(self._adapters, spec) if engine.adapter_files else {}
        plan = await asyncio.to_thread(
            engine.launch, spec, host, port, self._models, adapters, api_key
        )
        log_path = self._dir / f"{replica_id}.log"
        async with self._placing:
            devices = await self._place(spec, engine)
            env = replica_env(plan.env, replica_id)
            if devices is not None:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in devices)
            pid = await asyncio.to_thread(_spawn, plan.argv, env, log_path)
            await self._write_manifest(spec, replica_id, host, port, pid, log_path, devices)
        url = self._url(host, port)
        replica = RunningReplica(
            replica_id=replica_id,
            deployment=spec.key,
            revision=spec.revision,
            url=url,
            handle={"pid": pid, "log": str(log_path), "gpus": devices or []},
        )
        log.info(
            "started replica %s of %s: pid %s at %s%s",
            replica_id,
            spec.key,
            pid,
            url,
            f" on GPU {','.join(map(str, devices))}" if devices else "",
        )
        return replica

    def _url(self, host: str, port: int) -> str:
        return f"http://{self._settings.replica_advertise_host or host}:{port}"

    async def _write_manifest(
        self,
        spec: DeploymentSpec,
        replica_id: str,
        host: str,
        port: int,
        pid: int,
        log_path: Path,
        devices: list[int] | None,
    ) -> None:
        manifest = {
            "replica_id": replica_id,
            "deployment": spec.key,
            "revision": spec.revision,
            "url": self._url(host, port),
            "pid": pid,
            "log": str(log_path),
            "gpus": devices or [],
            "started_at": time.time(),
        }
        self._manifest(replica_id).write_text(json.dumps(manifest))

    async def _live_replica_gpus(self) -> list[list[int]]:
        """The GPU indices each live replica holds ([] for a CPU replica)."""
        return [list(r.handle.get("gpus", [])) for r in await self.list() if r.alive]

    async def _place(self, spec: DeploymentSpec, engine: Engine) -> list[int] | None:
        """GPU indices for the replica; [] hides every GPU (a CPU replica on a GPU host);
        None leaves the environment alone (a host without GPUs). Raises NoCapacity when no
        GPU of its SKU (gpus.NoGpu) or no CPU slot is free."""
        accelerator = ACCELERATORS[spec.accelerator]
        if not self._gpus and accelerator.gpu_count and engine.name not in CPU_ENGINES:
            raise EngineRefused(
                "config.accelerator",
                f"{engine.name} needs {accelerator.gpu_count} GPU(s) ({accelerator.id}) "
                "and nvidia-smi finds none on this host",
            )
        live = await self._live_replica_gpus()
        sku, _ = self.takes(spec, engine.name)
        if sku != "cpu":
            return gpus.pick(self._gpus, {i for held in live for i in held}, accelerator)
        limit = self._settings.local_cpu_replicas
        if free_capacity(self._gpus, live, limit)["cpu"] == 0:
            raise NoCapacity(
                f"the local backend runs at most {limit} CPU replicas (local_cpu_replicas) "
                "and that many run"
            )
        return [] if self._gpus else None

    def _adapters(self, spec: DeploymentSpec) -> dict[str, Path]:
        ids = spec.config.preloaded_adapters or ()
        return {a: adapter_path(a, self._settings) for a in ids}

    async def stop(self, replica: RunningReplica, grace_s: float) -> None:
        pid = int(replica.handle.get("pid", 0))
        if pid and pid_alive(pid, replica.replica_id):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and pid_alive(pid, replica.replica_id):
                await asyncio.sleep(0.1)
            if pid_alive(pid, replica.replica_id):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                while pid_alive(pid, replica.replica_id):
                    await asyncio.sleep(0.05)
        self._manifest(replica.replica_id).unlink(missing_ok=True)
        log.info("stopped replica %s of %s", replica.replica_id, replica.deployment)

    async def list(self) -> list[RunningReplica]:
        out = []
        for path in sorted(self._dir.glob("*.json")):
            try:
                m = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            out.append(
                RunningReplica(
                    replica_id=m["replica_id"],
                    deployment=m["deployment"],
                    revision=int(m["revision"]),
                    url=m["url"],
                    handle={"pid": m["pid"], "log": m.get("log"), "gpus": m.get("gpus", [])},
                    alive=pid_alive(int(m["pid"]), m["replica_id"]),
                )
            )
        return out

    async def free_accelerators(self) -> dict[str, int]:
        live = await self._live_replica_gpus()
        return free_capacity(self._gpus, live, self._settings.local_cpu_replicas)

    def takes(self, spec: DeploymentSpec, engine_name: str) -> tuple[str, int]:
        return replica_takes(ACCELERATORS[spec.accelerator], engine_name, bool(self._gpus))

    async def close(self) -> None:
        return None

    async def stop_all(self, grace_s: float = 10.0) -> int:
        """Stop every replica this host runs (used by `wakegate up` on shutdown)."""
        replicas = await self.list()
        await asyncio.gather(*(self.stop(r, grace_s) for r in replicas))
        return len(replicas)
