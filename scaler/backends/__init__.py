"""GPU backends: where replica processes run. One small async interface, registered by name."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from scaler.engines import Engine
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
    # Whether `free_accelerators()` names every SKU the pool has (busy ones at 0), so that a
    # SKU it leaves out is one the pool lacks; false while it cannot look (wakegate/pool.py).
    knows_whole_pool: bool

    async def start(
        self,
        spec: DeploymentSpec,
        replica_id: str,
        engine: Engine,
        api_key: str | None = None,
    ) -> RunningReplica:
        """Launch a replica that answers only requests carrying `api_key` (where its engine
        checks one); returns once it is launched, not once it is ready."""
        ...

    async def stop(self, replica: RunningReplica, grace_s: float) -> None:
        """Stop a replica: ask politely, then force after `grace_s`. Idempotent."""
        ...

    async def list(self) -> list[RunningReplica]:
        """Every replica this backend runs, including ones started by an earlier scaler."""
        ...

    async def free_accelerators(self) -> dict[str, int]:
        """What this backend can still start, by SKU: free GPUs, and for `cpu` free CPU
        replica slots; -1 means unlimited. Every SKU the pool has is there, at 0 when all of
        it is busy; a SKU that is absent the pool does not have. The scaler starts a
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

# What a replica inherits from the process that starts it (scaler, Ray worker, sim host):
# where programs and libraries are, locale, temporary files, the Hugging Face cache and
# download settings, the GPUs, and how this host reaches the Hub (proxy, CA bundle). Nothing
# else: never REDIS_URL, MQTT_URL, WAKEGATE_* or a cloud's credentials, which would hand any
# code in the replica the keys to every tenant's state.
INHERITED_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "LD_LIBRARY_PATH",
        "XDG_CACHE_HOME",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    }
)
INHERITED_PREFIXES = ("LC_", "HF_", "HUGGING_FACE_", "HUGGINGFACE_", "CUDA_", "NVIDIA_")
# The operator's own Hub token would let every tenant's replica download what only the
# operator may: a deployment brings its own (`hfToken`, through the engine's plan).
NEVER_INHERITED = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN"})
REPLICA_ID_ENV = "WAKEGATE_REPLICA_ID"


def replica_env(
    plan_env: Mapping[str, str],
    replica_id: str | None = None,
    keep: Iterable[str] = (),
    inherited: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The minimal environment a replica starts with: what it inherits from `inherited`
    (default: this process's environment) by the rules above, plus the names in `keep`
    (PYTHONPATH for a replica that is a module of this project), then the engine plan's own
    variables and the replica's id (by which the local backend recognises its process)."""
    source = os.environ if inherited is None else inherited
    wanted = set(keep)
    env = {
        name: value
        for name, value in source.items()
        if name not in NEVER_INHERITED
        and (name in INHERITED_NAMES or name.startswith(INHERITED_PREFIXES) or name in wanted)
    }
    env.update(plan_env)
    if replica_id is not None:
        env[REPLICA_ID_ENV] = replica_id
    return env


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
