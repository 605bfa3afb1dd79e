"""The `ray` backend: each replica is a named, detached Ray actor that runs the engine.

The actor (`ReplicaProcess`) is placed by Ray on a node with the resources the deployment's
accelerator needs (`num_gpus`, and the accelerator type as Ray's `accelerator_type`
resource). On that node it resolves the weights and adapters, picks a free port and launches
the engine process, because model files and ports are node-local. Its name is the replica
id, in the namespace `ray_namespace`; detached, it outlives the scaler that created it, and
a restarted scaler finds it again by listing the namespace and asking each actor what it
runs (deployment, revision, URL).

The scaler never starts a Ray cluster of its own: it joins `ray_address` (or the cluster
`ray start` runs on this machine) and fails with a clear message when there is none.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

import scaler
from scaler.backends import BackendUnavailable, NoCapacity, RunningReplica, replica_env
from scaler.backends.adapters import adapter_path
from scaler.engines import Engine
from wakegate.catalog import ACCELERATORS, pool_units
from wakegate.engines import EngineRefused
from wakegate.procs import free_port
from wakegate.settings import Settings
from wakegate.spec import DeploymentSpec

log = logging.getLogger(__name__)

# Our accelerator SKUs as Ray accelerator types (the names of `ray.util.accelerators`; spelt
# out because `NVIDIA_L40S` and `NVIDIA_A100_80G` are missing from that module's public
# names in some Ray versions). Ray detects the type of NVIDIA GPUs itself, except the memory
# size of A100s: a node with 80 GB A100s must be started with
# `--resources='{"accelerator_type:A100-80G": 1}'` (see docs/backends.md). Ray cannot tell
# H100 PCIe from SXM: both ask for an H100.
RAY_ACCELERATOR_TYPES: dict[str, str] = {
    "a10_24gb": "A10G",
    "l4_24gb": "L4",
    "l40s_48gb": "L40S",
    "a100_80gb": "A100-80G",
    "h100_80gb_pcie": "H100",
    "h100_80gb_sxm": "H100",
}

# How long an actor may take to say what it runs. One that does not answer in time (still
# waiting for a node, or its worker is starved) is left out of this listing, not reported
# dead: a later listing finds it again.
INFO_TIMEOUT_S = 5.0
# How long to try reaching the cluster's address before telling the user it is wrong.
CONNECT_TIMEOUT_S = 5.0
# How long a stopped actor may take to leave the namespace once killed.
KILL_WAIT_S = 15.0
PR_SET_PDEATHSIG = 1
# Ray counts resources in fixed point, in ten-thousandths of a unit; CPU slots are counted the
# same way, so that 0.3 CPUs fit three times into 0.9 as they do for Ray.
RAY_RESOURCE_UNITS = 10_000


@dataclass(frozen=True)
class NodePaths:
    """Where an actor keeps engine logs, models and adapters on its node (same path on every
    node: `state_dir` as the scaler sees it, made absolute)."""

    state_dir: Path
    adapter_dir: Path | None = None
    adapter_url: str | None = None

    def settings(self) -> Settings:
        return Settings(
            state_dir=self.state_dir, adapter_dir=self.adapter_dir, adapter_url=self.adapter_url
        )


def actor_options(
    replica_id: str,
    accelerator: str,
    settings: Settings,
    runtime_env: dict[str, Any] | None,
) -> dict[str, Any]:
    """The Ray options of one replica actor: its name, lifetime and resources."""
    acc = ACCELERATORS[accelerator]
    options: dict[str, Any] = {
        "name": replica_id,
        "namespace": settings.ray_namespace,
        "lifetime": "detached",
        "max_restarts": 0,  # a restarted actor would have lost its engine process
        "num_cpus": settings.ray_num_cpus,
        "num_gpus": acc.gpu_count,
    }
    if acc.gpu_count:
        try:
            options["accelerator_type"] = RAY_ACCELERATOR_TYPES[acc.sku]
        except KeyError:
            raise EngineRefused(
                "config.accelerator", f"the ray backend has no Ray accelerator type for {acc.sku}"
            ) from None
    if runtime_env:
        options["runtime_env"] = runtime_env
    return options


def cpu_slots(available_cpus: float, replica_cpus: float) -> int:
    """How many replica actors of `replica_cpus` CPUs each fit in `available_cpus` (as Ray
    counts them: in fixed point); -1 (unlimited) when an actor reserves no CPU."""
    per_replica = round(replica_cpus * RAY_RESOURCE_UNITS)
    if per_replica <= 0:
        return -1
    return max(0, round(available_cpus * RAY_RESOURCE_UNITS)) // per_replica


def free_by_sku(
    total_per_node: Mapping[str, Mapping[str, float]],
    available_per_node: Mapping[str, Mapping[str, float]],
    replica_cpus: float,
) -> dict[str, int]:
    """Free GPUs per SKU: each node's available GPUs count for the SKUs its accelerator type
    stands for. `cpu`: the CPU replica actors (of `replica_cpus` each, `ray_num_cpus`) that
    fit in each node's available CPUs, summed; -1 when an actor reserves no CPU."""
    free: dict[str, int] = {"cpu": cpu_slots(0.0, replica_cpus)}  # 0, or -1: unlimited
    for node, total in total_per_node.items():
        available = available_per_node.get(node, {})
        if free["cpu"] >= 0:
            free["cpu"] += cpu_slots(float(available.get("CPU", 0)), replica_cpus)
        types = {k.partition(":")[2] for k in total if k.startswith("accelerator_type:")}
        gpus = int(available.get("GPU", 0))
        for sku, ray_type in RAY_ACCELERATOR_TYPES.items():
            if ray_type in types:
                free[sku] = free.get(sku, 0) + gpus
    return free


def worker_runtime_env() -> dict[str, Any] | None:
    """What Ray workers need to import this package.

    An installed package is importable wherever it is installed; a source checkout on
    PYTHONPATH (a local head, a development machine) is handed on, so that the actors run the
    same code as the scaler."""
    root = Path(scaler.__file__).resolve().parent.parent
    if {"site-packages", "dist-packages"} & set(root.parts):
        return None
    paths = [str(root), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}}


def _die_with_actor() -> None:
    # Killing the actor (ray.kill, a node failure) must not leave the engine holding the GPU.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _node_ip() -> str:
    return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]


class ReplicaProcess:
    """The body of a replica actor: one engine process on the actor's node.

    Methods are coroutines, so Ray runs it as an async actor: `info` answers while
    `terminate` waits for the engine to exit."""

    def __init__(
        self,
        replica_id: str,
        deployment: str,
        revision: int,
        paths: NodePaths,
        node_ip: str | None = None,  # tests give one; in Ray, the node's own address
    ) -> None:
        self.replica_id = replica_id
        self.deployment = deployment
        self.revision = revision
        self.paths = paths
        self.node_ip = node_ip
        self.url = ""
        self.log_path = ""
        self.failed = ""  # why the launch failed, if it did
        self.created_at = time.time()
        self.started_at = 0.0
        self.proc: subprocess.Popen[bytes] | None = None

    async def launch(
        self, spec: DeploymentSpec, engine: Engine, api_key: str | None = None
    ) -> dict[str, Any]:
        """Start the engine; returns `info()`, or `{"refused": ...}` when the engine refuses
        the spec (an EngineRefused, kept apart from Ray's own errors)."""
        node_ip = self.node_ip = self.node_ip or _node_ip()
        settings = self.paths.settings()
        replicas_dir = settings.state_dir / "replicas"
        models_dir = settings.state_dir / "models"
        try:
            replicas_dir.mkdir(parents=True, exist_ok=True)
            models_dir.mkdir(parents=True, exist_ok=True)
            port = free_port(node_ip)
            # Engines that fetch adapters themselves (by Hub id) get no files.
            ids = list(spec.config.preloaded_adapters or ()) if engine.adapter_files else []
            adapters = await asyncio.to_thread(lambda: {a: adapter_path(a, settings) for a in ids})
            plan = await asyncio.to_thread(
                engine.launch, spec, node_ip, port, models_dir, adapters, api_key
            )
        except EngineRefused as exc:
            self.failed = str(exc)
            message = str(exc).removeprefix(f"{exc.field}: ")
            return {"refused": {"field": exc.field, "message": message}}
        except Exception as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            raise
        log_path = replicas_dir / f"{self.replica_id}.log"
        # The actor's own environment is the Ray worker's: the replica gets only what it needs.
        env = replica_env(plan.env, self.replica_id)
        # Started from the actor's event-loop thread, which lives as long as the actor: the
        # parent-death signal fires when the actor goes, not when a helper thread ends.
        with open(log_path, "ab") as log_file:  # noqa: ASYNC230 (a local file, at once)
            self.proc = subprocess.Popen(  # noqa: ASYNC220 (fork and exec, no waiting)
                plan.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # stopped by process group, engine children included
                preexec_fn=_die_with_actor,
            )
        self.url = f"http://{node_ip}:{port}"
        self.log_path = str(log_path)
        self.started_at = time.time()
        return await self.info()

    async def info(self) -> dict[str, Any]:
        return {
            "replica_id": self.replica_id,
            "deployment": self.deployment,
            "revision": self.revision,
            "url": self.url,
            "launched": self.proc is not None,
            "failed": self.failed,
            "alive": self.proc is not None and self.proc.poll() is None,
            "pid": self.proc.pid if self.proc is not None else 0,
            "log": self.log_path,
            "node_ip": self.node_ip or "",
            "created_at": self.created_at,
            "started_at": self.started_at,
        }

    async def terminate(self, grace_s: float) -> None:
        """SIGTERM the engine's process group, SIGKILL after `grace_s`; returns once it exited."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            while proc.poll() is None:
                await asyncio.sleep(0.05)


ReplicaActor = ray.remote(ReplicaProcess)


class RayUnavailable(BackendUnavailable):
    """No Ray cluster to join."""


def _connect(settings: Settings) -> bool:
    """Join the cluster; True when this call connected (and so `close` disconnects)."""
    if ray.is_initialized():
        return False  # the embedding process (a test, a notebook) holds the connection
    address = settings.ray_address or "auto"
    host, _, port = address.rpartition(":")
    if host and port.isdigit():
        # Ray retries an unreachable address for minutes; a scaler should say so at once.
        try:
            socket.create_connection(
                (host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S
            ).close()
        except OSError as exc:
            raise RayUnavailable(
                f"the ray backend cannot reach the Ray cluster at {address!r} ({exc}); is "
                "WAKEGATE_RAY_ADDRESS right, and does `ray status` there show the cluster?"
            ) from None
    try:
        ray.init(
            address=address,
            namespace=settings.ray_namespace,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except (ConnectionError, RuntimeError) as exc:
        raise RayUnavailable(
            f"the ray backend found no Ray cluster at {address!r} ({exc}). Start one "
            "(`ray start --head`) or point WAKEGATE_RAY_ADDRESS at it; the scaler does not "
            "start a cluster of its own."
        ) from None
    return True


class RayBackend:
    name = "ray"
    knows_whole_pool = True

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._namespace = settings.ray_namespace
        self._paths = NodePaths(
            state_dir=settings.state_dir.resolve(),
            adapter_dir=settings.adapter_dir.resolve() if settings.adapter_dir else None,
            adapter_url=settings.adapter_url,
        )
        self._runtime_env = worker_runtime_env()
        # Connecting blocks for a moment; it happens once, before the scaler's loop serves.
        self._owns_connection = _connect(settings)
        self._handles: dict[str, Any] = {}
        # Replicas whose start() is under way: the scaler watches those itself, and an actor
        # still waiting for a node could not answer a listing anyway.
        self._launching: set[str] = set()

    # --- Backend ----------------------------------------------------------------------------

    async def start(
        self,
        spec: DeploymentSpec,
        replica_id: str,
        engine: Engine,
        api_key: str | None = None,
    ) -> RunningReplica:
        options = actor_options(replica_id, spec.accelerator, self._settings, self._runtime_env)
        actor = ReplicaActor.options(**options)
        self._launching.add(replica_id)
        try:
            handle: Any = await asyncio.to_thread(
                actor.remote, replica_id, spec.key, spec.revision, self._paths
            )
            self._handles[replica_id] = handle
            info = await self._launch(
                replica_id, handle, spec, engine, _resources(options), api_key
            )
        finally:
            self._launching.discard(replica_id)
        if "refused" in info:
            await self._kill(replica_id, handle)
            refused = info["refused"]
            raise EngineRefused(str(refused["field"]), str(refused["message"]))
        log.info(
            "started replica %s of %s: actor on %s, engine at %s",
            replica_id,
            spec.key,
            info["node_ip"],
            info["url"],
        )
        return _running(info)

    async def _launch(
        self,
        replica_id: str,
        handle: Any,
        spec: DeploymentSpec,
        engine: Engine,
        needs: str,
        api_key: str | None = None,
    ) -> dict[str, Any]:
        """Wait for Ray to place the actor, then have it launch the engine, both within the
        start timeout; an actor not placed in time is NoCapacity. The actor is killed on any
        failure, not on cancellation (the scaler is shutting down): that actor launches and
        the next scaler adopts it."""
        timeout = self._settings.replica_start_timeout_s
        deadline = time.monotonic() + timeout
        placed = False
        try:
            # An actor answers once Ray has placed it on a node and created it: waiting for
            # that first tells "no node has room" apart from an engine slow to launch.
            await asyncio.wait_for(handle.info.remote(), timeout)
            placed = True
            left = deadline - time.monotonic()
            launched = handle.launch.remote(spec, engine, api_key)
            return dict(await asyncio.wait_for(launched, left))
        except TimeoutError:
            await self._kill(replica_id, handle)
            if not placed:
                raise NoCapacity(
                    f"Ray placed no node for replica {replica_id} within {timeout:.0f}s "
                    f"(needs {needs})"
                ) from None
            raise RuntimeError(
                f"replica {replica_id} did not launch its engine within {timeout:.0f}s"
            ) from None
        except Exception:
            await self._kill(replica_id, handle)
            raise

    async def stop(self, replica: RunningReplica, grace_s: float) -> None:
        await self._stop_actor(replica.replica_id, grace_s)
        log.info("stopped replica %s of %s", replica.replica_id, replica.deployment)

    async def list(self) -> list[RunningReplica]:
        names = [n for n in await self._names() if n not in self._launching]
        found = await asyncio.gather(*(self._info(n) for n in names))
        return [r for r in found if r is not None]

    async def free_accelerators(self) -> dict[str, int]:
        from ray._private import state

        totals, available = await asyncio.to_thread(
            lambda: (
                state.total_resources_per_node(),  # type: ignore[no-untyped-call]
                state.available_resources_per_node(),  # type: ignore[no-untyped-call]
            )
        )
        return free_by_sku(totals, available, self._settings.ray_num_cpus)

    def takes(self, spec: DeploymentSpec, engine_name: str) -> tuple[str, int]:
        # An actor asks Ray for its accelerator's GPUs whatever the engine: CPU engines too.
        return pool_units(spec.accelerator)

    async def close(self) -> None:
        # Detached actors keep running: a restarted scaler adopts them.
        self._handles.clear()
        if self._owns_connection and ray.is_initialized():
            ray.shutdown()

    # --- beyond the protocol ----------------------------------------------------------------

    async def stop_all(self, grace_s: float = 10.0) -> int:
        """Stop every replica actor in the namespace (test stacks, `wakegate up` shutdown)."""
        names = await self._names()
        await asyncio.gather(*(self._stop_actor(n, grace_s) for n in names))
        return len(names)

    # --- Ray plumbing -----------------------------------------------------------------------

    async def _names(self) -> builtins.list[str]:
        listed = await asyncio.to_thread(ray.util.list_named_actors, True)
        return sorted(a["name"] for a in listed if a["namespace"] == self._namespace)

    async def _handle(self, name: str) -> Any | None:
        if name in self._handles:
            return self._handles[name]
        try:
            handle = await asyncio.to_thread(ray.get_actor, name, self._namespace)
        except ValueError:
            return None  # no such actor (any more)
        self._handles[name] = handle
        return handle

    async def _info(self, name: str) -> RunningReplica | None:
        handle = await self._handle(name)
        if handle is None:
            return None
        try:
            info = await asyncio.wait_for(handle.info.remote(), INFO_TIMEOUT_S)
        except RayActorError:
            self._handles.pop(name, None)
            return None  # dead or being killed
        except (TimeoutError, AttributeError):
            log.debug("actor %s did not say what it runs; left out of this listing", name)
            return None
        if info["failed"]:
            # A launch that failed after its scaler died: report it dead so it is stopped.
            return _running(info, alive=False)
        if not info["launched"]:
            if time.time() - float(info["created_at"]) > self._settings.replica_start_timeout_s:
                # Created but never told to launch (its scaler died first): nobody will.
                return _running(info, alive=False)
            return None
        return _running(info)

    async def _stop_actor(self, name: str, grace_s: float) -> None:
        handle = await self._handle(name)
        if handle is None:
            return
        with contextlib.suppress(RayError, TimeoutError):
            # The margin covers the SIGKILL after the grace period and a slow actor.
            await asyncio.wait_for(handle.terminate.remote(grace_s), grace_s + 30)
        await self._kill(name, handle)

    async def _kill(self, name: str, handle: Any) -> None:
        """Kill the actor and wait until its name is free: a listing right after a stop must
        not find it alive (the scaler would adopt it again)."""
        with contextlib.suppress(RayError, ValueError):
            ray.kill(handle, no_restart=True)
        self._handles.pop(name, None)
        deadline = time.monotonic() + KILL_WAIT_S
        while time.monotonic() < deadline and name in await self._names():
            await asyncio.sleep(0.1)


def _running(info: dict[str, Any], alive: bool | None = None) -> RunningReplica:
    return RunningReplica(
        replica_id=str(info["replica_id"]),
        deployment=str(info["deployment"]),
        revision=int(info["revision"]),
        url=str(info["url"]),
        handle={
            "actor": str(info["replica_id"]),
            "node_ip": info["node_ip"],
            "pid": info["pid"],
            "log": info["log"],
        },
        alive=bool(info["alive"]) if alive is None else alive,
    )


def _resources(options: dict[str, Any]) -> str:
    wanted = {
        "CPU": options["num_cpus"],
        "GPU": options["num_gpus"],
        "accelerator_type": options.get("accelerator_type"),
    }
    return ", ".join(f"{k}={v}" for k, v in wanted.items() if v)
