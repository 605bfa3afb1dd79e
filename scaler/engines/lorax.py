"""LoRAX's command line (`lorax-launcher`); what it takes: wakegate/engines/lorax.py."""

from __future__ import annotations

from dataclasses import dataclass

from scaler.engines import Launcher, LaunchPlan, Target
from scaler.engines import gpu as g
from wakegate.engines.gpu import adapter_ids, speculation
from wakegate.engines.lorax import LoraxProfile, default_adapter
from wakegate.spec import DeploymentSpec

# lorax-launcher has no API key option (its router checks none): a LoRAX replica relies on
# where it listens (loopback, or a Pod that the NetworkPolicy shields) alone.
API_KEY_ENV: str | None = None


@dataclass(frozen=True)
class LoraxEngine(LoraxProfile, Launcher):
    def build(self, spec: DeploymentSpec, at: Target) -> LaunchPlan:
        cfg = spec.config
        argv = g.launcher_head("lorax-launcher", spec, at, "--max-input-length")
        for value, flag in (
            (cfg.prefix_caching, "--prefix-caching"),
            (cfg.chunked_prefill, "--chunked-prefill"),
        ):
            if value is not None:
                argv += [flag, "true" if value else "false"]
        method = self.quantization(cfg)
        if method:
            argv += ["--quantize", method]
        if speculation(cfg).ngram:
            argv += ["--speculative-tokens", str(g.SPECULATIVE_TOKENS)]
        default, merged = default_adapter(spec)
        if default:
            argv += ["--adapter-id", default]
        if merged:
            argv += ["--merge-adapter-weights"]
        for adapter_id in adapter_ids(cfg):
            if adapter_id != default:
                argv += ["--preloaded-adapter-ids", adapter_id]
        return g.plan(self.name, cfg, argv, at, command_len=1, key_env=API_KEY_ENV)
