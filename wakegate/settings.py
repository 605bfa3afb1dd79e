"""Runtime settings, read once at start-up from the environment and an optional TOML file.

Precedence: environment (`WAKEGATE_*`, plus the conventional `REDIS_URL` and `MQTT_URL`) over
the config file (`WAKEGATE_CONFIG` or `--config`) over defaults. Inner code receives the frozen
`Settings` value and never reads the environment itself.
"""

from __future__ import annotations

import os
import tomllib
import typing
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError


@dataclass(frozen=True)
class Settings:
    redis_url: str | None = None  # None: `wakegate up` starts an embedded redis-server
    mqtt_url: str | None = None  # None: `wakegate up` starts an embedded broker
    state_dir: Path = Path(".wakegate")
    host: str = "127.0.0.1"
    port: int = 8080
    scaler_port: int = 8081
    backend: str = "local"
    # Longest a queued request waits for a replica before 504 (cold start included).
    queue_timeout_s: float = 300.0
    # Keep-alive comment interval on streams that wait in the queue.
    keepalive_s: float = 5.0
    max_body_bytes: int = 8 * 1024 * 1024
    # Gateway processes serving the one port (SO_REUSEPORT), each a gateway of its own (own
    # id, leases and hand-offs). 0: one for `wakegate gateway`, the machine's cores for
    # `wakegate up`. Each process has its own /metrics.
    gateway_workers: int = 0
    # A request body must arrive within this many seconds of its handler starting, or the
    # gateway answers 408: a client that stops sending must not hold a handler forever.
    body_timeout_s: float = 30.0
    # Waiting requests per deployment beyond which new ones get 429: the default, and the
    # operator's queue quota (a deployment's `maxQueueLength` is clamped to it).
    max_queue_length: int = 10_000
    # Operator quotas (wakegate/quotas.py), None: unlimited; per-tenant overrides live in
    # Redis (`wakegate quota set`). Deployments and GPUs per tenant (GPUs its replicas hold;
    # CPU replicas count none), replicas per deployment. The GPU quota is soft: a deployment
    # that fits it alone is accepted and waits for the tenant's other replicas to go.
    quota_max_deployments_per_tenant: int | None = 1000
    quota_max_replicas_per_deployment: int | None = 64
    quota_max_gpus_per_tenant: int | None = None
    # How long results of async requests stay retrievable. A job itself expires
    # queue_timeout_s + 3 x 600 s + this after its creation (router/jobs.py `job_ttl_s`).
    async_result_ttl_s: int = 86_400
    # Request-log entries keep at most this many bytes of the prompt (or chat messages) and
    # as many of the output; an entry that was cut says `"truncated": true`.
    request_log_max_bytes: int = 65_536
    # The embedded Redis (`wakegate up`; docker-compose.yml likewise): its memory limit
    # (Redis syntax: "2gb"), beyond which it refuses writes (noeviction) and the gateway
    # answers 503 with Retry-After; and its AOF fsync policy: "everysec" (a crash of the
    # Redis process loses nothing, a crash of the OS or power loss up to about a second of
    # acknowledged writes) or "always" (nothing acknowledged is lost, at a cost per write).
    redis_maxmemory: str = "2gb"
    redis_appendfsync: str = "everysec"
    # Queue entries and slots are leases that the holding gateway renews; a dead gateway's
    # entries expire after this long and stop blocking the queue or holding capacity.
    lease_ms: int = 15_000
    # Scaler: level-triggered reconcile period, and how long to wait for a replica to be ready.
    reconcile_interval_s: float = 2.0
    replica_start_timeout_s: float = 300.0
    drain_timeout_s: float = 60.0
    scaler_lease_ttl_s: float = 10.0
    # Deployments with replicas, load or a due timer are reconciled every reconcile_interval_s;
    # every deployment, idle ones included, once per full sweep (the safety net for lost
    # events).
    full_sweep_interval_s: float = 30.0
    # How GPUs of a short pool are shared (scaler/allocator.py): "fair" (guaranteed first,
    # weighted max-min across tenants, idle replicas reclaimed), "fcfs" (first come, first
    # served, no reclaim) or "static" (each deployment at most its equal share of its SKU).
    allocator: str = "fair"
    # A replica younger than this (since ready) is never reclaimed: what was just started for
    # a deployment is not taken back before it served.
    reclaim_grace_s: float = 30.0
    # Replica processes launched by the local backend bind here, and gateways reach them at
    # replica_advertise_host (defaults to replica_host; set it when binding 0.0.0.0).
    replica_host: str = "127.0.0.1"
    replica_advertise_host: str | None = None
    # llama.cpp serves one request at a time per replica.
    replica_concurrency: int = 1
    # The `local` backend runs at most this many CPU replicas (llama.cpp processes) at once.
    local_cpu_replicas: int = 8
    # The `sim` backend (scaler/sim): GPUs in the simulated pool by SKU (an accelerator id
    # counts for its SKU), seconds to acquire a GPU, and how much faster than real time the
    # simulated engines run (load, prefill and decode durations are divided by it).
    sim_pool: str = (
        "cpu=1000,a10_24gb=64,l4_24gb=64,l40s_48gb=32,a100_80gb=32,"
        "h100_80gb_pcie=16,h100_80gb_sxm=32"
    )
    sim_acquire_s: float = 0.0
    sim_time_scale: float = 1.0
    # LoRA adapters: `<adapter_dir>/<id>.gguf`, or downloaded from adapter_url (`{id}`).
    adapter_dir: Path | None = None
    adapter_url: str | None = None
    # User additions to the model catalogue (wakegate/catalog.py): a TOML file of entries.
    models_file: Path | None = None
    # The `ray` backend: the cluster to join ("host:6379", "auto"; None is "auto": the cluster
    # `ray start` runs on this machine, never a private one), the namespace its replica actors
    # live in, and the CPUs each replica actor reserves on its node (llama.cpp's threads are
    # not limited by it; GPU engines need little).
    ray_address: str | None = None
    ray_namespace: str = "wakegate"
    ray_num_cpus: float = 1.0
    # The `kubernetes` backend: namespace of replica Pods, kubeconfig context (None: in-cluster
    # config, else the current context), and the image that runs wakegate's own engines.
    kubernetes_namespace: str = "wakegate"
    kubernetes_context: str | None = None
    kubernetes_wakegate_image: str = "wakegate:latest"
    # A PersistentVolumeClaim mounted at /models in every replica Pod, so that weights are
    # fetched once (ReadWriteMany for replicas on several nodes); None: an emptyDir per Pod.
    kubernetes_models_pvc: str | None = None
    # The key (a file, mode 0600) that encrypts deployments' hfTokens in Redis and signs API
    # token records (wakegate/sealing.py); gateways and scalers of one installation share it.
    # `wakegate up` makes one in the state dir. None: tokens stored and checked as before.
    secret_key_file: Path | None = None
    # A bearer token (a file) that opens /metrics of gateways and scalers, for Prometheus;
    # admin tokens open it too. `wakegate up` makes one in the state dir.
    metrics_token_file: Path | None = None
    # Failed authentications per client address within the window beyond which the gateway
    # answers 429 (with Retry-After) without looking at the token.
    auth_failures_max: int = 20
    auth_failures_window_s: int = 60
    # CPU and memory a CPU replica Pod (llama.cpp) requests and is limited to (Kubernetes
    # quantities); GPU replicas take theirs from the accelerator (scaler/backends/kubernetes.py).
    kubernetes_cpu_replica_cpu: str = "2"
    kubernetes_cpu_replica_memory: str = "4Gi"
    default_token: str | None = None
    default_tenant: str = "default"
    log_level: str = "INFO"

    def with_overrides(self, **kw: Any) -> Settings:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


_ENV_ALIASES = {"redis_url": "REDIS_URL", "mqtt_url": "MQTT_URL"}


# An optional setting given as one of these (any case) is None: the environment and TOML have
# no null.
_NONE_WORDS = frozenset({"", "none", "null"})


def _field_types() -> dict[str, Any]:
    """Each setting's type, resolved (the annotations are strings under PEP 563)."""
    return typing.get_type_hints(Settings)


def _coerce(name: str, kind: Any, raw: Any) -> Any:
    """A setting's value from the environment (a string) or TOML, converted to its type."""
    optional = type(None) in typing.get_args(kind)
    if optional and (raw is None or (isinstance(raw, str) and raw.strip().lower() in _NONE_WORDS)):
        return None
    if isinstance(raw, str):
        raw = raw.strip()
    try:
        return TypeAdapter(kind).validate_python(raw)
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        raise ValueError(f"{name}: {raw!r} is not valid ({reason})") from None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {}
    path = config_file or os.environ.get("WAKEGATE_CONFIG")
    if path:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        values.update(data.get("wakegate", data))
    for f in fields(Settings):
        for env in (f"WAKEGATE_{f.name.upper()}", _ENV_ALIASES.get(f.name)):
            if env and os.environ.get(env):
                values[f.name] = os.environ[env]
                break
    known = _field_types()
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    settings = Settings(**{k: _coerce(k, known[k], v) for k, v in values.items()})
    settings = settings.with_overrides(**overrides)
    if settings.queue_timeout_s <= 0 or settings.lease_ms < 1000:
        raise ValueError("queue_timeout_s must be > 0 and lease_ms >= 1000")
    if not 0 < settings.body_timeout_s < float("inf"):
        raise ValueError("body_timeout_s must be > 0 and finite")
    if settings.auth_failures_max < 1 or settings.auth_failures_window_s < 1:
        raise ValueError("auth_failures_max and auth_failures_window_s must be >= 1")
    if settings.gateway_workers < 0:
        raise ValueError("gateway_workers must be >= 0 (0: the default)")
    if settings.max_queue_length < 1:
        raise ValueError("max_queue_length must be >= 1")
    if settings.request_log_max_bytes < 0:
        raise ValueError("request_log_max_bytes must be >= 0")
    if settings.redis_appendfsync not in ("everysec", "always"):
        raise ValueError("redis_appendfsync must be everysec or always")
    for quota in (
        "quota_max_deployments_per_tenant",
        "quota_max_replicas_per_deployment",
        "quota_max_gpus_per_tenant",
    ):
        value = getattr(settings, quota)
        if value is not None and value < 0:
            raise ValueError(f"{quota} must be >= 0 (or none: unlimited)")
    return settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that reproduces these settings in a child process."""
    env: dict[str, str] = {}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if value is not None:
            env[f"WAKEGATE_{f.name.upper()}"] = str(value)
        elif f.default is not None:
            # None where the default is a value (an unlimited quota): say so, or the child
            # would fall back to the default.
            env[f"WAKEGATE_{f.name.upper()}"] = "none"
    return env
