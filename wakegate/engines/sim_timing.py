"""The simulated engine's timing: its parameters, their one set of defaults and their flags.

A deployment of the sim engine gives them as `customArgs` (wakegate/engines/sim.py parses them,
within the gateway's bounds in wakegate/engine_args.py); the sim backend hands them to the sim
host, which runs each replica by them (scaler/sim/replica.py); replays and benchmarks write
them as `customArgs` with `SimTiming.args`. Durations are simulated seconds (the sim host divides
them by its time scale).
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class SimTiming:
    """One simulated engine's knobs; the flag of each is `--` and its name with dashes."""

    # Model load time: the replica's health answers 503 until then.
    load_s: float = 20.0
    # Fixed time to the first token, plus prompt_tokens / prefill_tps.
    ttft_s: float = 0.05
    prefill_tps: float = 5000.0
    # Then one token every 1 / tps seconds, at most `batch` sequences at once (the replica's
    # concurrency), each token interval multiplied by 1 + batch_slowdown * (active - 1).
    tps: float = 40.0
    batch: int = 8
    batch_slowdown: float = 0.0
    # Tokens after the first that come due within this long of each other share one stream
    # chunk: long replays at high speed need not push every token through the gateway.
    stream_interval_s: float = 0.0
    # Prefix-cache capacity per replica in 512-token blocks (0: no prefix caching).
    cache_blocks: int = 0

    def out_of_range(self) -> str | None:
        """The flag of the first parameter out of its range, if any."""
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
        return next((flag for flag, ok in checks if not ok), None)

    def timing(self) -> dict[str, float | int]:
        """The timing parameters alone, by name."""
        return {f.name: getattr(self, f.name) for f in fields(SimTiming)}

    def args(self) -> list[str]:
        """The deployment's `customArgs` that give these parameters."""
        return [a for name, v in self.timing().items() for a in (flag_of(name), str(v))]


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")
