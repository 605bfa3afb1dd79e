"""GPU backends: where replica processes run. One small async interface, registered by name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from scaler.engines import EngineProfile
from wakegate.settings import Settings
from wakegate.spec import DeploymentSpec


@dataclass(frozen=True)
class RunningReplica:
    """What a backend knows about one replica it runs."""

    replica_id: str
    deployment: str
    revision: int
    url: str
    handle: dict[str, Any] = field(default_factory=dict)
    alive: bool = True


class Backend(Protocol):
    name: str

    async def start(
        self, spec: DeploymentSpec, replica_id: str, engine: EngineProfile
    ) -> RunningReplica:
        """Launch a replica; returns once it is launched, not once it is ready."""
        ...

    async def stop(self, replica: RunningReplica, grace_s: float) -> None:
        """Stop a replica: ask politely, then force after `grace_s`. Idempotent."""
        ...

    async def list(self) -> list[RunningReplica]:
        """Every replica this backend runs, including ones started by an earlier scaler."""
        ...

    async def free_accelerators(self) -> dict[str, int]:
        """What this backend can still start, by SKU: free GPUs, and for `cpu` free CPU
        replica slots; -1 means unlimited. A SKU that is absent has none. The scaler starts a
        replica only where this leaves room (wakegate.catalog.pool_units says what one
        takes)."""
        ...

    def takes(self, spec: DeploymentSpec, engine_name: str) -> tuple[str, int]:
        """The (SKU, units) one replica of `spec`, run by the engine `engine_name`, takes from
        what `free_accelerators()` reports. Usually wakegate.catalog.pool_units of its
        accelerator; a backend that runs some replicas elsewhere says so (the local backend
        runs CPU engines on CPU slots when its host has no GPU). Answers at once: no I/O."""
        ...

    async def close(self) -> None: ...


BackendFactory = Callable[[Settings], Backend]


class NoCapacity(RuntimeError):
    """The backend has no room for the replica now (no free GPU of its SKU, no CPU slot, a Pod
    that no node can take). Not a failed start: the deployment waits for capacity."""


class BackendUnavailable(RuntimeError):
    """The backend cannot reach what it runs replicas on (no cluster at the address)."""


# name -> "module:Class"; imported only when chosen, so optional dependencies (ray,
# kubernetes) are needed only by the backends that use them.
BACKENDS: dict[str, str] = {
    "local": "scaler.backends.local:LocalBackend",
    "sim": "scaler.backends.sim:SimBackend",
    "ray": "scaler.backends.ray:RayBackend",
    "kubernetes": "scaler.backends.kubernetes:KubernetesBackend",
}


def create_backend(settings: Settings) -> Backend:
    try:
        target = BACKENDS[settings.backend]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise ValueError(f"unknown backend {settings.backend!r}; known: {known}") from None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"backend {settings.backend!r} needs an optional dependency: "
            f"pip install 'wakegate[{settings.backend}]' ({exc})"
        ) from None
    factory: BackendFactory = getattr(module, attr)
    return factory(settings)
