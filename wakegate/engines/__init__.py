"""Engine profiles: what a deployment needs to know about the engine that serves it.

A profile says which HTTP path answers 200 once the model is loaded, which request dialect the
engine speaks (the gateway translates the public APIs into that dialect, see router/dialects),
how many sequences one replica takes and which container image runs it on a cluster. Its
`validate` is pure, so the gateway refuses a deployment the engine cannot honour when it is
created, not when its first replica starts. How a spec becomes the engine's command line is the
scaler's half (scaler/engines/), which runs the same checks again before every launch. The
field-by-field mapping is documented in docs/engines.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar

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


def custom_flags(engine: str, cfg: DeploymentConfig) -> list[tuple[str, str | None]]:
    """The deployment's customArgs as (flag, value) pairs, every one on the engine's allowlist
    (wakegate/engine_args.py). Raises EngineRefused naming `config.customArgs`."""
    try:
        return engine_args.parse(engine, cfg.custom_args or ())
    except InvalidSpec as exc:
        raise EngineRefused(exc.field, exc.message) from None


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
        """The container image whose PATH holds the engine's command (cluster backends)."""
        ...

    @property
    def adapter_files(self) -> bool:
        """True where the backend must fetch LoRA adapter files before the launch (llama.cpp's
        GGUF adapters); False where the engine fetches adapters by id itself."""
        ...

    def validate(self, spec: DeploymentSpec) -> None:
        """Raise EngineRefused for a field this engine cannot honour. No side effects."""
        ...


P = TypeVar("P", bound=EngineProfile)
# A profile class's `for_spec`: the profile for a deployment (None: its defaults) and
# llama.cpp's concurrency (a setting).
Factory = Callable[[DeploymentSpec | None, int], P]


def pick(
    factories: Mapping[str, Factory[P]], name: str, concurrency: int, spec: DeploymentSpec | None
) -> P:
    """The engine `name` made by its factory; EngineRefused where there is none."""
    try:
        factory = factories[name]
    except KeyError:
        raise EngineRefused("config.baseModel", f"engine {name!r} is not available") from None
    return factory(spec, concurrency)


def _profiles() -> dict[str, Factory[EngineProfile]]:
    # Imported here: the profile modules import this one.
    from wakegate.engines.llamacpp import LlamaCppProfile
    from wakegate.engines.lorax import LoraxProfile
    from wakegate.engines.sim import SimProfile
    from wakegate.engines.tgi import TgiProfile
    from wakegate.engines.vllm import VllmProfile

    classes = (LlamaCppProfile, VllmProfile, LoraxProfile, TgiProfile, SimProfile)
    return {c.name: c.for_spec for c in classes}


def engine_names() -> frozenset[str]:
    return frozenset(_profiles())


def get_profile(
    name: str, concurrency: int = 1, spec: DeploymentSpec | None = None
) -> EngineProfile:
    """The profile of engine `name`. Profiles whose knobs come from the deployment (the sim
    engine's `customArgs`, the GPU engines' batch size and image tag) read them from `spec`;
    without one they take their defaults. `concurrency` is llama.cpp's (a setting)."""
    return pick(_profiles(), name, concurrency, spec)


def validate_spec(spec: DeploymentSpec) -> None:
    """Raise EngineRefused where the engine that serves `spec`'s base model cannot honour it."""
    from wakegate.catalog import MODELS

    get_profile(MODELS[spec.base_model].engine, spec=spec).validate(spec)
