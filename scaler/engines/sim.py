"""The simulated engine on the scaler's side: the parameters the sim host runs a replica by
(scaler/backends/sim.py sends them); there is no command line. What it takes:
wakegate/engines/sim.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scaler.engines import Launcher, LaunchPlan, Target
from wakegate.catalog import MODELS
from wakegate.engines import EngineRefused
from wakegate.engines.sim import SimProfile
from wakegate.spec import DeploymentSpec


@dataclass(frozen=True)
class SimEngine(SimProfile, Launcher):
    def sim_params(self, spec: DeploymentSpec) -> dict[str, Any]:
        """What the sim host needs to run one replica of `spec` (POST /replicas `params`)."""
        profile = SimProfile.from_spec(spec)
        params = profile.timing()
        model = MODELS.get(spec.base_model)
        n_ctx = spec.config.max_total_tokens or (model.context_window if model else 0)
        return {**params, "model": spec.base_model, "n_ctx": int(n_ctx or 32768)}

    def build(self, spec: DeploymentSpec, at: Target) -> LaunchPlan:
        raise EngineRefused(
            "config.baseModel",
            f"{spec.base_model!r} is a simulated model: it runs only on the sim backend "
            "(WAKEGATE_BACKEND=sim)",
        )
