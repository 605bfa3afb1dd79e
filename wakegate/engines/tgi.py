"""Hugging Face Text Generation Inference (`text-generation-launcher`), for GPU deployments.

TGI serves LoRA adapters listed at start-up (`--lora-adapters`) but cannot merge one into the
weights, and it speculates only with n-grams or with Medusa heads that ship inside the model
repository, never with a separate speculator. Prefix caching is an environment switch, not
a flag, and chunked prefill is always on where the attention backend supports it (which is
also why a prefill budget below the prompt limit is fine here, unlike on LoRAX).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from wakegate.engines import gpu as g
from wakegate.spec import DeploymentSpec

# The last release: the repository was archived after it.
IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.7"
QUANTIZATIONS = frozenset(
    {
        "awq",
        "bitsandbytes",
        "bitsandbytes-fp4",
        "bitsandbytes-nf4",
        "compressed-tensors",
        "eetq",
        "exl2",
        "fp8",
        "gptq",
        "marlin",
    }
)


@dataclass(frozen=True)
class TgiProfile(g.GpuProfile):
    name: ClassVar[str] = "tgi"
    dialect: ClassVar[str] = "tgi"
    cheap_logprobs: ClassVar[bool] = False
    image: ClassVar[str] = IMAGE
    label: ClassVar[str] = "TGI"
    concurrency_flag: ClassVar[str] = "--max-concurrent-requests"
    quantizations: ClassVar[frozenset[str]] = QUANTIZATIONS

    def validate(self, spec: DeploymentSpec) -> None:
        cfg = spec.config
        self.refuse_common(cfg)
        if cfg.chunked_prefill is False:
            g.refuse("chunked_prefill", "TGI has no switch to turn chunked prefill off")
        if g.speculation(cfg).model:
            g.refuse(
                "speculator",
                "TGI takes Medusa heads only from the model's own repository: use 'auto' "
                "(n-grams, or the model's heads) or 'disabled'",
            )
        self.quantization(cfg)
        g.adapter_ids(cfg)
        self.check_args(cfg)
