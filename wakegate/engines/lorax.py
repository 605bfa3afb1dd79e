"""LoRAX (`lorax-launcher`), the multi-LoRA server the managed platform runs, for GPU
deployments.

LoRAX loads any adapter by its Hub id on first use; `preloadedAdapters` only saves that
first request the download. It has one "default" adapter slot (`--adapter-id`), which holds
either a Medusa speculator or the adapter that `mergeAdapter` folds into the base weights,
never both. `loraxImageTag` picks the image, as on the managed platform.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wakegate.engines import LaunchPlan
from wakegate.engines import gpu as g
from wakegate.spec import DeploymentSpec

IMAGE_REPO = "ghcr.io/predibase/lorax"
DEFAULT_TAG = "0.12.1"
CONCURRENCY_FLAG = "--max-concurrent-requests"
# lorax-launcher has no API key option (its router checks none): a LoRAX replica relies on
# where it listens (loopback, or a Pod that the NetworkPolicy shields) alone.
API_KEY_ENV: str | None = None
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
class LoraxProfile:
    concurrency: int = g.DEFAULT_CONCURRENCY
    image_tag: str = DEFAULT_TAG
    name: str = "lorax"
    dialect: str = "lorax"
    health_path: str = "/health"
    cheap_logprobs: bool = False
    adapter_files: bool = False

    @property
    def image(self) -> str:
        return f"{IMAGE_REPO}:{self.image_tag}"

    @classmethod
    def from_spec(cls, spec: DeploymentSpec) -> LoraxProfile:
        return cls(
            concurrency=g.concurrency(spec.config, CONCURRENCY_FLAG),
            image_tag=spec.config.lorax_image_tag or DEFAULT_TAG,
        )

    def validate(self, spec: DeploymentSpec) -> None:
        cfg = spec.config
        tag = cfg.lorax_image_tag
        if tag is not None and not g.IMAGE_TAG.fullmatch(tag):
            g.refuse("lorax_image_tag", f"{tag!r} is not an image tag")
        g.refuse_common(cfg, "LoRAX", own_image=False)
        g.quantization(cfg, QUANTIZATIONS, "LoRAX")
        _default_adapter(spec)
        _prefill_budget(spec)
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
        argv = g.launcher_head("lorax-launcher", spec, host, port, "--max-input-length")
        for value, flag in (
            (cfg.prefix_caching, "--prefix-caching"),
            (cfg.chunked_prefill, "--chunked-prefill"),
        ):
            if value is not None:
                argv += [flag, "true" if value else "false"]
        method = g.quantization(cfg, QUANTIZATIONS, "LoRAX")
        if method:
            argv += ["--quantize", method]
        if g.speculation(cfg).ngram:
            argv += ["--speculative-tokens", str(g.SPECULATIVE_TOKENS)]
        default, merged = _default_adapter(spec)
        if default:
            argv += ["--adapter-id", default]
        if merged:
            argv += ["--merge-adapter-weights"]
        for adapter_id in g.adapter_ids(cfg):
            if adapter_id != default:
                argv += ["--preloaded-adapter-ids", adapter_id]
        env, secret = g.hf_token_env(cfg)
        argv = g.custom_first(argv, g.custom_args(cfg, self.name), command_len=1)
        secret = g.api_key_env(env, secret, API_KEY_ENV, api_key)
        return LaunchPlan(argv=argv, env=env, secret_env=secret)


def _default_adapter(spec: DeploymentSpec) -> tuple[str | None, bool]:
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


def _prefill_budget(spec: DeploymentSpec) -> None:
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
