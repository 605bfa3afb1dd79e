"""The entry point of a replica Pod whose engine runs from the wakegate image (llama.cpp).

Such engines build their command on the machine that runs them: llama.cpp's launch assembles
the GGUF weights and, with adapters, writes a config file under the models directory. On the
`kubernetes` backend that machine is the Pod, not the scaler, so the scaler puts the spec into
the Pod's environment (`WAKEGATE_LAUNCH`, without secrets) and this module, run as the Pod's
command, builds the launch plan there and execs it, exactly as the local backend would.

Secrets reach the Pod as environment variables taken from the deployment's Secret; `HF_TOKEN`
goes back into the spec here, so the engine sees the spec the user wrote. The replica's API
key comes from its own Secret as WAKEGATE_REPLICA_KEY. Kept free of
kubernetes_asyncio: the wakegate image does not install the `kubernetes` extra.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from scaler.backends import REPLICA_ID_ENV, replica_env
from scaler.backends.adapters import adapter_path
from scaler.engines import LaunchPlan, get_engine
from wakegate.engines import EngineRefused
from wakegate.settings import Settings
from wakegate.spec import SECRET_FIELDS, DeploymentSpec

LAUNCH_ENV = "WAKEGATE_LAUNCH"
MODULE = "scaler.backends.kubernetes_launch"
# Where huggingface_hub (and the engines) look for the token; filled from the Secret.
HF_TOKEN_ENV = "HF_TOKEN"
# The replica's API key, from its own Secret; the engine gets it the way it reads keys.
REPLICA_KEY_ENV = "WAKEGATE_REPLICA_KEY"


def pod_plan(
    spec: DeploymentSpec,
    engine_name: str,
    concurrency: int,
    host: str,
    port: int,
    models_dir: str,
    adapter_url: str | None,
) -> LaunchPlan:
    """The plan the scaler renders into the Pod: run this module with the spec, minus its
    secrets, in `WAKEGATE_LAUNCH`."""
    record = spec.to_record()
    record["config"] = replace(spec.config, **dict.fromkeys(SECRET_FIELDS)).to_dict()
    payload = {
        "engine": engine_name,
        "concurrency": concurrency,
        "spec": record,
        "host": host,
        "port": port,
        "models_dir": models_dir,
        "adapter_url": adapter_url,
    }
    return LaunchPlan(
        argv=["python", "-m", MODULE],
        env={LAUNCH_ENV: json.dumps(payload, sort_keys=True, separators=(",", ":"))},
    )


def spec_in_pod(payload: Mapping[str, Any], environ: Mapping[str, str]) -> DeploymentSpec:
    """The deployment spec as the scaler saw it: the payload's, with the token put back."""
    spec = DeploymentSpec.from_record(dict(payload["spec"]))
    token = environ.get(HF_TOKEN_ENV)
    if token:
        spec = replace(spec, config=replace(spec.config, hf_token=token))
    return spec


def build(payload: Mapping[str, Any], environ: Mapping[str, str]) -> LaunchPlan:
    """Run the engine's launch here, in the Pod. Raises EngineRefused."""
    spec = spec_in_pod(payload, environ)
    engine = get_engine(str(payload["engine"]), int(payload["concurrency"]), spec=spec)
    models_dir = Path(payload["models_dir"])
    models_dir.mkdir(parents=True, exist_ok=True)
    # Only the adapter URL travels: a scaler-side WAKEGATE_ADAPTER_DIR is no path in the Pod.
    settings = Settings(state_dir=models_dir / "state", adapter_url=payload.get("adapter_url"))
    ids = spec.config.preloaded_adapters or ()
    adapters = {a: adapter_path(a, settings) for a in ids}
    host, port = str(payload["host"]), int(payload["port"])
    api_key = environ.get(REPLICA_KEY_ENV) or None
    return engine.launch(spec, host, port, models_dir, adapters, api_key)


def main() -> None:
    payload = json.loads(os.environ[LAUNCH_ENV])
    try:
        plan = build(payload, os.environ)
    except EngineRefused as exc:
        # The Pod fails with this as its last log line, which Kubernetes keeps as the
        # container's termination message (terminationMessagePolicy: FallbackToLogsOnError).
        print(f"wakegate: engine refused the deployment: {exc}", file=sys.stderr)
        sys.exit(2)
    # The engine gets a replica's minimal environment: not the launch payload, nor the key
    # under wakegate's name (the plan puts it where the engine reads it).
    env = replica_env(plan.env, os.environ.get(REPLICA_ID_ENV))
    os.execvpe(plan.argv[0], plan.argv, env)


if __name__ == "__main__":
    main()
