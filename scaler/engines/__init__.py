"""Engine launch: how a deployment spec becomes a model-server command line.

The scaler's half of an engine. Its profile (wakegate/engines/, the half the gateway's control
API validates deployments with) says what the engine takes; the engine class here, one for each
profile and keyed by the same name, adds `launch`, which checks the spec again (specs stored
before a check existed reach it too) and builds the command and environment that start the
engine. Only the scaler and the tooling import this package.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from wakegate.engines import EngineProfile, Factory, custom_flags, pick
from wakegate.spec import DeploymentConfig, DeploymentSpec


@dataclass(frozen=True)
class LaunchPlan:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # Env var names whose values are secrets (kept out of logs and replica records).
    secret_env: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Target:
    """Where and with what one replica starts: its address, the directory for weights, the
    LoRA adapters' local files (id -> file; empty where the engine fetches them by id) and
    the key requests must carry (None: no key)."""

    host: str
    port: int
    models_dir: Path
    adapters: Mapping[str, Path]
    api_key: str | None = None


class Engine(EngineProfile, Protocol):
    def launch(
        self,
        spec: DeploymentSpec,
        host: str,
        port: int,
        models_dir: Path,
        adapters: dict[str, Path],
        api_key: str | None = None,
    ) -> LaunchPlan:
        """The command that serves `spec` on host:port with these adapters loaded (id ->
        local file; empty where `adapter_files` is False), answering only requests that
        carry `Authorization: Bearer <api_key>` where the engine can check one (the key goes
        into the plan's secret environment, never argv). Raises EngineRefused."""
        ...


class _Builds(Protocol):
    def validate(self, spec: DeploymentSpec) -> None: ...

    def build(self, spec: DeploymentSpec, at: Target) -> LaunchPlan: ...


class Launcher:
    """`launch` as every engine class has it: the profile's checks, then its own `build`."""

    def launch(
        self: _Builds,
        spec: DeploymentSpec,
        host: str,
        port: int,
        models_dir: Path,
        adapters: dict[str, Path],
        api_key: str | None = None,
    ) -> LaunchPlan:
        self.validate(spec)
        return self.build(spec, Target(host, port, models_dir, adapters, api_key))


def custom_argv(engine: str, cfg: DeploymentConfig) -> list[str]:
    """The deployment's customArgs, checked, as they go on the command line. Engines put
    them before their own flags: argparse takes the last of a repeated option, so whatever
    slipped past the allowlist could not override wakegate's address, model or key."""
    custom_flags(engine, cfg)
    return list(cfg.custom_args or ())


def _engines() -> dict[str, Factory[Engine]]:
    # Imported here: the engine modules import this one.
    from scaler.engines.llamacpp import LlamaCppEngine
    from scaler.engines.lorax import LoraxEngine
    from scaler.engines.sim import SimEngine
    from scaler.engines.tgi import TgiEngine
    from scaler.engines.vllm import VllmEngine

    classes = (LlamaCppEngine, VllmEngine, LoraxEngine, TgiEngine, SimEngine)
    return {c.name: c.for_spec for c in classes}


def engine_names() -> frozenset[str]:
    return frozenset(_engines())


def get_engine(name: str, concurrency: int = 1, spec: DeploymentSpec | None = None) -> Engine:
    """Engine `name`, its profile read from `spec` as wakegate.engines.get_profile reads it."""
    return pick(_engines(), name, concurrency, spec)
