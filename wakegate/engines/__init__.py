"""Engine profiles: how a deployment spec becomes a model-server command line.

A profile says which command and environment start the engine for a spec, which HTTP path
answers 200 once the model is loaded, which request dialect the engine speaks (the
gateway translates the public APIs into that dialect, see router/dialects) and which
container image runs it on a cluster. Its `validate` is pure, so the gateway refuses a
deployment the engine cannot honour when it is created, not when its first replica starts;
`launch` runs the same checks again (specs stored before a check existed reach it too).
The field-by-field mapping is documented in docs/engines.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from wakegate import engine_args
from wakegate.spec import DeploymentConfig, DeploymentSpec, InvalidSpec

# A LoRA adapter's id: Predibase-style `repo/version`, or any path of safe segments
# (the backends fetch its file by it: scaler/backends/adapters.py).
ADAPTER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")

# The image wakegate's own engines (llama.cpp, sim) run from on a cluster: a placeholder that
# cluster backends replace with the configured one (settings.kubernetes_wakegate_image).
WAKEGATE_IMAGE = "wakegate:latest"


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


def custom_flags(engine: str, cfg: DeploymentConfig) -> list[tuple[str, str | None]]:
    """The deployment's customArgs as (flag, value) pairs, every one on the engine's allowlist
    (wakegate/engine_args.py). Raises EngineRefused naming `config.customArgs`."""
    try:
        return engine_args.parse(engine, cfg.custom_args or ())
    except InvalidSpec as exc:
        raise EngineRefused(exc.field, exc.message) from None


def custom_argv(engine: str, cfg: DeploymentConfig) -> list[str]:
    """The deployment's customArgs, checked, as they go on the command line. Profiles put
    them before their own flags: argparse takes the last of a repeated option, so whatever
    slipped past the allowlist could not override wakegate's address, model or key."""
    custom_flags(engine, cfg)
    return list(cfg.custom_args or ())


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

    @property
    def image(self) -> str:
        """The container image whose PATH holds `launch`'s argv[0] (cluster backends)."""
        ...

    @property
    def adapter_files(self) -> bool:
        """True where the backend must fetch LoRA adapter files before `launch` (llama.cpp's
        GGUF adapters); False where the engine fetches adapters by id itself."""
        ...

    def validate(self, spec: DeploymentSpec) -> None:
        """Raise EngineRefused for a field this engine cannot honour. No side effects."""
        ...

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


def _factories(
    concurrency: int, spec: DeploymentSpec | None
) -> dict[str, Callable[[], EngineProfile]]:
    # Imported here: the profile modules import this one.
    from wakegate.engines.llamacpp import LlamaCppProfile
    from wakegate.engines.lorax import LoraxProfile
    from wakegate.engines.sim import SimProfile
    from wakegate.engines.tgi import TgiProfile
    from wakegate.engines.vllm import VllmProfile

    def sim() -> EngineProfile:
        return SimProfile.from_spec(spec) if spec is not None else SimProfile()

    def vllm() -> EngineProfile:
        return VllmProfile.from_spec(spec) if spec is not None else VllmProfile()

    def lorax() -> EngineProfile:
        return LoraxProfile.from_spec(spec) if spec is not None else LoraxProfile()

    def tgi() -> EngineProfile:
        return TgiProfile.from_spec(spec) if spec is not None else TgiProfile()

    return {
        "llamacpp": lambda: LlamaCppProfile(concurrency=concurrency),
        "vllm": vllm,
        "lorax": lorax,
        "tgi": tgi,
        "sim": sim,
    }


def engine_names() -> frozenset[str]:
    return frozenset(_factories(1, None))


def get_engine(
    name: str, concurrency: int = 1, spec: DeploymentSpec | None = None
) -> EngineProfile:
    """The profile of engine `name`. Profiles whose knobs come from the deployment (the sim
    engine's `customArgs`, the GPU engines' batch size and image tag) read them from `spec`;
    without one they take their defaults. `concurrency` is llama.cpp's (a setting)."""
    try:
        factory = _factories(concurrency, spec)[name]
    except KeyError:
        raise EngineRefused("config.baseModel", f"engine {name!r} is not available") from None
    return factory()


def validate_spec(spec: DeploymentSpec) -> None:
    """Raise EngineRefused where the engine that serves `spec`'s base model cannot honour it."""
    from wakegate.catalog import MODELS

    get_engine(MODELS[spec.base_model].engine, spec=spec).validate(spec)
