"""llama.cpp through llama-cpp-python's OpenAI-compatible server: the CPU default engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from wakegate.engines import WAKEGATE_IMAGE, EngineRefused, custom_flags
from wakegate.spec import DeploymentSpec


@dataclass(frozen=True)
class LlamaCppProfile:
    concurrency: int = 1
    name: str = "llamacpp"
    dialect: str = "openai"
    health_path: str = "/v1/models"
    # llama-cpp-python sorts the whole vocabulary in Python for every token it reports a
    # log-probability for: about 20x slower generation with Gemma's 262k-token vocabulary.
    cheap_logprobs: bool = False
    # Runs inside wakegate's own image on a cluster (settings.kubernetes_wakegate_image).
    image: str = WAKEGATE_IMAGE
    # GGUF LoRA files, fetched by the backend (scaler/backends/adapters.py).
    adapter_files: bool = True

    def validate(self, spec: DeploymentSpec) -> None:
        cfg = spec.config
        # "disabled" and "none" ask for nothing, so they are honoured.
        if cfg.speculator not in (None, "disabled"):
            raise EngineRefused("config.speculator", "llama.cpp has no speculative decoding")
        if cfg.quantization not in (None, "none"):
            raise EngineRefused(
                "config.quantization",
                "llama.cpp serves pre-quantized GGUF weights; quantization is not supported",
            )
        # Every llama.cpp flag on the allowlist takes a value, so with adapters each pair
        # becomes a key of the config file.
        custom_flags(self.name, cfg)

    @classmethod
    def for_spec(cls, spec: DeploymentSpec | None, concurrency: int = 1) -> Self:
        """The registry's factory (wakegate/engines/__init__.py): the concurrency is a
        setting, the same for every deployment."""
        return cls(concurrency=concurrency)
