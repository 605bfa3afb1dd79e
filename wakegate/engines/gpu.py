"""What the GPU engine profiles (vLLM, LoRAX, TGI) share.

All three load weights and LoRA adapters from the Hugging Face Hub by id, read the Hub token
from the environment and shard a model over the GPUs of a multi-GPU accelerator. Keeping
those rules here means each profile module reads as its own flag table and nothing else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from wakegate.catalog import ACCELERATORS, MODELS
from wakegate.engines import ADAPTER_ID, EngineRefused, custom_argv
from wakegate.spec import CONFIG_KEYS, DeploymentConfig, DeploymentSpec

# Sequences the gateway sends one replica at once unless customArgs raise the engine's own
# limit: well under the engines' defaults (vLLM schedules 256, TGI and LoRAX admit 128), so
# requests wait in wakegate's queue, where routing and scaling see them, not in the engine.
DEFAULT_CONCURRENCY = 64
# Draft tokens per step for `speculator: "auto"` (prompt-lookup n-grams) and for a named
# speculator whose own config does not say.
SPECULATIVE_TOKENS = 3
# huggingface_hub reads HF_TOKEN; TGI and LoRAX releases before it read the older name.
HF_TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
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


def refuse_common(cfg: DeploymentConfig, engine: str, own_image: bool = True) -> None:
    """What no GPU engine but LoRAX takes (its image tag), and what none takes at all."""
    if own_image:
        refuse_set(cfg, ["lorax_image_tag"], engine, "runs in its own image, not LoRAX's")
    refuse_set(
        cfg,
        ["speculation_disable_by_batch_size"],
        engine,
        "has no switch to stop speculating above a batch size",
    )


def launcher_head(
    launcher: str, spec: DeploymentSpec, host: str, port: int, input_flag: str
) -> list[str]:
    """The start of a TGI-lineage launcher's command line (TGI, LoRAX): model, address,
    shards, token limits and prefill budget, which both name alike but for the prompt limit."""
    cfg = spec.config
    argv = [launcher, "--model-id", weights(spec), "--hostname", host, "--port", str(port)]
    if shards(spec) > 1:
        argv += ["--num-shard", str(shards(spec))]
    if cfg.max_total_tokens:
        total = cfg.max_total_tokens
        # The launcher refuses a prompt limit that is not below the total.
        argv += [input_flag, str(total - 1), "--max-total-tokens", str(total)]
    if cfg.max_num_batched_tokens:
        argv += ["--max-batch-prefill-tokens", str(cfg.max_num_batched_tokens)]
    return argv


def quantization(cfg: DeploymentConfig, known: frozenset[str], engine: str) -> str | None:
    """The engine's quantization method, None for none; refuses a method it does not know."""
    value = cfg.quantization
    if value is None or value == "none":
        return None
    if value not in known:
        refuse(
            "quantization",
            f"{engine} does not know quantization {value!r}; known: none, "
            + ", ".join(sorted(known)),
        )
    return str(value)


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


def adapter_source(adapter_id: str, adapters: Mapping[str, Path]) -> str:
    """Where the engine loads an adapter from: a file the backend fetched, else its Hub id."""
    path = adapters.get(adapter_id)
    return str(path) if path is not None else adapter_id


def custom_args(cfg: DeploymentConfig, engine: str) -> list[str]:
    """The deployment's customArgs, each on `engine`'s allowlist (EngineRefused otherwise)."""
    return custom_argv(engine, cfg)


def custom_first(argv: list[str], custom: list[str], command_len: int) -> list[str]:
    """`argv` with `custom` right after its first `command_len` words: wakegate's own flags
    come after the deployment's, so they win where an engine takes the last of a repeat."""
    return [*argv[:command_len], *custom, *argv[command_len:]]


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


def shards(spec: DeploymentSpec) -> int:
    """GPUs the model is split over: every GPU of the accelerator (`a10_24gb_400` has 4)."""
    accelerator = ACCELERATORS.get(spec.accelerator)
    return max(accelerator.gpu_count, 1) if accelerator else 1


def weights(spec: DeploymentSpec) -> str:
    """The catalogue's weights locator: a Hub repository id or a local directory."""
    return MODELS[spec.base_model].weights


def context_window(spec: DeploymentSpec) -> int:
    return MODELS[spec.base_model].context_window


def hf_token_env(cfg: DeploymentConfig) -> tuple[dict[str, str], frozenset[str]]:
    """The Hub token as environment, never argv: argv is visible to every local user."""
    token = cfg.hf_token
    if not token:
        return {}, frozenset()
    return dict.fromkeys(HF_TOKEN_ENV, str(token)), frozenset(HF_TOKEN_ENV)


def api_key_env(
    env: dict[str, str], secret: frozenset[str], name: str | None, api_key: str | None
) -> frozenset[str]:
    """Put the replica's key into `env` as `name` (the variable the engine reads it from),
    marked secret; returns the secret names. Environment, not argv: any local user reads
    another's command line."""
    if not api_key or name is None:
        return secret
    env[name] = api_key
    return secret | {name}


def json_arg(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
