"""What the GPU engine profiles (vLLM, LoRAX, TGI) share: their fields and their checks.

All three load weights and LoRA adapters from the Hugging Face Hub by id and cap the sequences
one replica takes with a flag of their own. Keeping those rules here means each profile module
reads as its own table of what it refuses and nothing else; their command lines are the
scaler's (scaler/engines/).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, NoReturn, Self

from wakegate.catalog import MODELS
from wakegate.engines import ADAPTER_ID, EngineRefused, custom_flags
from wakegate.spec import CONFIG_KEYS, DeploymentConfig, DeploymentSpec

# Sequences the gateway sends one replica at once unless customArgs raise the engine's own
# limit: well under the engines' defaults (vLLM schedules 256, TGI and LoRAX admit 128), so
# requests wait in wakegate's queue, where routing and scaling see them, not in the engine.
DEFAULT_CONCURRENCY = 64
# `org/name` on the Hub (a speculator or draft model).
HUB_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
# A container image tag (the OCI distribution spec's grammar).
IMAGE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def field(name: str) -> str:
    """The JSON path of a config field, as InvalidSpec and EngineRefused name it."""
    return f"config.{CONFIG_KEYS[name]}"


def refuse(name: str, message: str) -> NoReturn:
    raise EngineRefused(field(name), message)


def refuse_set(cfg: DeploymentConfig, names: Iterable[str], engine: str, why: str) -> None:
    """Refuse the first of `names` that the deployment set (null and unset are fine)."""
    for name in names:
        if getattr(cfg, name) is not None:
            refuse(name, f"{engine} {why}")


@dataclass(frozen=True)
class GpuProfile:
    """The fields, the factory and the checks of a GPU profile; each engine's class names the
    engine (`label`, as messages write it), its concurrency flag and its quantization methods,
    and lists in `validate` what it refuses."""

    concurrency: int = DEFAULT_CONCURRENCY

    name: ClassVar[str]
    dialect: ClassVar[str]
    cheap_logprobs: ClassVar[bool]
    health_path: ClassVar[str] = "/health"
    # All three fetch adapters by their Hub id themselves.
    adapter_files: ClassVar[bool] = False
    label: ClassVar[str]
    concurrency_flag: ClassVar[str]
    quantizations: ClassVar[frozenset[str]]
    # Whether the engine runs from LoRAX's image (so takes its tag) and merges an adapter.
    lorax_image: ClassVar[bool] = False
    merges_adapters: ClassVar[bool] = False

    @classmethod
    def from_spec(cls, spec: DeploymentSpec) -> Self:
        return cls(concurrency=concurrency(spec.config, cls.concurrency_flag))

    @classmethod
    def for_spec(cls, spec: DeploymentSpec | None, concurrency: int = 1) -> Self:
        """The registry's factory (wakegate/engines/__init__.py). `concurrency`, llama.cpp's
        setting, is not used: a GPU engine's comes from the deployment's customArgs."""
        return cls.from_spec(spec) if spec is not None else cls()

    def refuse_common(self, cfg: DeploymentConfig) -> None:
        """What no GPU engine but LoRAX takes (its image tag, a merged adapter), and what none
        takes at all."""
        if self.lorax_image:
            tag = cfg.lorax_image_tag
            if tag is not None and not IMAGE_TAG.fullmatch(tag):
                refuse("lorax_image_tag", f"{tag!r} is not an image tag")
        else:
            refuse_set(cfg, ["lorax_image_tag"], self.label, "runs in its own image, not LoRAX's")
        refuse_set(
            cfg,
            ["speculation_disable_by_batch_size"],
            self.label,
            "has no switch to stop speculating above a batch size",
        )
        if cfg.merge_adapter and not self.merges_adapters:
            refuse(
                "merge_adapter", f"{self.label} cannot merge a LoRA adapter into the base weights"
            )

    def quantization(self, cfg: DeploymentConfig) -> str | None:
        """The engine's quantization method, None for none; refuses a method it does not
        know."""
        value = cfg.quantization
        if value is None or value == "none":
            return None
        if value not in self.quantizations:
            refuse(
                "quantization",
                f"{self.label} does not know quantization {value!r}; known: none, "
                + ", ".join(sorted(self.quantizations)),
            )
        return str(value)

    def check_args(self, cfg: DeploymentConfig) -> None:
        """The deployment's customArgs: each on the engine's allowlist, and the concurrency
        they set positive."""
        custom_flags(self.name, cfg)
        concurrency(cfg, self.concurrency_flag)


@dataclass(frozen=True)
class Speculation:
    """What `speculator` asks for: nothing, prompt-lookup n-grams, or a named model."""

    ngram: bool = False
    model: str | None = None

    @property
    def on(self) -> bool:
        return self.ngram or self.model is not None


def speculation(cfg: DeploymentConfig) -> Speculation:
    value = cfg.speculator
    if value is None or value == "disabled":
        return Speculation()
    if value == "auto":
        return Speculation(ngram=True)
    if HUB_REPO.fullmatch(value):
        return Speculation(model=str(value))
    refuse(
        "speculator",
        f"{value!r} is not a speculator: use 'auto' (prompt-lookup n-grams), 'disabled' or "
        "the Hugging Face repository of a speculator or draft model (org/name)",
    )


def adapter_ids(cfg: DeploymentConfig) -> list[str]:
    """The preloaded adapters (Hub ids), refusing a bad id and adapters that are disabled."""
    ids = list(cfg.preloaded_adapters or ())
    for adapter_id in ids:
        if not ADAPTER_ID.fullmatch(adapter_id) or ".." in adapter_id:
            refuse("preloaded_adapters", f"{adapter_id!r} is not a valid adapter id")
    if len(set(ids)) != len(ids):
        refuse("preloaded_adapters", "lists an adapter twice")
    if ids and cfg.disable_adapters:
        refuse("disable_adapters", "adapters are disabled but preloadedAdapters lists some")
    return ids


def flag_value(args: list[str], flag: str) -> str | None:
    """The value given to `flag` in `args` (`--flag V` or `--flag=V`); the last one wins."""
    found = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith(flag + "="):
            found = arg.split("=", 1)[1]
    return found


def concurrency(cfg: DeploymentConfig, flag: str) -> int:
    """Sequences one replica takes at once: the engine's own limit where customArgs set it
    (the gateway must not send more than the engine admits), else DEFAULT_CONCURRENCY."""
    raw = flag_value(list(cfg.custom_args or ()), flag)
    if raw is None:
        return DEFAULT_CONCURRENCY
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        refuse("custom_args", f"{flag} must be a positive integer, not {raw!r}")
    return value


def context_window(spec: DeploymentSpec) -> int:
    return MODELS[spec.base_model].context_window
