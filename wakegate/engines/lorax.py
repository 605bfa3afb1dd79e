"""LoRAX (`lorax-launcher`), the multi-LoRA server the managed platform runs, for GPU
deployments.

LoRAX loads any adapter by its Hub id on first use; `preloadedAdapters` only saves that
first request the download. It has one "default" adapter slot (`--adapter-id`), which holds
either a Medusa speculator or the adapter that `mergeAdapter` folds into the base weights,
never both. `loraxImageTag` picks the image, as on the managed platform.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Self

from wakegate.engines import gpu as g
from wakegate.spec import DeploymentSpec

IMAGE_REPO = "ghcr.io/predibase/lorax"
DEFAULT_TAG = "0.12.1"
# The launcher's default prompt limit is the model's context capped at this, minus one.
DEFAULT_MAX_TOTAL = 4096
QUANTIZATIONS = frozenset(
    {
        "awq",
        "bitsandbytes",
        "bitsandbytes-fp4",
        "bitsandbytes-nf4",
        "eetq",
        "exl2",
        "fp8",
        "fp8-kv",
        "gptq",
        "hqq-2bit",
        "hqq-3bit",
        "hqq-4bit",
    }
)


@dataclass(frozen=True)
class LoraxProfile(g.GpuProfile):
    image_tag: str = DEFAULT_TAG

    name: ClassVar[str] = "lorax"
    dialect: ClassVar[str] = "lorax"
    cheap_logprobs: ClassVar[bool] = False
    label: ClassVar[str] = "LoRAX"
    concurrency_flag: ClassVar[str] = "--max-concurrent-requests"
    quantizations: ClassVar[frozenset[str]] = QUANTIZATIONS
    lorax_image: ClassVar[bool] = True
    merges_adapters: ClassVar[bool] = True

    @property
    def image(self) -> str:
        return f"{IMAGE_REPO}:{self.image_tag}"

    @classmethod
    def from_spec(cls, spec: DeploymentSpec) -> Self:
        return replace(
            super().from_spec(spec), image_tag=spec.config.lorax_image_tag or DEFAULT_TAG
        )

    def validate(self, spec: DeploymentSpec) -> None:
        cfg = spec.config
        self.refuse_common(cfg)
        self.quantization(cfg)
        default_adapter(spec)
        prefill_budget(spec)
        self.check_args(cfg)


def default_adapter(spec: DeploymentSpec) -> tuple[str | None, bool]:
    """What goes into LoRAX's default-adapter slot, and whether it is merged."""
    cfg = spec.config
    ids = g.adapter_ids(cfg)
    speculator = g.speculation(cfg).model
    if not cfg.merge_adapter:
        return speculator, False
    if len(ids) != 1:
        g.refuse("merge_adapter", "LoRAX merges exactly one adapter: list it in preloadedAdapters")
    if speculator:
        g.refuse(
            "speculator",
            "LoRAX has one default adapter: a Medusa speculator or a merged adapter, not both",
        )
    return ids[0], True


def prefill_budget(spec: DeploymentSpec) -> None:
    """A prefill batch must hold the longest prompt, or the router refuses to start."""
    cfg = spec.config
    budget = cfg.max_num_batched_tokens
    if not budget:
        return
    total = cfg.max_total_tokens or min(g.context_window(spec), DEFAULT_MAX_TOTAL)
    if budget < total - 1:
        g.refuse(
            "max_num_batched_tokens",
            f"LoRAX needs at least the longest prompt ({total - 1} tokens) in one prefill batch",
        )
