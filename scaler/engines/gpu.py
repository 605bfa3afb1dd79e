"""What the GPU engines' command lines (vLLM, LoRAX, TGI) share.

All three load weights and LoRA adapters from the Hugging Face Hub by id, read the Hub token
from the environment and shard a model over the GPUs of a multi-GPU accelerator. Keeping
those rules here means each engine module reads as its own flag table and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scaler.engines import LaunchPlan, Target, custom_argv
from wakegate.catalog import ACCELERATORS, MODELS
from wakegate.spec import DeploymentConfig, DeploymentSpec

# Draft tokens per step for `speculator: "auto"` (prompt-lookup n-grams) and for a named
# speculator whose own config does not say.
SPECULATIVE_TOKENS = 3
# huggingface_hub reads HF_TOKEN; TGI and LoRAX releases before it read the older name.
HF_TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def launcher_head(launcher: str, spec: DeploymentSpec, at: Target, input_flag: str) -> list[str]:
    """The start of a TGI-lineage launcher's command line (TGI, LoRAX): model, address,
    shards, token limits and prefill budget, which both name alike but for the prompt limit."""
    cfg = spec.config
    argv = [launcher, "--model-id", weights(spec), "--hostname", at.host, "--port", str(at.port)]
    if shards(spec) > 1:
        argv += ["--num-shard", str(shards(spec))]
    if cfg.max_total_tokens:
        total = cfg.max_total_tokens
        # The launcher refuses a prompt limit that is not below the total.
        argv += [input_flag, str(total - 1), "--max-total-tokens", str(total)]
    if cfg.max_num_batched_tokens:
        argv += ["--max-batch-prefill-tokens", str(cfg.max_num_batched_tokens)]
    return argv


def plan(
    engine: str,
    cfg: DeploymentConfig,
    argv: list[str],
    at: Target,
    *,
    command_len: int,
    key_env: str | None,
    env: Mapping[str, str] | None = None,
) -> LaunchPlan:
    """A GPU engine's plan: the deployment's customArgs right after the first `command_len`
    words of `argv` (wakegate's own flags come after them, so they win where an engine takes
    the last of a repeat); the Hub token and the replica's key (as `key_env`, the variable
    the engine reads it from; None where it checks none) in the secret environment, never
    argv: any local user reads another's command line."""
    argv = [*argv[:command_len], *custom_argv(engine, cfg), *argv[command_len:]]
    token = cfg.hf_token
    full = dict.fromkeys(HF_TOKEN_ENV, str(token)) if token else {}
    secret = frozenset(full)
    full.update(env or {})
    if at.api_key and key_env is not None:
        full[key_env] = at.api_key
        secret |= {key_env}
    return LaunchPlan(argv=argv, env=full, secret_env=secret)


def adapter_source(adapter_id: str, adapters: Mapping[str, Path]) -> str:
    """Where the engine loads an adapter from: a file the backend fetched, else its Hub id."""
    path = adapters.get(adapter_id)
    return str(path) if path is not None else adapter_id


def shards(spec: DeploymentSpec) -> int:
    """GPUs the model is split over: every GPU of the accelerator (`a10_24gb_400` has 4)."""
    accelerator = ACCELERATORS.get(spec.accelerator)
    return max(accelerator.gpu_count, 1) if accelerator else 1


def weights(spec: DeploymentSpec) -> str:
    """The catalogue's weights locator: a Hub repository id or a local directory."""
    return MODELS[spec.base_model].weights


def json_arg(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
