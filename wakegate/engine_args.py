"""Which `customArgs` each engine accepts: an allowlist of flags, with a check on every value.

`customArgs` reach the engine's command line, so an unchecked one can rebind the replica
(`--host 0.0.0.0`, `--port`), load other weights (`--model /path`, `--tokenizer org/repo`),
run code from the Hub (`--trust-remote-code`) or read a config file that sets all of those.
Only flags that tune the engine are listed here, each with what its value may be; anything
else is refused with a 400 naming `config.customArgs` and the flag. The gateway checks a
deployment against this table when it is created or updated (wakegate/engines/), and the
scaler (scaler/engines/) checks it again before every launch. The table is data, shared by both
sides, so the gateway needs nothing from the scaler to enforce it; docs/engines.md lists it.

Accepted forms: `--flag value`, `--flag=value`, and a bare `--flag` for switches. No
positional arguments, no short options, no abbreviations (argparse would expand `--hos` to
`--host`): a flag is matched whole.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from wakegate.spec import InvalidSpec

FIELD = "config.customArgs"
# More would be a mistake; each value is a number or a short word.
MAX_ARGS = 64
MAX_ARG_CHARS = 256

_INT = re.compile(r"-?\d{1,19}")
_FLOAT = re.compile(r"-?(?:\d{1,19}(?:\.\d{0,19})?|\.\d{1,19})(?:[eE][-+]?\d{1,3})?")
_BOOLS = {"true": True, "false": False}


@dataclass(frozen=True)
class Flag:
    """One accepted flag: `kind` is `switch` (no value), `int`, `float`, `bool` (true or
    false, any case) or `choice` (one of `choices`); numbers lie within [low, high]."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind == "switch":
            return "no value"
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        return f"{self.kind} in [{_fmt(self.low)}, {_fmt(self.high)}]"

    def check(self, value: str) -> str | None:
        """Why `value` is not acceptable, or None."""
        if self.kind == "bool":
            return None if value.lower() in _BOOLS else "must be true or false"
        if self.kind == "choice":
            return None if value in self.choices else f"must be {self.describe()}"
        pattern = _INT if self.kind == "int" else _FLOAT
        # fullmatch: `$` would let a trailing newline through to argv and config files.
        if not pattern.fullmatch(value):
            return f"must be {'an integer' if self.kind == 'int' else 'a number'}"
        number = float(value)
        if not math.isfinite(number) or not self.low <= number <= self.high:
            return f"must be within [{_fmt(self.low)}, {_fmt(self.high)}]"
        return None


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else repr(float(number))


def _int(low: float, high: float) -> Flag:
    return Flag("int", low, high)


def _float(low: float, high: float) -> Flag:
    return Flag("float", low, high)


def _choice(*values: str) -> Flag:
    return Flag("choice", choices=values)


SWITCH = Flag("switch")
BOOL = Flag("bool")

# llama-cpp-python's server (`python -m llama_cpp.server`); every option takes a value, and
# with adapters the pairs become keys of its config file.
LLAMACPP: dict[str, Flag] = {
    "--n_threads": _int(1, 1024),
    "--n_threads_batch": _int(1, 1024),
    "--n_batch": _int(1, 65536),
    "--n_ubatch": _int(1, 65536),
    "--n_gpu_layers": _int(-1, 10_000),
    "--main_gpu": _int(0, 63),
    "--flash_attn": BOOL,
    "--offload_kqv": BOOL,
    "--use_mmap": BOOL,
    "--use_mlock": BOOL,
    "--numa": BOOL,
    "--seed": _int(-1, 4_294_967_295),
    "--rope_freq_base": _float(0, 1e8),
    "--rope_freq_scale": _float(0, 1e3),
    "--last_n_tokens_size": _int(0, 65536),
    "--verbose": BOOL,
}

# `vllm serve`.
VLLM: dict[str, Flag] = {
    "--max-num-seqs": _int(1, 4096),
    "--gpu-memory-utilization": _float(0.01, 1.0),
    "--dtype": _choice("auto", "half", "float16", "bfloat16", "float", "float32"),
    "--kv-cache-dtype": _choice("auto", "fp8", "fp8_e4m3", "fp8_e5m2"),
    "--block-size": _choice("1", "8", "16", "32", "64", "128"),
    "--max-lora-rank": _choice("8", "16", "32", "64", "128", "256", "320", "512"),
    "--max-logprobs": _int(0, 1000),
    "--seed": _int(0, 2_147_483_647),
    "--cpu-offload-gb": _float(0, 4096),
    "--scheduling-policy": _choice("fcfs", "priority"),
    "--tokenizer-mode": _choice("auto", "slow", "mistral"),
    "--generation-config": _choice("auto", "vllm"),
    "--enforce-eager": SWITCH,
    "--disable-sliding-window": SWITCH,
    "--async-scheduling": SWITCH,
}

# What TGI's and LoRAX's launchers (one lineage) both accept.
_LAUNCHER: dict[str, Flag] = {
    "--max-concurrent-requests": _int(1, 4096),
    "--max-best-of": _int(1, 16),
    "--max-stop-sequences": _int(0, 64),
    "--max-batch-total-tokens": _int(1, 100_000_000),
    "--max-waiting-tokens": _int(1, 100_000),
    "--waiting-served-ratio": _float(0, 100),
    "--validation-workers": _int(1, 64),
    "--dtype": _choice("float16", "bfloat16"),
    "--cuda-memory-fraction": _float(0.01, 1.0),
}

# `text-generation-launcher`.
TGI: dict[str, Flag] = {
    **_LAUNCHER,
    "--max-top-n-tokens": _int(0, 100),
    "--max-batch-size": _int(1, 4096),
    "--max-client-batch-size": _int(1, 256),
    "--kv-cache-dtype": _choice("fp8_e4m3fn", "fp8_e5m2"),
    "--rope-scaling": _choice("linear", "dynamic"),
    "--rope-factor": _float(0.01, 1000),
    "--disable-custom-kernels": SWITCH,
    "--disable-grammar-support": SWITCH,
    "--usage-stats": _choice("on", "off", "no-stack"),
}

# `lorax-launcher`.
LORAX: dict[str, Flag] = {
    **_LAUNCHER,
    "--max-active-adapters": _int(1, 1024),
    "--adapter-cycle-time-s": _int(1, 3600),
    "--adapter-memory-fraction": _float(0, 1),
    "--speculation-max-batch-size": _int(0, 4096),
    "--eager-prefill": BOOL,
    "--compile": SWITCH,
    "--eager": SWITCH,
    "--disable-sgmv": SWITCH,
}

# The simulated engine (wakegate/engines/sim.py): its whole behaviour comes from these.
SIM: dict[str, Flag] = {
    "--load-s": _float(0, 86_400),
    "--ttft-s": _float(0, 3600),
    "--prefill-tps": _float(0, 1e9),
    "--tps": _float(0, 1e6),
    "--batch": _int(1, 4096),
    "--batch-slowdown": _float(0, 100),
    "--stream-interval-s": _float(0, 60),
    "--cache-blocks": _int(0, 1_000_000),
}

ALLOWED: Mapping[str, Mapping[str, Flag]] = {
    "llamacpp": LLAMACPP,
    "vllm": VLLM,
    "tgi": TGI,
    "lorax": LORAX,
    "sim": SIM,
}

ENGINE_TITLES = {
    "llamacpp": "llama.cpp",
    "vllm": "vLLM",
    "tgi": "TGI",
    "lorax": "LoRAX",
    "sim": "sim engine",
}


def _refuse(message: str) -> InvalidSpec:
    return InvalidSpec(FIELD, message)


def parse(engine: str, args: Sequence[str]) -> list[tuple[str, str | None]]:
    """The (flag, value) pairs of `args` (value None for a switch), each flag on `engine`'s
    allowlist and each value within its bounds. Raises InvalidSpec naming the flag."""
    allowed = ALLOWED.get(engine, {})
    title = ENGINE_TITLES.get(engine, engine)
    if len(args) > MAX_ARGS:
        raise _refuse(f"at most {MAX_ARGS} arguments, not {len(args)}")
    pairs: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args):
        arg = str(args[i])
        if len(arg) > MAX_ARG_CHARS:
            raise _refuse(f"argument {i} is longer than {MAX_ARG_CHARS} characters")
        flag, sep, inline = arg.partition("=")
        if not flag.startswith("--"):
            raise _refuse(f"{arg!r} is not a flag: give --flag value pairs")
        spec = allowed.get(flag)
        if spec is None:
            known = ", ".join(sorted(allowed)) or "none"
            raise _refuse(
                f"{flag} is not a {title} flag wakegate accepts in customArgs; accepted: {known}"
            )
        if spec.kind == "switch":
            if sep:
                raise _refuse(f"{flag} takes no value")
            pairs.append((flag, None))
            i += 1
            continue
        if sep:
            value = inline
            i += 1
        elif i + 1 < len(args):
            value = str(args[i + 1])
            i += 2
        else:
            raise _refuse(f"{flag} needs a value ({spec.describe()})")
        if len(value) > MAX_ARG_CHARS:
            raise _refuse(f"{flag}: the value is longer than {MAX_ARG_CHARS} characters")
        why = spec.check(value)
        if why is not None:
            raise _refuse(f"{flag} {why}, not {value!r}")
        pairs.append((flag, value))
    return pairs


def check(engine: str, args: Sequence[str]) -> None:
    """Raise InvalidSpec (field `config.customArgs`) unless `engine` accepts every arg."""
    parse(engine, args)
