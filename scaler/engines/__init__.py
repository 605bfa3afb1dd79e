"""Engine profiles: how a deployment spec becomes a model-server command line.

A profile says which command and environment start the engine for a spec, which HTTP path
answers 200 once the model is loaded, and which request dialect the engine speaks (the
gateway translates the public APIs into that dialect, see router/dialects).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from wakegate.spec import DeploymentSpec


class EngineRefused(ValueError):
    """The engine cannot honour a field of the spec; `field` names it (JSON key)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class LaunchPlan:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # Env var names whose values are secrets (kept out of logs and replica records).
    secret_env: frozenset[str] = frozenset()


class EngineProfile(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def dialect(self) -> str: ...

    @property
    def health_path(self) -> str: ...

    @property
    def concurrency(self) -> int: ...

    @property
    def cheap_logprobs(self) -> bool:
        """False where per-token log-probabilities slow generation down a lot."""
        ...

    def launch(
        self,
        spec: DeploymentSpec,
        host: str,
        port: int,
        models_dir: Path,
        adapters: dict[str, Path],
    ) -> LaunchPlan:
        """The command that serves `spec` on host:port with these adapters loaded (id ->
        local file). Raises EngineRefused."""
        ...


def get_engine(
    name: str, concurrency: int = 1, spec: DeploymentSpec | None = None
) -> EngineProfile:
    """The profile of engine `name`. Profiles whose knobs come from the deployment (the sim
    engine's `customArgs`) read them from `spec`; without one they take their defaults."""
    from scaler.engines.llamacpp import LlamaCppProfile
    from scaler.engines.sim import SimProfile

    def sim() -> EngineProfile:
        return SimProfile.from_spec(spec) if spec is not None else SimProfile()

    engines: dict[str, Callable[[], EngineProfile]] = {
        "llamacpp": lambda: LlamaCppProfile(concurrency=concurrency),
        "sim": sim,
    }
    try:
        factory = engines[name]
    except KeyError:
        raise EngineRefused("config.baseModel", f"engine {name!r} is not available") from None
    return factory()
