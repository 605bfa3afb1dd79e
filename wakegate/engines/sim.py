"""The simulated engine: a replica of the `sim` backend (scaler/sim/host.py), no model at all.

It speaks the same OpenAI completions API as the llama.cpp profile, so the gateway proxies to
it unchanged, and its timing comes from the deployment's `customArgs`:

    ["--load-s", "20", "--ttft-s", "0.05", "--prefill-tps", "5000", "--tps", "40",
     "--batch", "8", "--batch-slowdown", "0.02"]

`--load-s` model load time (health answers 503 until then), `--ttft-s` fixed time to the first
token plus `prompt_tokens / --prefill-tps`, then one token every `1 / --tps` seconds, at most
`--batch` sequences at once (the replica's concurrency), each token interval multiplied by
`1 + batch_slowdown * (active - 1)`. The sim host divides every duration by its time scale.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

from wakegate import engine_args
from wakegate.catalog import MODELS
from wakegate.engines import WAKEGATE_IMAGE, EngineRefused, LaunchPlan
from wakegate.spec import DeploymentSpec, InvalidSpec

FIELD = "config.customArgs"
# SimProfile fields that describe the profile, not the simulated replica.
_PROFILE_ONLY = frozenset(
    {"name", "dialect", "health_path", "cheap_logprobs", "image", "adapter_files"}
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise EngineRefused(FIELD, f"sim engine: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise EngineRefused(FIELD, f"sim engine: {message or 'invalid arguments'}")


def _parser() -> _Parser:
    p = _Parser(prog="sim", add_help=False, allow_abbrev=False)
    p.add_argument("--load-s", type=float, default=SimProfile.load_s)
    p.add_argument("--ttft-s", type=float, default=SimProfile.ttft_s)
    p.add_argument("--prefill-tps", type=float, default=SimProfile.prefill_tps)
    p.add_argument("--tps", type=float, default=SimProfile.tps)
    p.add_argument("--batch", type=int, default=SimProfile.batch)
    p.add_argument("--batch-slowdown", type=float, default=SimProfile.batch_slowdown)
    p.add_argument("--stream-interval-s", type=float, default=SimProfile.stream_interval_s)
    p.add_argument("--cache-blocks", type=int, default=SimProfile.cache_blocks)
    return p


@dataclass(frozen=True)
class SimProfile:
    load_s: float = 20.0
    ttft_s: float = 0.05
    prefill_tps: float = 5000.0
    tps: float = 40.0
    batch: int = 8
    batch_slowdown: float = 0.0
    # Tokens after the first that come due within this long of each other share one stream
    # chunk: long replays at high speed need not push every token through the gateway.
    stream_interval_s: float = 0.0
    # Prefix-cache capacity per replica in 512-token blocks (0: no prefix caching).
    cache_blocks: int = 0
    name: str = "sim"
    dialect: str = "openai"
    health_path: str = "/health"
    # Like the llama.cpp profile it imitates: the gateway asks for log-probabilities only on
    # explicit request, so a merged chunk travels as one event.
    cheap_logprobs: bool = False
    # The sim host runs replicas in-process; a cluster never runs this profile's launch.
    image: str = WAKEGATE_IMAGE
    adapter_files: bool = False

    def __post_init__(self) -> None:
        checks = [
            ("--load-s", self.load_s >= 0),
            ("--ttft-s", self.ttft_s >= 0),
            ("--prefill-tps", self.prefill_tps > 0),
            ("--tps", self.tps > 0),
            ("--batch", self.batch >= 1),
            ("--batch-slowdown", self.batch_slowdown >= 0),
            ("--stream-interval-s", self.stream_interval_s >= 0),
            ("--cache-blocks", self.cache_blocks >= 0),
        ]
        for flag, ok in checks:
            if not ok:
                raise EngineRefused(FIELD, f"sim engine: {flag} is out of range")

    @property
    def concurrency(self) -> int:
        return self.batch

    @classmethod
    def from_args(cls, args: list[str]) -> SimProfile:
        try:  # the gateway's bounds (wakegate/engine_args.py), then the parser's types
            engine_args.check("sim", [str(a) for a in args])
        except InvalidSpec as exc:
            raise EngineRefused(exc.field, f"sim engine: {exc.message}") from None
        ns = _parser().parse_args([str(a) for a in args])
        return cls(
            load_s=ns.load_s,
            ttft_s=ns.ttft_s,
            prefill_tps=ns.prefill_tps,
            tps=ns.tps,
            batch=ns.batch,
            batch_slowdown=ns.batch_slowdown,
            stream_interval_s=ns.stream_interval_s,
            cache_blocks=ns.cache_blocks,
        )

    @classmethod
    def from_spec(cls, spec: DeploymentSpec) -> SimProfile:
        return cls.from_args(list(spec.config.custom_args or ()))

    def sim_params(self, spec: DeploymentSpec) -> dict[str, Any]:
        """What the sim host needs to run one replica of `spec` (POST /replicas `params`)."""
        profile = SimProfile.from_spec(spec)
        params = {k: v for k, v in asdict(profile).items() if k not in _PROFILE_ONLY}
        model = MODELS.get(spec.base_model)
        n_ctx = spec.config.max_total_tokens or (model.context_window if model else 0)
        return {**params, "model": spec.base_model, "n_ctx": int(n_ctx or 32768)}

    def validate(self, spec: DeploymentSpec) -> None:
        SimProfile.from_spec(spec)

    def launch(
        self,
        spec: DeploymentSpec,
        host: str,
        port: int,
        models_dir: Path,
        adapters: dict[str, Path],
        api_key: str | None = None,
    ) -> LaunchPlan:
        raise EngineRefused(
            "config.baseModel",
            f"{spec.base_model!r} is a simulated model: it runs only on the sim backend "
            "(WAKEGATE_BACKEND=sim)",
        )
