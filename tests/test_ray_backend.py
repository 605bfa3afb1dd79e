"""The `ray` backend: replicas as named, detached Ray actors on a real local Ray head.

The end-to-end test starts its own Ray head (`ray start --head --block`, on a free port, with
its own temp dir) and a wakegate stack on it, and serves real text from llama.cpp through a
replica actor. The actor body (`ReplicaProcess`) is also tested on its own, without Ray.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import Proc, Stack, free_port, port_open, wait_until

from scaler.backends import NoCapacity
from scaler.engines import LaunchPlan, get_engine
from wakegate.catalog import ACCELERATORS
from wakegate.engines import EngineRefused
from wakegate.settings import Settings
from wakegate.spec import DeploymentConfig, DeploymentSpec

ray = pytest.importorskip("ray", reason="the ray backend needs ray: pip install 'wakegate[ray]'")

from scaler.backends.ray import (  # noqa: E402 (only once ray is known to be importable)
    RAY_ACCELERATOR_TYPES,
    NodePaths,
    RayBackend,
    ReplicaProcess,
    actor_options,
    cpu_slots,
    free_by_sku,
)

NAMESPACE = "wakegate-test"


def spec(name: str = "d1", **config: Any) -> DeploymentSpec:
    cfg = {"base_model": "gemma-3-270m", **config}
    return DeploymentSpec(
        "acme", name, "uuid-" + name, None, DeploymentConfig.from_dict(cfg), "ready", 3, 0.0, 0.0
    )


# --- pure parts -----------------------------------------------------------------------------


def test_every_gpu_sku_in_the_catalogue_has_a_ray_accelerator_type() -> None:
    gpu_skus = {a.sku for a in ACCELERATORS.values() if a.gpu_count}
    assert gpu_skus <= set(RAY_ACCELERATOR_TYPES)
    # Spelt as Ray spells them (ray.util.accelerators).
    from ray.util.accelerators import accelerators as known

    ray_names = {v for k, v in vars(known).items() if k.isupper() and isinstance(v, str)}
    assert set(RAY_ACCELERATOR_TYPES.values()) <= ray_names


@pytest.mark.parametrize(
    ("accelerator", "gpus", "ray_type"),
    [
        ("cpu", 0, None),
        ("a10_24gb_100", 1, "A10G"),
        ("a10_24gb_400", 4, "A10G"),
        ("a100_80gb_200", 2, "A100-80G"),
        ("h100_80gb_sxm_100", 1, "H100"),
    ],
    ids=["cpu-needs-no-gpu", "one-a10g", "four-a10g", "two-a100-80g", "h100-sxm-is-an-h100"],
)
def test_replica_actor_is_named_detached_and_asks_for_its_accelerator(
    accelerator: str, gpus: int, ray_type: str | None
) -> None:
    settings = Settings(ray_namespace="ns", ray_num_cpus=0.5)
    options = actor_options("d1-abc", accelerator, settings, None)
    assert options["name"] == "d1-abc"
    assert options["namespace"] == "ns"
    assert options["lifetime"] == "detached"
    assert options["num_cpus"] == 0.5
    assert options["num_gpus"] == gpus
    assert options.get("accelerator_type") == ray_type


MIXED_NODES = {
    "n1": {"CPU": 8.0, "GPU": 4.0, "accelerator_type:A10G": 1.0},
    "n2": {"CPU": 8.0, "GPU": 2.0, "accelerator_type:A10G": 1.0},
    "n3": {"CPU": 16.0, "GPU": 8.0, "accelerator_type:H100": 1.0},
    "n4": {"CPU": 2.0},
}
MIXED_AVAILABLE = {
    "n1": {"CPU": 2.0, "GPU": 1.0},
    "n2": {"CPU": 0.5, "GPU": 2.0},
    "n3": {},
    "n4": {"CPU": 2.0},
}


@pytest.mark.parametrize(
    ("totals", "available", "replica_cpus", "free"),
    [
        (
            MIXED_NODES,
            MIXED_AVAILABLE,
            1.0,
            {"cpu": 4, "a10_24gb": 3, "h100_80gb_pcie": 0, "h100_80gb_sxm": 0},
        ),
        (
            MIXED_NODES,
            MIXED_AVAILABLE,
            1.5,
            {"cpu": 2, "a10_24gb": 3, "h100_80gb_pcie": 0, "h100_80gb_sxm": 0},
        ),
        ({"n": {"CPU": 4.0}}, {"n": {"CPU": 0.9}}, 0.3, {"cpu": 3}),
        ({"n": {"CPU": 4.0}}, {"n": {"CPU": 4.0}}, 0.0, {"cpu": -1}),
        (
            {"n": {"CPU": 4.0, "GPU": 1.0, "accelerator_type:L4": 1.0}},
            {},
            1.0,
            {"cpu": 0, "l4_24gb": 0},
        ),
        ({}, {}, 1.0, {"cpu": 0}),
    ],
    ids=[
        "gpus-count-for-each-sku-of-the-nodes-type-and-cpu-slots-per-node",
        "an-actor-fits-on-one-node-or-not-at-all",
        "cpu-slots-are-counted-as-ray-counts-not-in-floating-point",
        "actors-that-reserve-no-cpu-are-unlimited",
        "a-node-with-nothing-available-has-no-room",
        "no-nodes-no-room",
    ],
)
def test_free_accelerators_per_sku_and_cpu_replica_slots(
    totals: dict[str, dict[str, float]],
    available: dict[str, dict[str, float]],
    replica_cpus: float,
    free: dict[str, int],
) -> None:
    assert free_by_sku(totals, available, replica_cpus) == free


@pytest.mark.parametrize(
    ("available", "replica_cpus", "slots"),
    [(4.0, 1.0, 4), (4.0, 1.5, 2), (0.9, 0.3, 3), (0.5, 1.0, 0), (0.0, 1.0, 0), (4.0, 0.0, -1)],
    ids=[
        "whole-cpus",
        "rounds-down",
        "fractions-that-fit-exactly-fit",
        "less-than-one-actor-is-none",
        "nothing-available",
        "no-cpu-per-actor-is-unlimited",
    ],
)
def test_cpu_slots(available: float, replica_cpus: float, slots: int) -> None:
    assert cpu_slots(available, replica_cpus) == slots


@dataclass(frozen=True)
class SleeperProfile:
    """An engine that only sleeps (and ignores SIGTERM when told to): the actor body's
    process handling without a model."""

    ignore_sigterm: bool = False
    name: str = "sleeper"
    dialect: str = "openai"
    health_path: str = "/"
    concurrency: int = 1
    cheap_logprobs: bool = True
    adapter_files: bool = False
    image: str = "wakegate:latest"

    def launch(
        self,
        spec: DeploymentSpec,
        host: str,
        port: int,
        models_dir: Path,
        adapters: dict[str, Path],
        api_key: str | None = None,
    ) -> LaunchPlan:
        code = "import signal, time\n"
        if self.ignore_sigterm:
            code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        code += "print('up', flush=True)\ntime.sleep(120)\n"
        return LaunchPlan(argv=[sys.executable, "-c", code])


@dataclass(frozen=True)
class RefusingProfile(SleeperProfile):
    def launch(
        self,
        spec: DeploymentSpec,
        host: str,
        port: int,
        models_dir: Path,
        adapters: dict[str, Path],
        api_key: str | None = None,
    ) -> LaunchPlan:
        raise EngineRefused("config.quantization", "not here")


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize(
    "ignore_sigterm", [False, True], ids=["sigterm-stops", "sigkill-after-grace"]
)
async def test_actor_body_launches_the_engine_reports_it_and_stops_it(
    tmp_path: Path, ignore_sigterm: bool
) -> None:
    body = ReplicaProcess("d1-abc", "acme/d1", 3, NodePaths(tmp_path), node_ip="127.0.0.1")
    info = await body.launch(spec(), SleeperProfile(ignore_sigterm))
    assert info["alive"] and info["launched"] and not info["failed"]
    assert info["url"].startswith("http://127.0.0.1:")
    assert (info["replica_id"], info["deployment"], info["revision"]) == ("d1-abc", "acme/d1", 3)
    pid = int(info["pid"])
    log_path = Path(info["log"])
    assert log_path.parent == tmp_path / "replicas"
    wait_until(lambda: "up" in log_path.read_text(), 10, "engine output in its log")
    t0 = time.monotonic()
    await body.terminate(grace_s=1.0)
    assert pid_gone(pid)
    assert (time.monotonic() - t0 >= 1.0) == ignore_sigterm
    assert not (await body.info())["alive"]
    await body.terminate(grace_s=1.0)  # idempotent


async def test_actor_body_reports_a_refused_spec_instead_of_raising(tmp_path: Path) -> None:
    body = ReplicaProcess("d1-abc", "acme/d1", 3, NodePaths(tmp_path), node_ip="127.0.0.1")
    assert await body.launch(spec(), RefusingProfile()) == {
        "refused": {"field": "config.quantization", "message": "not here"}
    }
    info = await body.info()
    assert info["failed"] and not info["launched"] and not info["alive"]


def test_scaler_without_a_reachable_ray_cluster_exits_at_once_saying_so(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "WAKEGATE_BACKEND": "ray",
        "WAKEGATE_RAY_ADDRESS": f"127.0.0.1:{free_port()}",  # nothing listens there
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}",
        "WAKEGATE_STATE_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "scaler"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "cannot reach the Ray cluster" in done.stderr
    assert "Traceback" not in done.stderr


# --- a real Ray head ------------------------------------------------------------------------


def ray_cli() -> str:
    found = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if not found:
        pytest.skip("the `ray` command is not installed")
    return found


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray head of this module's own; the test process connects to it as a driver."""
    logs = tmp_path_factory.mktemp("ray-head")
    # Ray's unix sockets live under the temp dir, and their paths must stay short.
    temp_dir = tempfile.mkdtemp(prefix="wgray-", dir="/tmp")
    port = free_port()
    # --block keeps `ray start` in the foreground as the parent of the head's processes, so
    # stopping it stops this head and nothing else running on the machine.
    head = Proc(
        "ray-head",
        [
            ray_cli(),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=4",
            "--num-gpus=0",
            "--object-store-memory=100000000",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        logs / "ray-head.log",
        env={"RAY_USAGE_STATS_ENABLED": "0"},
    ).start()
    address = f"127.0.0.1:{port}"
    try:
        wait_until(lambda: port_open(port) or not head.alive(), 90, "ray head")
        assert head.alive(), head.tail()
        ray.init(
            address=address,
            namespace=NAMESPACE,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        head.stop(signal.SIGTERM, timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def actors() -> set[str]:
    """Replica actors alive in the test namespace, as Ray lists them."""
    listed = ray.util.list_named_actors(all_namespaces=True)
    return {a["name"] for a in listed if a["namespace"] == NAMESPACE}


def actor_info(replica_id: str) -> dict[str, Any]:
    handle = ray.get_actor(replica_id, namespace=NAMESPACE)
    return dict(ray.get(handle.info.remote(), timeout=30))


async def until_free_cpu(backend: RayBackend, slots: int) -> None:
    """Until the backend reports `slots` CPU slots and nothing else (Ray updates its view of
    free resources within a moment of a change)."""
    async with asyncio.timeout(30):
        while await backend.free_accelerators() != {"cpu": slots}:
            await asyncio.sleep(0.2)


async def test_no_node_for_a_replica_is_no_capacity_and_a_placed_one_is_not(
    ray_head: str, tmp_path: Path
) -> None:
    def backend(start_timeout_s: float) -> RayBackend:
        return RayBackend(
            Settings(
                state_dir=tmp_path,
                ray_namespace=NAMESPACE,
                ray_num_cpus=2,
                replica_start_timeout_s=start_timeout_s,
            )
        )

    impatient, patient = backend(3), backend(120)
    try:
        # The head has 4 CPUs and no GPU: two actors of 2 CPUs fit, and no GPU replica.
        await until_free_cpu(impatient, 2)
        assert impatient.takes(spec(accelerator="a10_24gb_100"), "llamacpp") == ("a10_24gb", 1)
        with pytest.raises(NoCapacity, match=r"placed no node.*GPU=1"):
            await impatient.start(spec(accelerator="a10_24gb_100"), "nocap-gpu", get_engine("sim"))
        assert "nocap-gpu" not in actors()
        # A CPU actor is placed; then its engine refuses the spec (the sim engine runs only
        # on the sim backend): a refusal, not a lack of room.
        with pytest.raises(EngineRefused, match="sim backend"):
            await patient.start(spec(), "placed-cpu", get_engine("sim"))
        assert "placed-cpu" not in actors()
        await until_free_cpu(impatient, 2)
    finally:
        await impatient.close()
        await patient.close()


def test_cold_request_starts_one_actor_that_a_restarted_scaler_adopts_and_cooldown_stops(
    ray_head: str, make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack(backend="ray", ray_address=ray_head, ray_namespace=NAMESPACE, ray_num_cpus=1)
    # Long enough to outlast the scaler restart below (a fresh scaler scales down at once if
    # the deployment was idle for a cooldown), short enough to see the scale-down.
    stack.create(name, minReplicas=0, maxReplicas=1, cooldownTime=25)
    time.sleep(2)  # a few reconcile passes: nothing starts without a request
    assert actors() == set()

    t0 = time.monotonic()
    r = stack.generate(name)
    assert r.status_code == 200, r.text + stack.logs()
    assert r.json()["generated_text"].strip()
    cold_start_s = time.monotonic() - t0
    started = actors()
    assert len(started) == 1, started
    (replica_id,) = started
    assert replica_id.startswith(f"{name}-")
    assert set(stack.registry(name)) == started
    assert stack.registry(name)[replica_id]["backend"] == "ray"
    info = actor_info(replica_id)
    assert info["alive"] and info["deployment"] == f"{stack.tenant}/{name}"
    # The engine the actor runs is llama.cpp serving the model, at the URL the actor reported,
    # to callers with the replica's key.
    key = stack.registry(name)[replica_id]["key"]
    assert httpx.get(info["url"] + "/v1/models", timeout=10).status_code == 401
    auth = {"Authorization": f"Bearer {key}"}
    models = httpx.get(info["url"] + "/v1/models", headers=auth, timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["gemma-3-270m"]

    stack.scalers[0].kill9()
    stack.scalers.clear()
    # The detached actor outlives its scaler and keeps serving.
    assert actors() == started
    assert stack.generate(name).status_code == 200
    stack.start_scaler()
    time.sleep(5)  # a leader lease period and several reconcile passes
    assert actors() == started
    assert stack.replicas_started(name) == started  # one engine log: nothing was relaunched
    assert set(stack.registry(name)) == started
    assert stack.ready_replicas(name) == 1
    r = stack.generate(name, "Once upon a time")
    assert r.status_code == 200, r.text
    assert r.json()["generated_text"].strip()
    assert actor_info(replica_id)["pid"] == info["pid"]

    # Idle for a cooldown: the adopted replica is drained and its actor stopped.
    # The scaler drops the registry entry only once the backend has stopped the actor.
    wait_until(
        lambda: not actors() and not stack.registry(name),
        90,
        "the idle replica's actor to be stopped and unregistered",
        every=0.5,
    )
    assert pid_gone(int(info["pid"]))
    print(f"cold start through Ray: {cold_start_s:.1f}s")
