"""TGI's command line (`text-generation-launcher`); what it takes: wakegate/engines/tgi.py."""

from __future__ import annotations

from dataclasses import dataclass

from scaler.engines import Launcher, LaunchPlan, Target
from scaler.engines import gpu as g
from wakegate.engines.gpu import adapter_ids, speculation
from wakegate.engines.tgi import TgiProfile
from wakegate.spec import DeploymentSpec

# The launcher reads every option from the environment too; `--api-key` is API_KEY.
API_KEY_ENV = "API_KEY"


@dataclass(frozen=True)
class TgiEngine(TgiProfile, Launcher):
    def build(self, spec: DeploymentSpec, at: Target) -> LaunchPlan:
        cfg = spec.config
        argv = g.launcher_head("text-generation-launcher", spec, at, "--max-input-tokens")
        method = self.quantization(cfg)
        if method:
            argv += ["--quantize", method]
        if speculation(cfg).ngram:
            argv += ["--speculate", str(g.SPECULATIVE_TOKENS)]
        ids = adapter_ids(cfg)
        if ids:
            argv += ["--lora-adapters", ",".join(ids)]
        env = {}
        if cfg.prefix_caching is not None:
            env["PREFIX_CACHING"] = "1" if cfg.prefix_caching else "0"
        return g.plan(self.name, cfg, argv, at, command_len=1, key_env=API_KEY_ENV, env=env)
