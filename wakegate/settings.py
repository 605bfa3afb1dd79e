"""Runtime settings, read once at start-up from the environment and an optional TOML file.

Precedence: environment (`WAKEGATE_*`, plus the conventional `REDIS_URL` and `MQTT_URL`) over
the config file (`WAKEGATE_CONFIG` or `--config`) over defaults. pydantic-settings reads and
validates them once, against the types and bounds declared on `Settings`; a bad value is a
`SettingsError` naming the environment variable (or the file's key) it came from. Inner code
receives the frozen `Settings` value and never reads the environment itself.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import socket
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
)
from pydantic.dataclasses import dataclass
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

# An optional setting given as one of these (any case) is None: the environment and TOML have
# no null.
_NONE_WORDS = frozenset({"", "none", "null"})


def _none_word(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in _NONE_WORDS:
        return None
    return value


def _http_url(value: str | None) -> str | None:
    # What clients are given as a base URL (the SDK refuses one without a scheme).
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError("must be a URL starting with http:// or https://")
    return value


_OrNone = BeforeValidator(_none_word)
OptionalStr = Annotated[str | None, _OrNone]
OptionalHttpUrl = Annotated[str | None, _OrNone, AfterValidator(_http_url)]
OptionalPath = Annotated[Path | None, _OrNone]
# A quota: a count, or None for unlimited.
Quota = Annotated[Annotated[int, Field(ge=0)] | None, _OrNone]
PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]

_CONFIG = ConfigDict(extra="forbid", str_strip_whitespace=True)


@dataclass(frozen=True, config=_CONFIG)
class Settings:
    redis_url: OptionalStr = None  # None: `wakegate up` starts an embedded redis-server
    mqtt_url: OptionalStr = None  # None: `wakegate up` starts an embedded broker
    state_dir: Path = Path(".wakegate")
    host: str = "127.0.0.1"
    port: int = 8080
    scaler_port: int = 8081
    # The gateway's private data-plane listener (direct ingress, docs in README "Direct
    # ingress"): deployments with `directIngress: true` are served here and only here; every
    # other deployment is served here too. Only data-plane routes answer on it (the control
    # plane stays on `port`). None: no private listener (`directIngress: true` is refused).
    # Its serving base URL as clients should reach it (a DNS name, a Service's; what the
    # deployment JSON shows as `privateEndpoint`) defaults to http://private_host:private_port.
    private_host: str = "127.0.0.1"
    private_port: Annotated[Annotated[int, Field(ge=1, le=65535)] | None, _OrNone] = 8082
    private_advertise_url: OptionalHttpUrl = None
    backend: str = "local"
    # Longest a queued request waits for a replica before 504 (cold start included).
    queue_timeout_s: PositiveSeconds = 300.0
    # Keep-alive comment interval on streams that wait in the queue.
    keepalive_s: float = 5.0
    max_body_bytes: Annotated[int, Field(ge=0)] = 8 * 1024 * 1024
    # An async submission is stored in Redis until it expires (about a day): its body may be
    # at most this large (413 beyond), far less than a synchronous request's.
    max_async_body_bytes: Annotated[int, Field(ge=0)] = 256 * 1024
    # Gateway processes serving the one port (SO_REUSEPORT), each a gateway of its own (own
    # id, leases and hand-offs). 0: one for `wakegate gateway`, the machine's cores for
    # `wakegate up`. Each process has its own /metrics.
    gateway_workers: Annotated[int, Field(ge=0)] = 0
    # A request body must arrive within this many seconds of its handler starting, or the
    # gateway answers 408: a client that stops sending must not hold a handler forever.
    body_timeout_s: PositiveSeconds = 30.0
    # Waiting requests per deployment beyond which new ones get 429: the default, and the
    # operator's queue quota (a deployment's `maxQueueLength` is clamped to it).
    max_queue_length: Annotated[int, Field(ge=1)] = 10_000
    # Operator quotas (wakegate/quotas.py), None: unlimited; per-tenant overrides live in
    # Redis (`wakegate quota set`). Deployments, replicas (CPU ones included) and GPUs per
    # tenant (GPUs its replicas hold; CPU replicas count none), replicas per deployment. The
    # tenant replica and GPU quotas are soft: a deployment that fits them alone is accepted
    # and waits for the tenant's other replicas to go. Finite by default, so that one tenant
    # of a shared installation cannot take a whole pool (or start CPU replicas without end).
    quota_max_deployments_per_tenant: Quota = 1000
    quota_max_replicas_per_deployment: Quota = 64
    quota_max_replicas_per_tenant: Quota = 64
    quota_max_gpus_per_tenant: Quota = 8
    # Reserved capacity: GPUs per tenant served first and never taken for others
    # (`usesGuaranteedCapacity`, then `minReplicas`). An operator grant, none by default.
    quota_guaranteed_gpus_per_tenant: Quota = 0
    # Async requests one tenant may have stored at once (queued, running, or results kept),
    # and the bytes they take: a submission beyond either gets 429 naming the quota.
    quota_max_async_jobs_per_tenant: Quota = 1000
    quota_max_async_bytes_per_tenant: Quota = 64 * 1024 * 1024
    # Bytes of entries the request log of one deployment keeps (the oldest go first; it also
    # keeps at most 10,000 entries).
    quota_max_request_log_bytes_per_deployment: Quota = 16 * 1024 * 1024
    # How long results of async requests stay retrievable. A job itself expires
    # queue_timeout_s + 3 x 600 s + this after its creation (router/jobs.py `job_ttl_s`).
    async_result_ttl_s: int = 86_400
    # Request-log entries keep at most this many bytes of the prompt (or chat messages) and
    # as many of the output; an entry that was cut says `"truncated": true`.
    # `parameters` and `error` keep as many each (an entry holds at most about 4 x this).
    request_log_max_bytes: Annotated[int, Field(ge=0)] = 65_536
    # Above this share of Redis's maxmemory (sampled every second) the gateway refuses bulk
    # writes (async submissions 503, request-log entries skipped), keeping the rest for the
    # control plane and every tenant's queue. 1: never.
    storage_bulk_limit: Annotated[float, Field(gt=0, le=1)] = 0.8
    # The embedded Redis (`wakegate up`; docker-compose.yml likewise): its memory limit
    # (Redis syntax: "2gb"), beyond which it refuses writes (noeviction) and the gateway
    # answers 503 with Retry-After; and its AOF fsync policy: "everysec" (a crash of the
    # Redis process loses nothing, a crash of the OS or power loss up to about a second of
    # acknowledged writes) or "always" (nothing acknowledged is lost, at a cost per write).
    redis_maxmemory: str = "2gb"
    redis_appendfsync: Literal["everysec", "always"] = "everysec"
    # Queue entries and slots are leases that the holding gateway renews; a dead gateway's
    # entries expire after this long and stop blocking the queue or holding capacity.
    lease_ms: Annotated[int, Field(ge=1000)] = 15_000
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
    # The pool grows by itself (a cluster autoscaler adds GPU nodes on demand): a SKU missing
    # now may come, so no deployment is refused, nor its requests failed, for lacking it
    # (wakegate/pool.py). False: what the backend reports is the whole pool.
    pool_autoscaled: bool = False
    # Replica processes launched by the local backend bind here, and gateways reach them at
    # replica_advertise_host (defaults to replica_host; set it when binding 0.0.0.0).
    replica_host: str = "127.0.0.1"
    replica_advertise_host: OptionalStr = None
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
    adapter_dir: OptionalPath = None
    adapter_url: OptionalStr = None
    # User additions to the model catalogue (wakegate/catalog.py): a TOML file of entries.
    models_file: OptionalPath = None
    # The `ray` backend: the cluster to join ("host:6379", "auto"; None is "auto": the cluster
    # `ray start` runs on this machine, never a private one), the namespace its replica actors
    # live in, and the CPUs each replica actor reserves on its node (llama.cpp's threads are
    # not limited by it; GPU engines need little).
    ray_address: OptionalStr = None
    ray_namespace: str = "wakegate"
    ray_num_cpus: float = 1.0
    # The `kubernetes` backend: namespace of replica Pods, kubeconfig context (None: in-cluster
    # config, else the current context), and the image that runs wakegate's own engines.
    kubernetes_namespace: str = "wakegate"
    kubernetes_context: OptionalStr = None
    kubernetes_wakegate_image: str = "wakegate:latest"
    # A PersistentVolumeClaim mounted at /models in every replica Pod, so that weights are
    # fetched once (ReadWriteMany for replicas on several nodes); None: an emptyDir per Pod.
    kubernetes_models_pvc: OptionalStr = None
    # The key (a file, mode 0600) that encrypts deployments' hfTokens in Redis and signs API
    # token records (wakegate/sealing.py); gateways and scalers of one installation share it.
    # `wakegate up` makes one in the state dir. None: tokens stored and checked as before.
    secret_key_file: OptionalPath = None
    # A bearer token (a file) that opens /metrics of gateways and scalers, for Prometheus;
    # admin tokens open it too. `wakegate up` makes one in the state dir.
    metrics_token_file: OptionalPath = None
    # Failed authentications per client address within the window beyond which the gateway
    # answers 429 (with Retry-After) without looking at the token.
    auth_failures_max: Annotated[int, Field(ge=1)] = 20
    auth_failures_window_s: Annotated[int, Field(ge=1)] = 60
    # CPU and memory a CPU replica Pod (llama.cpp) requests and is limited to (Kubernetes
    # quantities); GPU replicas take theirs from the accelerator (scaler/backends/kubernetes.py).
    kubernetes_cpu_replica_cpu: str = "2"
    kubernetes_cpu_replica_memory: str = "4Gi"
    default_token: OptionalStr = None
    default_tenant: str = "default"
    log_level: str = "INFO"

    def private_url(self) -> str | None:
        """The serving base URL of the private listener (no trailing slash), or None."""
        if self.private_port is None:
            return None
        if self.private_advertise_url:
            return self.private_advertise_url.rstrip("/")
        host = self.private_host
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()  # a wildcard is no address to connect to
        elif ":" in host:
            host = f"[{host}]"  # an IPv6 literal
        return f"http://{host}:{self.private_port}"

    def with_overrides(self, **kw: Any) -> Settings:
        return dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})


class SettingsError(ValueError):
    """Settings that do not validate; one line per bad value, naming where it came from."""


# Settings read from conventional variables too (after their WAKEGATE_ name).
_ENV_ALIASES = {"redis_url": "REDIS_URL", "mqtt_url": "MQTT_URL"}
# Values not repeated in error messages.
_SECRET_WORDS = ("url", "token")


def env_names(name: str) -> tuple[str, ...]:
    """The environment variables a setting is read from, first one first."""
    alias = _ENV_ALIASES.get(name)
    return (f"WAKEGATE_{name.upper()}", alias) if alias else (f"WAKEGATE_{name.upper()}",)


class _Sources(BaseSettings):
    """Where pydantic-settings looks: the environment, then the config file's table (passed
    as the init values), then the defaults of `Settings`."""

    model_config = SettingsConfigDict(
        env_prefix="WAKEGATE_",
        env_ignore_empty=True,
        extra="forbid",
        str_strip_whitespace=True,
        validate_by_name=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return env_settings, init_settings


@functools.cache
def _sources_model() -> type[_Sources]:
    """A pydantic-settings model with the fields of `Settings` (types, bounds, defaults)."""
    hints = typing.get_type_hints(Settings, include_extras=True)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        alias = _ENV_ALIASES.get(f.name)
        default = (
            Field(f.default, validation_alias=AliasChoices(*env_names(f.name)))
            if alias
            else f.default
        )
        fields[f.name] = (hints[f.name], default)
    model: type[_Sources] = create_model("SettingsSources", __base__=_Sources, **fields)
    return model


def _config_table(path: str | Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    table = data.get("wakegate", data)
    if not isinstance(table, dict):
        raise SettingsError(f"{path}: [wakegate] is not a table")
    return table


def _set_in_environment(name: str) -> str | None:
    """The variable a setting's value came from, if the environment gave it (the names are
    matched without regard to case, as pydantic-settings does)."""
    present = {k.upper(): k for k, v in os.environ.items() if v}
    for env in env_names(name):
        if env in present:
            return present[env]
    return None


def _field_of(loc: str) -> str:
    """The setting an error's location names (a field, or one of its variables)."""
    for f in dataclasses.fields(Settings):
        if loc == f.name or loc.upper() in env_names(f.name):
            return f.name
    return loc


def _describe(exc: ValidationError, table: dict[str, Any], path: str | Path | None) -> str:
    lines = []
    for error in exc.errors():
        name = _field_of(str(error["loc"][0]) if error["loc"] else "")
        env = _set_in_environment(name)
        where = env or (f"{name} (in {path})" if name in table else name)
        if error["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown setting")
            continue
        message = error["msg"][:1].lower() + error["msg"][1:]
        value = error.get("input")
        if isinstance(value, str | int | float) and not any(w in name for w in _SECRET_WORDS):
            message += f" (got {value!r})"
        lines.append(f"{where}: {message}")
    return "\n".join(lines)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """The settings of this process: the environment over `config_file` (or the file
    `WAKEGATE_CONFIG` names) over the defaults, then `overrides` that are not None (command
    line flags). Raises SettingsError (a ValueError) naming each bad value's variable."""
    path = config_file or os.environ.get("WAKEGATE_CONFIG") or None
    table = _config_table(path) if path else {}
    try:
        loaded = _sources_model()(**table)
        values = {f.name: getattr(loaded, f.name) for f in dataclasses.fields(Settings)}
        return Settings(**values).with_overrides(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, table, path)) from None


def load_settings_or_exit(config_file: str | Path | None = None) -> Settings:
    """load_settings for a process's entry point: a bad value ends the process with a message
    that names it (exit status 1), not a traceback."""
    try:
        return load_settings(config_file)
    except (SettingsError, OSError, tomllib.TOMLDecodeError) as exc:
        raise SystemExit(f"bad configuration: {exc}") from None


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that reproduces these settings in a child process."""
    env: dict[str, str] = {}
    for f in dataclasses.fields(Settings):
        value = getattr(settings, f.name)
        if value is not None:
            env[f"WAKEGATE_{f.name.upper()}"] = str(value)
        elif f.default is not None:
            # None where the default is a value (an unlimited quota): say so, or the child
            # would fall back to the default.
            env[f"WAKEGATE_{f.name.upper()}"] = "none"
    return env
