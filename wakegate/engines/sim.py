"""The simulated engine: a replica of the `sim` backend (scaler/sim/replica.py), no model at all.

It speaks the same OpenAI completions API as the llama.cpp profile, so the gateway proxies to
it unchanged, and its timing comes from the deployment's `customArgs` (their names and
defaults: wakegate/engines/sim_timing.py):

    ["--load-s", "20", "--ttft-s", "0.05", "--prefill-tps", "5000", "--tps", "40",
     "--batch", "8", "--batch-slowdown", "0.02"]

`--load-s` model load time (health answers 503 until then), `--ttft-s` fixed time to the first
token plus `prompt_tokens / --prefill-tps`, then one token every `1 / --tps` seconds, at most
`--batch` sequences at once (the replica's concurrency), each token interval multiplied by
`1 + batch_slowdown * (active - 1)`. The sim host divides every duration by its time scale.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import NoReturn, Self

from wakegate import engine_args
from wakegate.engines import WAKEGATE_IMAGE, EngineRefused
from wakegate.engines.sim_timing import SimTiming, flag_of
from wakegate.spec import DeploymentSpec, InvalidSpec

FIELD = "config.customArgs"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise EngineRefused(FIELD, f"sim engine: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise EngineRefused(FIELD, f"sim engine: {message or 'invalid arguments'}")


def _parser() -> _Parser:
    p = _Parser(prog="sim", add_help=False, allow_abbrev=False)
    for f in fields(SimTiming):
        p.add_argument(flag_of(f.name), type=type(f.default), default=f.default)
    return p


@dataclass(frozen=True)
class SimProfile(SimTiming):
    name: str = "sim"
    dialect: str = "openai"
    health_path: str = "/health"
    # Like the llama.cpp profile it imitates: the gateway asks for log-probabilities only on
    # explicit request, so a merged chunk travels as one event.
    cheap_logprobs: bool = False
    # The sim host runs replicas in-process; a cluster never launches this engine.
    image: str = WAKEGATE_IMAGE
    adapter_files: bool = False

    def __post_init__(self) -> None:
        flag = self.out_of_range()
        if flag is not None:
            raise EngineRefused(FIELD, f"sim engine: {flag} is out of range")

    @property
    def concurrency(self) -> int:
        return self.batch

    @classmethod
    def from_args(cls, args: list[str]) -> Self:
        try:  # the gateway's bounds (wakegate/engine_args.py), then the parser's types
            engine_args.check("sim", [str(a) for a in args])
        except InvalidSpec as exc:
            raise EngineRefused(exc.field, f"sim engine: {exc.message}") from None
        ns = _parser().parse_args([str(a) for a in args])
        return cls(**{f.name: getattr(ns, f.name) for f in fields(SimTiming)})

    @classmethod
    def from_spec(cls, spec: DeploymentSpec) -> Self:
        return cls.from_args(list(spec.config.custom_args or ()))

    @classmethod
    def for_spec(cls, spec: DeploymentSpec | None, concurrency: int = 1) -> Self:
        """The registry's factory (wakegate/engines/__init__.py): the concurrency is `--batch`."""
        return cls.from_spec(spec) if spec is not None else cls()

    def validate(self, spec: DeploymentSpec) -> None:
        SimProfile.from_spec(spec)
