"""customArgs allowlists (wakegate/engine_args.py): what each engine accepts, and the gateway
refusing the rest at create and update time (finding 3 of the security review)."""

from __future__ import annotations

from typing import Any

import pytest
from harness import Stack

from wakegate import engine_args
from wakegate.spec import InvalidSpec

# Flags that rebind the replica, load other weights or code, read a config file or set the
# replica's key: refused on every engine that has them.
NEVER = {
    "llamacpp": [
        ["--host", "0.0.0.0"],
        ["--port", "8080"],
        ["--model", "/etc/passwd"],
        ["--model_alias", "x"],
        ["--config_file", "/tmp/c.json"],
        ["--api_key", "k"],
        ["--chat_format", "chatml"],
        ["--hf_pretrained_model_name_or_path", "attacker/evil"],
        ["--lora_path", "/tmp/x"],
        ["--interrupt_requests", "True"],
        ["--hos", "0.0.0.0"],  # argparse would expand the abbreviation
    ],
    "vllm": [
        ["--trust-remote-code"],
        ["--tokenizer", "attacker/evil-tokenizer"],
        ["--host", "0.0.0.0"],
        ["--port", "8080"],
        ["--model", "attacker/evil"],
        ["--served-model-name", "x"],
        ["--download-dir", "/tmp"],
        ["--chat-template", "/etc/passwd"],
        ["--chat-template-content-format", "string"],
        ["--api-key", "k"],
        ["--config", "/tmp/c.yaml"],
        ["--revision", "main"],
        ["--load-format", "dummy"],
        ["--max_num_seqs", "8"],  # vLLM reads underscores as dashes: matched whole here
    ],
    "tgi": [
        ["--model-id", "attacker/evil"],
        ["--hostname", "0.0.0.0"],
        ["--port", "8080"],
        ["-p", "8080"],
        ["--trust-remote-code"],
        ["--api-key", "k"],
        ["--otlp-endpoint", "http://attacker"],
        ["--tokenizer-config-path", "/etc/passwd"],
        ["--huggingface-hub-cache", "/tmp"],
        ["--env"],
    ],
    "lorax": [
        ["--model-id", "attacker/evil"],
        ["--adapter-source", "local"],
        ["--hostname", "0.0.0.0"],
        ["--trust-remote-code"],
        ["--predibase-api-token", "x"],
    ],
    "sim": [["--speed", "9"], ["--host", "0.0.0.0"]],
}


@pytest.mark.parametrize(
    ("engine", "args"),
    [(engine, args) for engine, cases in NEVER.items() for args in cases],
    ids=[f"{engine}{args[0]}" for engine, cases in NEVER.items() for args in cases],
)
def test_flags_outside_the_allowlist_are_refused_naming_the_flag(
    engine: str, args: list[str]
) -> None:
    with pytest.raises(InvalidSpec) as err:
        engine_args.check(engine, args)
    assert err.value.field == "config.customArgs"
    flag = args[0].partition("=")[0]
    assert flag in err.value.message


BAD_VALUES = [
    ("vllm", ["--max-num-seqs", "lots"], "integer"),
    ("vllm", ["--max-num-seqs", "0"], "within"),
    ("vllm", ["--max-num-seqs", "1" + "0" * 40], "integer"),
    ("vllm", ["--gpu-memory-utilization", "NaN"], "number"),
    ("vllm", ["--gpu-memory-utilization", "inf"], "number"),
    ("vllm", ["--gpu-memory-utilization", "1e400"], "within"),
    ("vllm", ["--gpu-memory-utilization", "1.5"], "within"),
    ("vllm", ["--dtype", "int4"], "one of"),
    ("vllm", ["--enforce-eager=true"], "takes no value"),
    ("vllm", ["--max-num-seqs"], "needs a value"),
    ("vllm", ["serve"], "not a flag"),
    ("vllm", ["--max-num-seqs", "--host"], "integer"),
    ("tgi", ["--max-batch-size", "-1"], "within"),
    ("llamacpp", ["--flash_attn", "maybe"], "true or false"),
    ("llamacpp", ["--n_threads", "1_000"], "integer"),
    ("sim", ["--load-s", "-1"], "within"),
    ("sim", ["--tps", " 5"], "number"),
    # Review 2026-12b, finding 10: `$` let a trailing newline through to argv.
    ("sim", ["--load-s", "1\n"], "number"),
    ("sim", ["--batch=4\n"], "integer"),
    ("llamacpp", ["--seed", "-1\n"], "integer"),
    ("llamacpp", ["--n_threads", "1"] * 33, "at most"),
    ("llamacpp", ["--n_threads", "1" * 300], "longer"),
]


@pytest.mark.parametrize(
    ("engine", "args", "why"),
    BAD_VALUES,
    ids=[f"{e}-{' '.join(a)[:40]}" for e, a, _ in BAD_VALUES],
)
def test_values_are_checked_finite_and_within_bounds(
    engine: str, args: list[str], why: str
) -> None:
    with pytest.raises(InvalidSpec) as err:
        engine_args.check(engine, args)
    assert err.value.field == "config.customArgs"
    assert why in err.value.message


GOOD = [
    ("llamacpp", ["--n_threads", "2", "--flash_attn", "True", "--seed=-1"]),
    ("vllm", ["--max-num-seqs=16", "--enforce-eager", "--gpu-memory-utilization", "0.85"]),
    ("vllm", ["--dtype", "bfloat16", "--max-lora-rank", "64", "--kv-cache-dtype", "fp8"]),
    ("tgi", ["--max-concurrent-requests", "8", "--disable-custom-kernels", "--rope-factor", "2"]),
    ("lorax", ["--max-active-adapters", "16", "--eager-prefill", "false", "--compile"]),
    ("sim", ["--load-s", "0.5", "--ttft-s", "0.02", "--tps", "200", "--batch", "4"]),
    ("sim", ["--batch-slowdown=0.1", "--cache-blocks", "4", "--stream-interval-s", "1e-3"]),
]


@pytest.mark.parametrize(("engine", "args"), GOOD, ids=[e for e, _ in GOOD])
def test_tuning_flags_within_bounds_are_accepted(engine: str, args: list[str]) -> None:
    engine_args.check(engine, args)


def test_parse_pairs_each_flag_with_its_value_whatever_the_form() -> None:
    pairs = engine_args.parse("vllm", ["--max-num-seqs=16", "--enforce-eager", "--seed", "1"])
    assert pairs == [("--max-num-seqs", "16"), ("--enforce-eager", None), ("--seed", "1")]


# --- through the gateway ------------------------------------------------------------------


INJECTIONS = [
    pytest.param(
        "qwen3-8b",
        ["--trust-remote-code", "--tokenizer", "attacker/evil", "--host", "0.0.0.0"],
        "--trust-remote-code",
        id="vllm-remote-code",
    ),
    pytest.param(
        "gemma-3-270m", ["--host", "0.0.0.0", "--model", "/etc/passwd"], "--host", id="llamacpp"
    ),
    pytest.param("sim-llm", ["--load-s", "1", "--port", "1"], "--port", id="sim"),
]


@pytest.mark.parametrize(("base_model", "args", "flag"), INJECTIONS)
def test_create_with_a_refused_flag_is_400_naming_it_and_stores_nothing(
    stack: Stack, name: str, base_model: str, args: list[str], flag: str
) -> None:
    body = {"name": name, "config": {"baseModel": base_model, "customArgs": args}}
    r = stack.api("POST", "/v2/deployments", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "config.customArgs"
    assert flag in r.json()["error"]
    assert stack.api("GET", f"/v2/deployments/{name}").status_code == 404


def test_update_with_a_refused_flag_is_400_and_leaves_the_deployment_as_it_was(
    stack: Stack, name: str
) -> None:
    stack.create(name, minReplicas=0, customArgs=["--n_threads", "1"])
    before: dict[str, Any] = stack.api("GET", f"/v2/deployments/{name}").json()["data"]
    update = {"config": {"customArgs": ["--n_threads", "1", "--config_file", "/tmp/x.json"]}}
    r = stack.api("PUT", f"/v2/deployments/{name}", json=update)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "config.customArgs"
    assert "--config_file" in r.json()["error"]
    after = stack.api("GET", f"/v2/deployments/{name}").json()["data"]
    assert after["config"]["customArgs"] == ["--n_threads", "1"]
    assert after["status"] == before["status"]
    stack.delete(name)
