"""vLLM's OpenAI-compatible server (`vllm serve`), for GPU deployments.

The gateway names the model it wants in each request: the base model's catalogue name, or
an adapter id. vLLM therefore serves the weights under the catalogue name
(`--served-model-name`) and each preloaded LoRA under its adapter id (`--lora-modules`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wakegate.engines import LaunchPlan
from wakegate.engines import gpu as g
from wakegate.spec import DeploymentSpec

IMAGE = "vllm/vllm-openai:v0.33.0"
CONCURRENCY_FLAG = "--max-num-seqs"
# `vllm serve` reads its `--api-key` from here too; it guards the OpenAI routes (/v1/*), not
# /health.
API_KEY_ENV = "VLLM_API_KEY"
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


def _switch(value: Any, flag: str) -> list[str]:
    """vLLM's boolean options: `--flag` / `--no-flag`, nothing when unset."""
    if value is None:
        return []
    return [f"--{flag}" if value else f"--no-{flag}"]


@dataclass(frozen=True)
class VllmProfile:
    concurrency: int = g.DEFAULT_CONCURRENCY
    name: str = "vllm"
    dialect: str = "openai"
    health_path: str = "/health"
    cheap_logprobs: bool = True
    image: str = IMAGE
    adapter_files: bool = False

    @classmethod
    def from_spec(cls, spec: DeploymentSpec) -> VllmProfile:
        return cls(concurrency=g.concurrency(spec.config, CONCURRENCY_FLAG))

    def validate(self, spec: DeploymentSpec) -> None:
        cfg = spec.config
        g.refuse_common(cfg, "vLLM")
        if cfg.merge_adapter:
            g.refuse("merge_adapter", "vLLM cannot merge a LoRA adapter into the base weights")
        g.quantization(cfg, QUANTIZATIONS, "vLLM")
        g.speculation(cfg)
        g.adapter_ids(cfg)
        g.custom_args(cfg, self.name)
        g.concurrency(cfg, CONCURRENCY_FLAG)

    def launch(
        self,
        spec: DeploymentSpec,
        host: str,
        port: int,
        models_dir: Path,
        adapters: dict[str, Path],
        api_key: str | None = None,
    ) -> LaunchPlan:
        self.validate(spec)
        cfg = spec.config
        argv = ["vllm", "serve", g.weights(spec), "--served-model-name", spec.base_model]
        argv += ["--host", host, "--port", str(port)]
        if g.shards(spec) > 1:
            argv += ["--tensor-parallel-size", str(g.shards(spec))]
        if cfg.max_total_tokens:
            argv += ["--max-model-len", str(cfg.max_total_tokens)]
        if cfg.max_num_batched_tokens:
            argv += ["--max-num-batched-tokens", str(cfg.max_num_batched_tokens)]
        argv += _switch(cfg.prefix_caching, "enable-prefix-caching")
        argv += _switch(cfg.chunked_prefill, "enable-chunked-prefill")
        method = g.quantization(cfg, QUANTIZATIONS, "vLLM")
        if method:
            argv += ["--quantization", method]
        argv += _speculative_config(g.speculation(cfg))
        argv += _lora(g.adapter_ids(cfg), adapters)
        env, secret = g.hf_token_env(cfg)
        argv = g.custom_first(argv, g.custom_args(cfg, self.name), command_len=3)
        secret = g.api_key_env(env, secret, API_KEY_ENV, api_key)
        return LaunchPlan(argv=argv, env=env, secret_env=secret)


def _speculative_config(spec: g.Speculation) -> list[str]:
    if spec.ngram:
        config: dict[str, Any] = {
            "method": "ngram",
            "num_speculative_tokens": g.SPECULATIVE_TOKENS,
            "prompt_lookup_max": g.SPECULATIVE_TOKENS,
        }
    elif spec.model:
        # vLLM tells a draft model, an EAGLE head or Medusa heads apart by their config.
        config = {"model": spec.model, "num_speculative_tokens": g.SPECULATIVE_TOKENS}
    else:
        return []
    return ["--speculative-config", g.json_arg(config)]


def _lora(ids: list[str], adapters: dict[str, Path]) -> list[str]:
    """One LoRA module per adapter, named by its id; all of them may share a batch."""
    if not ids:
        return []
    modules = [f"{a}={g.adapter_source(a, adapters)}" for a in ids]
    return ["--enable-lora", "--max-loras", str(len(ids)), "--lora-modules", *modules]
