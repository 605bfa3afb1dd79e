"""vLLM's command line (`vllm serve`); what it takes: wakegate/engines/vllm.py.

The gateway names the model it wants in each request: the base model's catalogue name, or
an adapter id. vLLM therefore serves the weights under the catalogue name
(`--served-model-name`) and each preloaded LoRA under its adapter id (`--lora-modules`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaler.engines import Launcher, LaunchPlan, Target
from scaler.engines import gpu as g
from wakegate.catalog import MODELS
from wakegate.chat_templates import template_text
from wakegate.engines.gpu import Speculation, adapter_ids, speculation
from wakegate.engines.vllm import VllmProfile
from wakegate.spec import DeploymentSpec

# `vllm serve` reads its `--api-key` from here too; it guards the OpenAI routes (/v1/*), not
# /health.
API_KEY_ENV = "VLLM_API_KEY"


def _switch(value: Any, flag: str) -> list[str]:
    """vLLM's boolean options: `--flag` / `--no-flag`, nothing when unset."""
    if value is None:
        return []
    return [f"--{flag}" if value else f"--no-{flag}"]


@dataclass(frozen=True)
class VllmEngine(VllmProfile, Launcher):
    def build(self, spec: DeploymentSpec, at: Target) -> LaunchPlan:
        cfg = spec.config
        argv = ["vllm", "serve", g.weights(spec), "--served-model-name", spec.base_model]
        argv += ["--host", at.host, "--port", str(at.port)]
        if g.shards(spec) > 1:
            argv += ["--tensor-parallel-size", str(g.shards(spec))]
        if cfg.max_total_tokens:
            argv += ["--max-model-len", str(cfg.max_total_tokens)]
        if cfg.max_num_batched_tokens:
            argv += ["--max-num-batched-tokens", str(cfg.max_num_batched_tokens)]
        argv += _switch(cfg.prefix_caching, "enable-prefix-caching")
        argv += _switch(cfg.chunked_prefill, "enable-chunked-prefill")
        method = self.quantization(cfg)
        if method:
            argv += ["--quantization", method]
        argv += _speculative_config(speculation(cfg))
        argv += _lora(adapter_ids(cfg), at.adapters)
        template = MODELS[spec.base_model].chat_template
        if template:
            # The template's text, not a path: the replica may run where no file of ours is.
            argv += ["--chat-template", template_text(template)]
        return g.plan(self.name, cfg, argv, at, command_len=3, key_env=API_KEY_ENV)


def _speculative_config(spec: Speculation) -> list[str]:
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


def _lora(ids: list[str], adapters: Mapping[str, Path]) -> list[str]:
    """One LoRA module per adapter, named by its id; all of them may share a batch."""
    if not ids:
        return []
    modules = [f"{a}={g.adapter_source(a, adapters)}" for a in ids]
    return ["--enable-lora", "--max-loras", str(len(ids)), "--lora-modules", *modules]
