"""Hugging Face Text Generation Inference (`text-generation-launcher`), for GPU deployments.

TGI serves LoRA adapters listed at start-up (`--lora-adapters`) but cannot merge one into the
weights, and it speculates only with n-grams or with Medusa heads that ship inside the model
repository, never with a separate speculator. Prefix caching is an environment switch, not
a flag, and chunked prefill is always on where the attention backend supports it (which is
also why a prefill budget below the prompt limit is fine here, unlike on LoRAX).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wakegate.engines import LaunchPlan
from wakegate.engines import gpu as g
from wakegate.spec import DeploymentSpec

# The last release: the repository was archived after it.
IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.7"
CONCURRENCY_FLAG = "--max-concurrent-requests"
# The launcher reads every option from the environment too; `--api-key` is API_KEY.
API_KEY_ENV = "API_KEY"
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
class TgiProfile:
    concurrency: int = g.DEFAULT_CONCURRENCY
    name: str = "tgi"
    dialect: str = "tgi"
    health_path: str = "/health"
    cheap_logprobs: bool = False
    image: str = IMAGE
    adapter_files: bool = False

    @classmethod
    def from_spec(cls, spec: DeploymentSpec) -> TgiProfile:
        return cls(concurrency=g.concurrency(spec.config, CONCURRENCY_FLAG))

    def validate(self, spec: DeploymentSpec) -> None:
        cfg = spec.config
        g.refuse_common(cfg, "TGI")
        if cfg.merge_adapter:
            g.refuse("merge_adapter", "TGI cannot merge a LoRA adapter into the base weights")
        if cfg.chunked_prefill is False:
            g.refuse("chunked_prefill", "TGI has no switch to turn chunked prefill off")
        if g.speculation(cfg).model:
            g.refuse(
                "speculator",
                "TGI takes Medusa heads only from the model's own repository: use 'auto' "
                "(n-grams, or the model's heads) or 'disabled'",
            )
        g.quantization(cfg, QUANTIZATIONS, "TGI")
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
        argv = g.launcher_head("text-generation-launcher", spec, host, port, "--max-input-tokens")
        method = g.quantization(cfg, QUANTIZATIONS, "TGI")
        if method:
            argv += ["--quantize", method]
        if g.speculation(cfg).ngram:
            argv += ["--speculate", str(g.SPECULATIVE_TOKENS)]
        ids = g.adapter_ids(cfg)
        if ids:
            argv += ["--lora-adapters", ",".join(ids)]
        env, secret = g.hf_token_env(cfg)
        if cfg.prefix_caching is not None:
            env["PREFIX_CACHING"] = "1" if cfg.prefix_caching else "0"
        argv = g.custom_first(argv, g.custom_args(cfg, self.name), command_len=1)
        secret = g.api_key_env(env, secret, API_KEY_ENV, api_key)
        return LaunchPlan(argv=argv, env=env, secret_env=secret)
