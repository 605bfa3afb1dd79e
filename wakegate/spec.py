"""Deployment specs: what a client may send, how it is validated, how it is shown back.

The JSON shapes are those of the Predibase SDK (see the wire-protocol spec, sections 4 and 7):
camelCase keys on the wire, snake_case accepted too, `null` meaning "unset" on create and
"unchanged" on update. Everything is validated here, at the edge; inner code gets a frozen
`DeploymentSpec` whose scaling fields always hold a value, and whose `config` is a frozen,
typed `DeploymentConfig` (snake_case attributes; the JSON names live only here and in
`to_wire`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from wakegate.catalog import ACCELERATORS, MODELS, SKUS
from wakegate.policy_params import known_params

# Matched whole (fullmatch): `$` alone would also accept a trailing newline.
NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# `GET /v2/deployments/recommended-config` (the SDK's get_recommended_config) is not a
# deployment's URL.
RECOMMENDED_CONFIG = "recommended-config"
# Path segments the control plane owns; a tenant or deployment named like this would shadow them.
RESERVED_NAMES = frozenset(
    {"v1", "v2", "llms", "users", "metrics", "healthz", "deployments", RECOMMENDED_CONFIG}
)

DEFAULT_MIN_REPLICAS = 0
DEFAULT_MAX_REPLICAS = 1
DEFAULT_COOLDOWN_S = 3600
DEFAULT_SCALE_UP_THRESHOLD = 1

# Upper bounds on every numeric field, whatever the operator's quotas (wakegate/quotas.py):
# a value past them is a mistake or an attack (a 10**400 replica count, a cooldown that
# overflows a float), never a configuration.
MAX_REPLICAS = 1000
MAX_COOLDOWN_S = 7 * 24 * 3600
MAX_SCALE_UP_THRESHOLD = 10_000
# 2 Mi tokens: above every catalogue model's context window (which bounds `maxTotalTokens`
# further, see check_context), whatever a user's models file says.
MAX_TOKENS = 2 * 1024 * 1024
MAX_SPECULATION_BATCH = 4096
MAX_QUEUE_LENGTH = 1_000_000

MinReplicas = Annotated[StrictInt, Field(ge=0, le=MAX_REPLICAS)]
MaxReplicas = Annotated[StrictInt, Field(ge=1, le=MAX_REPLICAS)]
CooldownS = Annotated[StrictInt, Field(ge=0, le=MAX_COOLDOWN_S)]
Threshold = Annotated[StrictInt, Field(ge=1, le=MAX_SCALE_UP_THRESHOLD)]
Tokens = Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS)]
SpeculationBatch = Annotated[StrictInt, Field(ge=0, le=MAX_SPECULATION_BATCH)]
QueueLength = Annotated[StrictInt, Field(ge=1, le=MAX_QUEUE_LENGTH)]
# What a spec stores is bounded (review 2026-12b, finding 2): every deployment's spec is
# re-read by the scaler and every gateway, and a tenant may have many.
MAX_DESCRIPTION_CHARS = 1024
MAX_ADAPTERS = 64
MAX_ADAPTER_CHARS = 256
MAX_TOKEN_CHARS = 1024  # hfToken
MAX_NAME_CHARS = 256  # image tags, speculator, quantization, region
MAX_INFERENCE_BYTES = 1024  # computeSpec.requests.inference as JSON
Description = Annotated[StrictStr, Field(max_length=MAX_DESCRIPTION_CHARS)]
ShortStr = Annotated[StrictStr, Field(max_length=MAX_NAME_CHARS)]
AdapterId = Annotated[StrictStr, Field(max_length=MAX_ADAPTER_CHARS)]


# Ranges of the scaling policies' knobs (wakegate/policy_params.py), by name: durations
# up to a week, ratios and rates within what any configuration uses. A knob missing here gets
# the default range of its kind (a `*_s` name is a duration).
POLICY_PARAM_RANGES: dict[str, tuple[float, float]] = {
    # wakegate
    "rate_window_s": (0.0, MAX_COOLDOWN_S),
    "startup_aware": (0.0, 1.0),  # a switch
    "steady_floor": (0.0, 1.0),  # a switch
    "hold_wait_s": (0.0, MAX_COOLDOWN_S),
    # knative
    "stable_window_s": (0.0, MAX_COOLDOWN_S),
    "panic_window_s": (0.0, MAX_COOLDOWN_S),
    "panic_threshold": (0.0, 1000.0),
    "scale_to_zero_grace_s": (0.0, MAX_COOLDOWN_S),
    "max_scale_down_rate": (0.0, 1000.0),
    "max_scale_up_rate": (0.0, 1_000_000.0),
    # ray
    "target_ongoing_requests": (0.0, 10_000.0),
    "upscale_delay_s": (0.0, MAX_COOLDOWN_S),
    "downscale_delay_s": (0.0, MAX_COOLDOWN_S),
    # Negative is Ray's None: the same as downscale_delay_s (its default is -1).
    "downscale_to_zero_delay_s": (-1.0, MAX_COOLDOWN_S),
}
DURATION_PARAM_RANGE = (0.0, float(MAX_COOLDOWN_S))
OTHER_PARAM_RANGE = (0.0, 1_000_000.0)


def param_range(name: str) -> tuple[float, float]:
    default = DURATION_PARAM_RANGE if name.endswith("_s") else OTHER_PARAM_RANGE
    return POLICY_PARAM_RANGES.get(name, default)


class InvalidSpec(ValueError):
    """A client-supplied spec is wrong; `field` is the JSON path of the offending value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class FieldValueError(ValueError):
    """Raised inside a model validator about one value below the model (`path`, relative to
    it), so that the 400 names that value rather than the whole model."""

    def __init__(self, path: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.path = path


class WireModel(BaseModel):
    """What a client sends: camelCase (snake_case accepted too), nothing unknown, frozen."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class ComputeRequests(WireModel):
    inference: dict[str, Any]

    @field_validator("inference")
    @classmethod
    def _bounded(cls, v: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(v, separators=(",", ":")))
        if size > MAX_INFERENCE_BYTES:
            raise ValueError(f"at most {MAX_INFERENCE_BYTES} bytes as JSON, not {size}")
        return v


class ComputeSpec(WireModel):
    requests: ComputeRequests
    region: ShortStr | None = None

    @field_validator("requests")
    @classmethod
    def _sku_known(cls, v: ComputeRequests) -> ComputeRequests:
        sku = v.inference.get("sku")
        if not isinstance(sku, str):
            raise ValueError("requests.inference.sku is required and must be a string")
        if sku not in SKUS and sku not in ACCELERATORS:
            raise ValueError(f"unknown sku {sku!r}; known: {', '.join(sorted(SKUS))}")
        return v


class ScalingPolicy(WireModel):
    """wakegate extension: which scaling policy runs the deployment, and its knobs."""

    name: Literal["wakegate", "knative", "ray", "always-on"] = "wakegate"
    # Finite: NaN or Infinity would poison the policy's arithmetic on every pass.
    params: dict[str, Annotated[float, Field(allow_inf_nan=False)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_params(self) -> ScalingPolicy:
        allowed = known_params(self.name)
        unknown = sorted(set(self.params) - allowed)
        if unknown:
            raise ValueError(
                f"unknown params for policy {self.name!r}: {', '.join(unknown)}; "
                f"known: {', '.join(sorted(allowed)) or 'none'}"
            )
        for key, value in sorted(self.params.items()):
            low, high = param_range(key)
            if not low <= value <= high:
                raise FieldValueError(
                    ("params", key), f"must be within [{low:g}, {high:g}], not {value:g}"
                )
        return self


class ConfigUpdate(WireModel):
    """Every settable field; all optional. On update, `None` means "leave unchanged"."""

    base_model: StrictStr | None = None
    custom_args: list[StrictStr] | None = None
    cooldown_time: CooldownS | None = None
    hf_token: Annotated[StrictStr, Field(max_length=MAX_TOKEN_CHARS)] | None = None
    min_replicas: MinReplicas | None = None
    max_replicas: MaxReplicas | None = None
    scale_up_threshold: Threshold | None = Field(default=None, alias="scaleUpRequestThreshold")
    max_total_tokens: Tokens | None = None
    lorax_image_tag: ShortStr | None = None
    request_logging_enabled: StrictBool | None = None
    direct_ingress: StrictBool | None = None
    preloaded_adapters: Annotated[list[AdapterId], Field(max_length=MAX_ADAPTERS)] | None = None
    speculator: ShortStr | None = None
    prefix_caching: StrictBool | None = None
    backend: Literal["v1", "v2", "v3"] | None = None
    disable_adapters: StrictBool | None = None
    uses_guaranteed_capacity: StrictBool | None = None
    chunked_prefill: StrictBool | None = None
    speculation_disable_by_batch_size: SpeculationBatch | None = None
    max_num_batched_tokens: Tokens | None = None
    cache_model: StrictBool | None = None
    merge_adapter: StrictBool | None = None
    compute_spec: ComputeSpec | None = None
    quantization: ShortStr | None = None
    accelerator: StrictStr | None = None
    scaling_policy: ScalingPolicy | None = None
    # wakegate extension: requests beyond this many waiting get 429 with Retry-After. The
    # operator's queue quota clamps it where it is used (wakegate/quotas.py `queue_limit`);
    # the stored value is what the client set.
    max_queue_length: QueueLength | None = None
    # wakegate extension: how the gateway picks a replica (see wakegate/store.py `_DISPATCH_FN`).
    routing: Literal["prefix", "least-loaded", "random"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _snake_threshold(cls, data: Any) -> Any:
        # The SDK's dict form renames scale_up_threshold to scale_up_request_threshold.
        if isinstance(data, dict):
            for legacy in ("scale_up_request_threshold", "scale_up_threshold"):
                if legacy in data and "scaleUpRequestThreshold" not in data:
                    data = {**data, "scaleUpRequestThreshold": data[legacy]}
                    data.pop(legacy)
        return data

    @field_validator("base_model")
    @classmethod
    def _model_known(cls, v: str | None) -> str | None:
        if v is not None and v not in MODELS:
            raise ValueError(f"unknown base model {v!r}; known: {', '.join(sorted(MODELS))}")
        return v

    @field_validator("accelerator")
    @classmethod
    def _accelerator_known(cls, v: str | None) -> str | None:
        if v is not None and v not in ACCELERATORS:
            known = ", ".join(sorted(ACCELERATORS))
            raise ValueError(f"unknown accelerator {v!r}; known: {known}")
        return v


class CreateRequest(WireModel):
    name: StrictStr
    config: ConfigUpdate
    description: Description | None = None


class UpdateRequest(WireModel):
    config: ConfigUpdate | None = None
    description: Description | None = None


# JSON key for each config field, in the SDK's order.
CONFIG_KEYS: dict[str, str] = {
    name: (field.alias or name) for name, field in ConfigUpdate.model_fields.items()
}
SECRET_FIELDS = frozenset({"hf_token"})


@dataclass(frozen=True)
class ComputeConfig:
    """`computeSpec` as stored: the SKU request (`inference`, sku and whatever else the client
    sent) and the region."""

    inference: Mapping[str, Any]
    region: str | None = None

    @property
    def sku(self) -> str:
        return str(self.inference["sku"])

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ComputeConfig:
        return cls(inference=dict(data["requests"]["inference"]), region=data.get("region"))

    def to_dict(self) -> dict[str, Any]:
        return {"requests": {"inference": dict(self.inference)}, "region": self.region}


@dataclass(frozen=True)
class PolicyConfig:
    """`scalingPolicy` as stored: the policy's name and the knobs the client set."""

    name: str = "wakegate"
    params: Mapping[str, float] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyConfig:
        return cls(name=str(data.get("name", "wakegate")), params=dict(data.get("params") or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params or {})}


@dataclass(frozen=True)
class DeploymentConfig:
    """A deployment's config as inner code reads it: typed, frozen, snake_case; `None` is a
    field the client never set (defaults apply where the value is used, see DeploymentSpec).
    Built from JSON that was validated on its way in (ConfigUpdate); `to_dict` gives back the
    stored shape: the set fields only, nested values as the API took them."""

    base_model: str | None = None
    custom_args: tuple[str, ...] | None = None
    cooldown_time: int | None = None
    hf_token: str | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    scale_up_threshold: int | None = None
    max_total_tokens: int | None = None
    lorax_image_tag: str | None = None
    request_logging_enabled: bool | None = None
    direct_ingress: bool | None = None
    preloaded_adapters: tuple[str, ...] | None = None
    speculator: str | None = None
    prefix_caching: bool | None = None
    backend: Literal["v1", "v2", "v3"] | None = None
    disable_adapters: bool | None = None
    uses_guaranteed_capacity: bool | None = None
    chunked_prefill: bool | None = None
    speculation_disable_by_batch_size: int | None = None
    max_num_batched_tokens: int | None = None
    cache_model: bool | None = None
    merge_adapter: bool | None = None
    compute_spec: ComputeConfig | None = None
    quantization: str | None = None
    accelerator: str | None = None
    scaling_policy: PolicyConfig | None = None
    max_queue_length: int | None = None
    routing: Literal["prefix", "least-loaded", "random"] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeploymentConfig:
        """From the stored (snake_case) JSON; null and unknown keys are left out."""
        values = {k: v for k, v in data.items() if k in _CONFIG_FIELDS and v is not None}
        for name in ("custom_args", "preloaded_adapters"):
            if name in values:
                values[name] = tuple(str(a) for a in values[name])
        if "compute_spec" in values:
            values["compute_spec"] = ComputeConfig.from_dict(values["compute_spec"])
        if "scaling_policy" in values:
            values["scaling_policy"] = PolicyConfig.from_dict(values["scaling_policy"])
        return cls(**values)

    @classmethod
    def from_update(cls, update: ConfigUpdate) -> DeploymentConfig:
        """The fields a client set in a create or update body."""
        return cls.from_dict(set_fields(update))

    def to_dict(self) -> dict[str, Any]:
        """The stored shape: set fields only, snake_case, lists and nested objects as JSON."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, ComputeConfig | PolicyConfig):
                value = value.to_dict()
            out[f.name] = value
        return out

    def merged(self, update: ConfigUpdate) -> DeploymentConfig:
        """This config with the fields `update` sets ("null means unchanged")."""
        return DeploymentConfig.from_dict({**self.to_dict(), **set_fields(update)})

    def changed_fields(self, other: DeploymentConfig) -> set[str]:
        """Names of the fields whose value differs between the two configs."""
        return {f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)}


_CONFIG_FIELDS = frozenset(f.name for f in fields(DeploymentConfig))


Wire = TypeVar("Wire", bound=WireModel)


def parse_object(model: type[Wire], body: Any, *, camel_case: bool = False) -> Wire:
    """Validate a JSON object from the edge. InvalidSpec names the first offending value
    by its path; with `camel_case` a top-level field is named in camelCase, whichever
    spelling came in (otherwise as it came)."""
    if not isinstance(body, dict):
        raise InvalidSpec("body", "must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _first_error(exc, model if camel_case else None) from None


def _first_error(exc: ValidationError, camel: type[WireModel] | None) -> InvalidSpec:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldValueError):
        loc += cause.path
    known = camel.model_fields.get(loc[0]) if camel is not None and loc else None
    if known is not None and known.alias:
        loc[0] = known.alias
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "field required"
    return InvalidSpec(".".join(loc) or "body", msg)


def valid_name(name: str) -> bool:
    """A deployment name or tenant code: 1-63 of [a-z0-9-], matched whole, not reserved."""
    return NAME_RE.fullmatch(name) is not None and name not in RESERVED_NAMES


def validate_name(name: str, field: str = "name") -> str:
    if name in RESERVED_NAMES:
        raise InvalidSpec(field, f"{name!r} is reserved: the API uses it in its paths")
    if not valid_name(name):
        raise InvalidSpec(
            field,
            f"{name!r} is not a valid name: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit",
        )
    return name


def set_fields(config: ConfigUpdate) -> dict[str, Any]:
    """The fields a client set (not null), snake_case; nested values are kept whole."""
    return {k: v for k, v in config.model_dump().items() if v is not None}


def parse_create(body: Any) -> CreateRequest:
    req = parse_object(CreateRequest, body)
    validate_name(req.name)
    if req.config.base_model is None:
        raise InvalidSpec("config.baseModel", "field required")
    config = DeploymentConfig.from_update(req.config)
    check_bounds(config, "config")
    check_context(config, "config")
    return req


def parse_update(body: Any) -> UpdateRequest:
    return parse_object(UpdateRequest, body)


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def effective_scaling(config: DeploymentConfig) -> dict[str, int]:
    """The scaling fields with their defaults applied, by field name."""
    return {
        "min_replicas": _or(config.min_replicas, DEFAULT_MIN_REPLICAS),
        "max_replicas": _or(config.max_replicas, DEFAULT_MAX_REPLICAS),
        "cooldown_time": _or(config.cooldown_time, DEFAULT_COOLDOWN_S),
        "scale_up_threshold": _or(config.scale_up_threshold, DEFAULT_SCALE_UP_THRESHOLD),
    }


def check_bounds(config: DeploymentConfig, prefix: str) -> None:
    scaling = effective_scaling(config)
    low, high = scaling["min_replicas"], scaling["max_replicas"]
    if low > high:
        raise InvalidSpec(f"{prefix}.minReplicas", f"must not exceed maxReplicas ({low} > {high})")


def check_context(config: DeploymentConfig, prefix: str) -> None:
    """`maxTotalTokens` within the base model's context window: an engine told more
    allocates a KV cache for tokens the model cannot attend to (llama.cpp's `--n_ctx`)."""
    total = config.max_total_tokens
    model = MODELS.get(str(config.base_model))
    if total is not None and model is not None and total > model.context_window:
        raise InvalidSpec(
            f"{prefix}.maxTotalTokens",
            f"must not exceed the context window of {model.name} "
            f"({model.context_window} tokens), not {total}",
        )


def merge_config(stored: DeploymentConfig, update: ConfigUpdate) -> DeploymentConfig:
    """Apply an update with "null means unchanged"; re-check cross-field bounds."""
    merged = stored.merged(update)
    check_bounds(merged, "config")
    check_context(merged, "config")
    return merged


# Fields whose change needs new replicas (a rolling replacement); the rest apply live.
ENGINE_FIELDS = frozenset(
    {
        "base_model",
        "custom_args",
        "hf_token",
        "max_total_tokens",
        "lorax_image_tag",
        "preloaded_adapters",
        "speculator",
        "prefix_caching",
        "backend",
        "disable_adapters",
        "chunked_prefill",
        "speculation_disable_by_batch_size",
        "max_num_batched_tokens",
        "cache_model",
        "merge_adapter",
        "compute_spec",
        "quantization",
        "accelerator",
    }
)


@dataclass(frozen=True)
class DeploymentSpec:
    """A stored deployment as inner code sees it: validated, defaults applied."""

    tenant: str
    name: str
    uuid: str
    description: str | None
    config: DeploymentConfig
    status: str
    revision: int  # bumped by every update; events are scoped to it
    created_at: float
    updated_at: float
    # The revision at which engine fields last changed: replicas started at an earlier
    # revision run old engine settings and are replaced by a rolling update.
    engine_revision: int = 1

    @property
    def key(self) -> str:
        return f"{self.tenant}/{self.name}"

    @property
    def min_replicas(self) -> int:
        return _or(self.config.min_replicas, DEFAULT_MIN_REPLICAS)

    @property
    def max_replicas(self) -> int:
        return _or(self.config.max_replicas, DEFAULT_MAX_REPLICAS)

    @property
    def cooldown_s(self) -> int:
        return _or(self.config.cooldown_time, DEFAULT_COOLDOWN_S)

    @property
    def scale_up_threshold(self) -> int:
        return _or(self.config.scale_up_threshold, DEFAULT_SCALE_UP_THRESHOLD)

    @property
    def scaling_policy(self) -> tuple[str, dict[str, float]]:
        policy = self.config.scaling_policy or PolicyConfig()
        return policy.name, dict(policy.params or {})

    @property
    def base_model(self) -> str:
        if self.config.base_model is None:
            raise KeyError("base_model")
        return self.config.base_model

    @property
    def max_total_tokens(self) -> int:
        """Prompt plus generated tokens one request may reach: the deployment's
        `maxTotalTokens`, else its model's context window."""
        return self.config.max_total_tokens or MODELS[self.base_model].context_window

    @property
    def accelerator(self) -> str:
        if self.config.accelerator:
            return self.config.accelerator
        compute = self.config.compute_spec
        if compute:
            from wakegate.catalog import accelerator_for_sku

            acc = accelerator_for_sku(compute.sku)
            if acc:
                return acc
        return MODELS[self.base_model].default_accelerator

    def to_record(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "name": self.name,
            "uuid": self.uuid,
            "description": self.description,
            "config": self.config.to_dict(),
            "status": self.status,
            "revision": self.revision,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "engine_revision": self.engine_revision,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> DeploymentSpec:
        return cls(**{**rec, "config": DeploymentConfig.from_dict(rec["config"])})

    def to_wire(self, current_replicas: int) -> dict[str, Any]:
        """The SDK's `Deployment` object (wire-protocol spec, section 4.1)."""
        cfg = {**self.config.to_dict(), **effective_scaling(self.config)}
        wire_cfg = {
            CONFIG_KEYS[k]: v for k, v in cfg.items() if k not in SECRET_FIELDS and k in CONFIG_KEYS
        }
        return {
            "name": self.name,
            "uuid": self.uuid,
            "description": self.description,
            "type": "dedicated",
            "status": self.status,
            "model": {
                "name": self.base_model,
                "maxInputLength": MODELS[self.base_model].context_window,
            },
            "accelerator": {"id": self.accelerator},
            "quantization": self.config.quantization,
            "currentReplicas": current_replicas,
            "config": wire_cfg,
            "usesGuaranteedCapacity": bool(self.config.uses_guaranteed_capacity),
        }
