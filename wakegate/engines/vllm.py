"""vLLM's OpenAI-compatible server (`vllm serve`), for GPU deployments.

The gateway names the model it wants in each request: the base model's catalogue name, or
an adapter id. vLLM therefore serves the weights under the catalogue name
(`--served-model-name`) and each preloaded LoRA under its adapter id (`--lora-modules`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from wakegate.engines import gpu as g
from wakegate.spec import DeploymentSpec

IMAGE = "vllm/vllm-openai:v0.33.0"
# `vllm serve --quantization` methods that recent releases all know (names differ between
# releases beyond these).
QUANTIZATIONS = frozenset(
    {
        "awq",
        "awq_marlin",
        "bitsandbytes",
        "compressed-tensors",
        "experts_int8",
        "fp8",
        "gguf",
        "gptq",
        "gptq_marlin",
        "inc",
        "modelopt",
        "modelopt_fp4",
        "moe_wna16",
        "mxfp4",
        "quark",
        "torchao",
    }
)


@dataclass(frozen=True)
class VllmProfile(g.GpuProfile):
    name: ClassVar[str] = "vllm"
    dialect: ClassVar[str] = "openai"
    cheap_logprobs: ClassVar[bool] = True
    image: ClassVar[str] = IMAGE
    label: ClassVar[str] = "vLLM"
    concurrency_flag: ClassVar[str] = "--max-num-seqs"
    quantizations: ClassVar[frozenset[str]] = QUANTIZATIONS

    def validate(self, spec: DeploymentSpec) -> None:
        cfg = spec.config
        self.refuse_common(cfg)
        self.quantization(cfg)
        g.speculation(cfg)
        g.adapter_ids(cfg)
        self.check_args(cfg)
