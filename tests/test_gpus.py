"""GPU discovery, placement and capacity on the local backend.

This machine has no GPU, so `nvidia-smi` is stood in by a script that prints what the real
tool prints on a two-A10G host (its CSV query format); the replica processes are real.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from scaler.backends import NoCapacity, RunningReplica, gpus
from scaler.backends.local import LocalBackend, free_capacity, replica_takes
from scaler.engines import LaunchPlan
from wakegate.catalog import ACCELERATORS
from wakegate.engines import EngineRefused
from wakegate.settings import Settings
from wakegate.spec import DeploymentConfig, DeploymentSpec

SMI_A10G_X2 = "0, NVIDIA A10G, 23028\n1, NVIDIA A10G, 23028\n"


@pytest.mark.parametrize(
    ("product", "sku"),
    [
        ("NVIDIA A10G", "a10_24gb"),
        ("NVIDIA A10", "a10_24gb"),
        ("NVIDIA L4", "l4_24gb"),
        ("NVIDIA L40S", "l40s_48gb"),
        ("NVIDIA A100-SXM4-80GB", "a100_80gb"),
        ("NVIDIA A100 80GB PCIe", "a100_80gb"),
        ("NVIDIA H100 PCIe", "h100_80gb_pcie"),
        ("NVIDIA H100 80GB HBM3", "h100_80gb_sxm"),
        ("NVIDIA A100-SXM4-40GB", None),
        ("Tesla T4", None),
    ],
)
def test_product_names_map_to_catalogue_skus(product: str, sku: str | None) -> None:
    assert gpus.sku_of(product) == sku


def test_parse_and_pick_free_gpus_of_the_accelerators_sku() -> None:
    host = gpus.parse_nvidia_smi(SMI_A10G_X2 + "2, NVIDIA L4, 23034\n")
    assert [(g.index, g.sku, g.memory_mib) for g in host] == [
        (0, "a10_24gb", 23028),
        (1, "a10_24gb", 23028),
        (2, "l4_24gb", 23034),
    ]
    assert gpus.pick(host, set(), ACCELERATORS["a10_24gb_100"]) == [0]
    assert gpus.pick(host, {0}, ACCELERATORS["a10_24gb_100"]) == [1]
    assert gpus.pick(host, {0}, ACCELERATORS["l4_24gb_100"]) == [2]
    with pytest.raises(gpus.NoGpu, match="needs 4 free a10_24gb"):
        gpus.pick(host, set(), ACCELERATORS["a10_24gb_400"])
    with pytest.raises(gpus.NoGpu, match="free on this host: 2:NVIDIA L4"):
        gpus.pick(host, {0, 1}, ACCELERATORS["a10_24gb_100"])
    assert gpus.free_by_sku(host, {1}) == {"a10_24gb": 1, "l4_24gb": 1}


def test_no_free_gpu_is_no_capacity_not_a_failed_start() -> None:
    host = gpus.parse_nvidia_smi(SMI_A10G_X2)
    with pytest.raises(NoCapacity, match="needs 1 free a10_24gb"):
        gpus.pick(host, {0, 1}, ACCELERATORS["a10_24gb_100"])


@pytest.mark.parametrize(
    ("accelerator", "engine", "host_has_gpus", "takes"),
    [
        ("cpu", "llamacpp", True, ("cpu", 1)),
        ("cpu", "vllm", False, ("cpu", 1)),
        ("a10_24gb_400", "llamacpp", False, ("cpu", 1)),
        ("a10_24gb_100", "sim", False, ("cpu", 1)),
        ("a10_24gb_100", "llamacpp", True, ("a10_24gb", 1)),
        ("a100_80gb_200", "vllm", True, ("a100_80gb", 2)),
        ("l4_24gb_100", "vllm", False, ("l4_24gb", 1)),
    ],
    ids=[
        "cpu-accelerator-takes-a-cpu-slot-on-a-gpu-host",
        "cpu-accelerator-takes-a-cpu-slot-whatever-the-engine",
        "cpu-engine-on-a-host-without-gpus-ignores-its-accelerator",
        "sim-engine-on-a-host-without-gpus-ignores-its-accelerator",
        "cpu-engine-on-a-gpu-host-takes-the-gpus-it-asks-for",
        "gpu-engine-takes-every-gpu-of-its-accelerator",
        "gpu-engine-on-a-host-without-gpus-still-asks-for-gpus",
    ],
)
def test_what_one_local_replica_takes(
    accelerator: str, engine: str, host_has_gpus: bool, takes: tuple[str, int]
) -> None:
    assert replica_takes(ACCELERATORS[accelerator], engine, host_has_gpus) == takes


A10G_X2_L4 = gpus.parse_nvidia_smi(SMI_A10G_X2 + "2, NVIDIA L4, 23034\n")


@pytest.mark.parametrize(
    ("host", "live", "limit", "free"),
    [
        (A10G_X2_L4, [], 8, {"cpu": 8, "a10_24gb": 2, "l4_24gb": 1}),
        (A10G_X2_L4, [[], []], 8, {"cpu": 6, "a10_24gb": 2, "l4_24gb": 1}),
        (A10G_X2_L4, [[0], [2]], 8, {"cpu": 8, "a10_24gb": 1, "l4_24gb": 0}),
        (A10G_X2_L4, [[0, 1], []], 1, {"cpu": 0, "a10_24gb": 0, "l4_24gb": 1}),
        ([], [[], [], []], 2, {"cpu": 0}),
        ([], [[]], -1, {"cpu": -1}),
        ([], [], 8, {"cpu": 8}),
    ],
    ids=[
        "idle-host-has-every-gpu-and-cpu-slot-free",
        "replicas-without-gpus-take-cpu-slots",
        "gpu-replicas-take-their-gpus-not-cpu-slots-a-busy-sku-stays-at-zero",
        "cpu-limit-reached-leaves-no-slot",
        "more-cpu-replicas-than-a-lowered-limit-leaves-none-not-fewer",
        "negative-limit-is-unlimited",
        "host-without-gpus-reports-only-cpu-slots",
    ],
)
def test_local_free_capacity(
    host: list[gpus.Gpu], live: list[list[int]], limit: int, free: dict[str, int]
) -> None:
    assert free_capacity(host, live, limit) == free


@dataclass(frozen=True)
class SleeperProfile:
    """A stand-in engine whose replica is a real process that only sleeps."""

    name: str = "sleeper"
    dialect: str = "openai"
    health_path: str = "/health"
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
        adapters: object,
        api_key: str | None = None,
    ) -> LaunchPlan:
        return LaunchPlan(argv=[sys.executable, "-c", "import time; time.sleep(120)"])


def spec_on(accelerator: str, name: str) -> DeploymentSpec:
    cfg = {"base_model": "gemma-3-270m", "accelerator": accelerator}
    return DeploymentSpec(
        "acme", name, "uuid-" + name, None, DeploymentConfig.from_dict(cfg), "ready", 1, 0.0, 0.0
    )


def visible_devices(pid: int) -> str | None:
    # Right after Popen returns the child may still be inside execve, its environment not
    # yet laid out (read empty): wait for it.
    deadline = time.monotonic() + 10
    while not (raw := Path(f"/proc/{pid}/environ").read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.01)
    environ = raw.split(b"\0")
    for entry in environ:
        if entry.startswith(b"CUDA_VISIBLE_DEVICES="):
            return entry.split(b"=", 1)[1].decode()
    return None


@pytest.fixture
def fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\ncat <<'EOF'\n" + SMI_A10G_X2 + "EOF\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


async def test_local_backend_gives_each_replica_its_own_gpu_and_hides_gpus_from_cpu_ones(
    tmp_path: Path, fake_smi: None
) -> None:
    backend = LocalBackend(Settings(state_dir=tmp_path / "state", local_cpu_replicas=1))
    engine = SleeperProfile()
    assert backend.takes(spec_on("a10_24gb_100", "g"), "llamacpp") == ("a10_24gb", 1)
    assert await backend.free_accelerators() == {"cpu": 1, "a10_24gb": 2}
    started = []
    try:
        for i in range(2):
            started.append(await backend.start(spec_on("a10_24gb_100", f"g{i}"), f"r{i}", engine))
        assert await backend.free_accelerators() == {"cpu": 1, "a10_24gb": 0}  # has, all busy
        assert sorted(visible_devices(r.handle["pid"]) or "" for r in started) == ["0", "1"]
        with pytest.raises(gpus.NoGpu):
            await backend.start(spec_on("a10_24gb_100", "g2"), "r2", engine)
        cpu = await backend.start(spec_on("cpu", "c0"), "c0", engine)
        started.append(cpu)
        assert visible_devices(cpu.handle["pid"]) == ""
        # The one CPU slot is taken; GPU replicas do not use CPU slots.
        with pytest.raises(NoCapacity, match="at most 1 CPU replicas"):
            await backend.start(spec_on("cpu", "c1"), "c1", engine)
        freed = visible_devices(started[0].handle["pid"])
        await backend.stop(started[0], grace_s=5)
        assert await backend.free_accelerators() == {"cpu": 0, "a10_24gb": 1}
        again = await backend.start(spec_on("a10_24gb_100", "g3"), "r3", engine)
        started.append(again)
        assert visible_devices(again.handle["pid"]) == freed
    finally:
        await asyncio.gather(*(backend.stop(r, grace_s=5) for r in started))


async def test_gpu_engine_on_a_host_without_gpus_is_refused_naming_the_accelerator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    backend = LocalBackend(Settings(state_dir=tmp_path / "state"))
    gpu_engine = SleeperProfile(name="vllm")
    with pytest.raises(EngineRefused) as refused:
        await backend.start(spec_on("a10_24gb_100", "v"), "v0", gpu_engine)
    assert refused.value.field == "config.accelerator"
    assert await backend.list() == []
    # A CPU engine asked for a GPU runs on the CPU here instead.
    cpu_engine = SleeperProfile(name="llamacpp")
    replica = await backend.start(spec_on("a10_24gb_100", "l"), "l0", cpu_engine)
    try:
        assert visible_devices(replica.handle["pid"]) is None
    finally:
        await backend.stop(replica, grace_s=5)


async def until_free(backend: LocalBackend, free: dict[str, int]) -> None:
    async with asyncio.timeout(10):
        while await backend.free_accelerators() != free:
            await asyncio.sleep(0.05)


async def test_cpu_replica_limit_on_a_host_without_gpus_waits_for_a_free_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    backend = LocalBackend(Settings(state_dir=tmp_path / "state", local_cpu_replicas=2))
    engine = SleeperProfile(name="llamacpp")
    # No GPU here: a CPU engine takes a CPU slot whatever its accelerator; a GPU engine asks
    # for GPUs this host never reports, so the scaler sees no room for it.
    assert backend.takes(spec_on("a10_24gb_100", "l"), "llamacpp") == ("cpu", 1)
    assert backend.takes(spec_on("a10_24gb_100", "v"), "vllm") == ("a10_24gb", 1)
    assert await backend.free_accelerators() == {"cpu": 2}
    started: list[RunningReplica] = []
    try:
        started.append(await backend.start(spec_on("cpu", "c0"), "c0", engine))
        started.append(await backend.start(spec_on("a10_24gb_100", "c1"), "c1", engine))
        assert await backend.free_accelerators() == {"cpu": 0}
        with pytest.raises(NoCapacity, match="at most 2 CPU replicas"):
            await backend.start(spec_on("cpu", "c2"), "c2", engine)
        assert {r.replica_id for r in await backend.list()} == {"c0", "c1"}
        # A replica whose process died holds no slot, even before its manifest is removed.
        os.killpg(started[0].handle["pid"], signal.SIGKILL)
        await until_free(backend, {"cpu": 1})
        started.append(await backend.start(spec_on("cpu", "c3"), "c3", engine))
        assert await backend.free_accelerators() == {"cpu": 0}
        await backend.stop(started[1], grace_s=5)
        assert await backend.free_accelerators() == {"cpu": 1}
    finally:
        await asyncio.gather(*(backend.stop(r, grace_s=5) for r in started))
