"""The OpenAPI 3.1 document of the gateway's public API, served at `GET /openapi.json`.

Request bodies are the JSON schemas of the very pydantic models the handlers validate with
(`CreateRequest`, `GenerateRequest`, the OpenAI requests, `QuotaOverride`), so the document
cannot drift from what is accepted. Responses are described by the models below, written for
the document after what the handlers return; the fuzz run (tests/test_fuzz.py) checks every
response of a real stack against them. Every route `create_app` registers has its operation
here, and a test holds the two sets equal.

Errors come in the shape of the route's family (router/errors.py): control plane and admin
`{"error", "field", ...}`, LoRAX `{"error", "error_type"}`, OpenAI `{"error": {...}}`, the
request-log download `{"error": {"message", "field"}}`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from router.lorax_api import NOT_SERVED
from router.openai_api import (
    ChatRequest,
    CompletionRequest,
    GatewayChatRequest,
    GatewayCompletionRequest,
)
from router.params import GenerateRequest
from router.pipeline import DEPLOY_URL, PRIORITY_HEADER
from router.pool import ACCELERATORS_PATH
from router.ui import ASSETS, FILE_PATH, HEALTH_PATH, PAGE_PATH
from wakegate.health import MAX_WINDOW_S, MIN_WINDOW_S, DeploymentHealth
from wakegate.pool import PoolView
from wakegate.quotas import QuotaOverride
from wakegate.spec import RECOMMENDED_CONFIG, ConfigUpdate, CreateRequest, UpdateRequest
from wakegate.status import STATUS_PATH, Overview
from wakegate.store import MAX_PRIORITY

OPENAPI_PATH = "/openapi.json"
REF_TEMPLATE = "#/components/schemas/{model}"


class _Doc(BaseModel):
    # Clients ignore keys they do not know (wire-protocol spec 2.2): responses may grow.
    model_config = ConfigDict(extra="allow")


# --- error bodies -----------------------------------------------------------------------------


class ControlError(_Doc):
    """Control plane and admin API: the message and the JSON path of the offending value."""

    error: str
    field: str | None = None
    quota: str | None = Field(default=None, description="a refused quota's wire name (403)")
    limit: int | None = Field(default=None, description="a refused quota's value (403)")


class LoraxError(_Doc):
    """LoRAX / TGI routes, as LoRAX answers them."""

    error: str
    error_type: str
    field: str | None = None


class OpenAIErrorDetail(_Doc):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(_Doc):
    """OpenAI routes, as the OpenAI API answers them."""

    error: OpenAIErrorDetail


class LogsErrorDetail(_Doc):
    message: str
    field: str | None = None


class LogsError(_Doc):
    """The request-log download, in the shape the SDK's `download_request_logs` reads."""

    error: LogsErrorDetail


# --- control plane ----------------------------------------------------------------------------


class Subscription(_Doc):
    id: int
    tier: str
    isTrial: bool
    expiration: str | None
    daysRemainingInPlan: int | None
    active: bool


class TenantView(_Doc):
    name: str
    shortCode: str
    subscription: Subscription


class CurrentUser(_Doc):
    id: int
    username: str
    uuid: str
    tenant: TenantView


class ModelView(_Doc):
    name: str
    maxInputLength: int


class AcceleratorView(_Doc):
    id: str


class WaitingForCapacity(_Doc):
    """wakegate extension: why a deployment runs fewer replicas than it wants."""

    reason: str
    since: float | None = None
    wantedReplicas: int


class PrivateEndpoint(_Doc):
    """wakegate extension: where a deployment with `directIngress: true` is served (the
    gateway's private listener, and only there)."""

    servingUrl: str = Field(
        description="the serving base: the SDK's serving_url_override, an OpenAI base URL with /v1"
    )
    url: str = Field(description="the deployment's URL on it (lorax-client, /generate)")


class Deployment(_Doc):
    """The SDK's `Deployment` object (wire-protocol spec 4.1); `hfToken` is never shown."""

    name: str
    uuid: str
    description: str | None
    type: Literal["dedicated"]
    status: Literal["ready", "updating", "failed"]
    model: ModelView
    accelerator: AcceleratorView
    quantization: str | None
    currentReplicas: int
    config: ConfigUpdate = Field(
        description="the fields set, with the scaling fields' defaults applied"
    )
    usesGuaranteedCapacity: bool
    waitingForCapacity: WaitingForCapacity | None
    privateEndpoint: PrivateEndpoint | None = Field(
        description="with directIngress: its private endpoint, the only place it is served"
    )


class PoolResponse(_Doc):
    data: PoolView


class DeploymentResponse(_Doc):
    data: Deployment


class DeploymentList(_Doc):
    data: list[Deployment]


class Deleted(_Doc):
    """An empty object."""


class ComputeEvent(_Doc):
    eventType: str
    timestamp: str
    revision: int
    message: str


class DeploymentEvents(_Doc):
    """The SDK's readiness poll: events of the deployment's current revision."""

    name: str
    deploymentStatus: Literal["ready", "updating", "failed", "deleted"]
    resourceActiveTime: int | None = None
    ComputeEvents: list[ComputeEvent]


# --- admin ------------------------------------------------------------------------------------


class QuotaValues(_Doc):
    """Quotas by wire name; null is unlimited."""

    maxDeploymentsPerTenant: int | None
    maxReplicasPerDeployment: int | None
    maxReplicasPerTenant: int | None
    maxGpusPerTenant: int | None
    guaranteedGpusPerTenant: int | None = Field(
        description="GPUs of reserved capacity granted (usesGuaranteedCapacity); null: all"
    )
    maxQueueLengthPerDeployment: int | None
    maxAsyncJobsPerTenant: int | None
    maxAsyncBytesPerTenant: int | None
    maxRequestLogBytesPerDeployment: int | None


class AllQuotas(_Doc):
    defaults: QuotaValues
    overrides: dict[str, QuotaOverride]


class TenantQuotas(_Doc):
    tenant: str
    quotas: QuotaValues
    override: QuotaOverride | None
    defaults: QuotaValues
    deployments: int
    asyncJobs: int
    asyncBytes: int


# --- data plane -------------------------------------------------------------------------------


class TokenView(_Doc):
    id: int
    text: str
    logprob: float
    special: bool


class Details(_Doc):
    finish_reason: Literal["length", "eos_token", "stop_sequence"]
    prompt_tokens: int
    generated_tokens: int
    seed: int | None
    prefill: list[TokenView] | None = None
    tokens: list[TokenView] | None = None


class GenerateResponse(_Doc):
    generated_text: str
    details: Details | None = Field(default=None, description="with parameters.details")


class AsyncAccepted(_Doc):
    id: str
    status: Literal["queued"]
    url: str


class AsyncJob(_Doc):
    """An async request: `result` once done, `error` once failed."""

    id: str
    status: Literal["queued", "running", "done", "failed", "rejected"]
    attempts: int | None = None
    priority: int | None = None
    created: float | None = None
    finished: float | None = None
    replica: str | None = None
    result: GenerateResponse | None = None
    error: str | None = None


class ModelEntry(_Doc):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Doc):
    object: Literal["list"]
    data: list[ModelEntry]


class Usage(_Doc):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(_Doc):
    index: int
    finish_reason: Literal["stop", "length"]
    text: str
    logprobs: None


class Completion(_Doc):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ChatMessage(_Doc):
    role: Literal["assistant"]
    content: str


class ChatChoice(_Doc):
    index: int
    finish_reason: Literal["stop", "length"]
    message: ChatMessage


class ChatCompletion(_Doc):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class LoraxStreamEvent(_Doc):
    """One event of a LoRAX stream: a token; the last one also carries the text and details."""

    token: TokenView
    generated_text: str | None
    details: Details | None


class LoraxStreamError(_Doc):
    """An error after the 200 was sent, as the stream's last event."""

    error: str
    error_type: str


class CompletionDelta(_Doc):
    index: int
    finish_reason: Literal["stop", "length"] | None
    text: str
    logprobs: None


class CompletionChunk(_Doc):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionDelta]
    usage: Usage | None = Field(default=None, description="with stream_options.include_usage")


class ChatDelta(_Doc):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Doc):
    index: int
    finish_reason: Literal["stop", "length"] | None
    delta: ChatDelta


class ChatCompletionChunk(_Doc):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = Field(default=None, description="with stream_options.include_usage")


class RequestLogEntry(_Doc):
    """One request of a deployment's request log (a line of the download)."""

    time: str
    api: str
    stream: bool
    prompt: str | None
    messages: list[dict[str, str]] | None
    parameters: dict[str, Any]
    adapter: str | None
    output: str
    finish_reason: str | None
    prompt_tokens: int | None
    generated_tokens: int | None
    status: int
    error: str | None
    replica: str | None
    queue_wait_s: float | None
    ttft_s: float | None
    duration_s: float
    attempts: int | None = Field(default=None, description="async requests: runs it took")


class MetricSample(_Doc):
    name: str
    labels: dict[str, str]
    value: float


class DeploymentMetrics(_Doc):
    """A deployment's series on the gateway that answers (`Accept: application/json`)."""

    deployment: str
    samples: list[MetricSample]


class Health(_Doc):
    status: Literal["ok"]
    gateway: str


# --- operations -------------------------------------------------------------------------------

Family = Literal["control", "lorax", "openai", "logs"]
ERROR_MODELS: dict[Family, type[BaseModel]] = {
    "control": ControlError,
    "lorax": LoraxError,
    "openai": OpenAIError,
    "logs": LogsError,
}
# What each status means, whichever route answers it.
STATUS_TEXT = {
    400: "bad input (malformed JSON, a value out of bounds, an accelerator the pool does not "
    "have); the body names the field",
    401: "missing or invalid API token",
    403: "refused: a quota, or a tenant's token on an admin route",
    404: "no such deployment (or adapter, model, async request) for this token, or no such "
    "file of the status page",
    405: "method not allowed",
    408: "the request body did not arrive within the gateway's deadline (body_timeout_s)",
    409: "a deployment of that name exists, or is being deleted, or it changed meanwhile "
    "(field revision: read it again and retry)",
    413: "request body too large (an async request: at most max_async_body_bytes, 256 KiB by "
    "default)",
    422: "the request is invalid for this deployment or engine; the body names the field",
    424: "the deployment failed (its events say why), or it needs an accelerator the pool "
    "does not have at all (the message says what the pool has)",
    429: "the deployment's queue is full, or too many failed authentications from this "
    "address: retry after Retry-After seconds; or the tenant is at an async quota "
    "(maxAsyncJobsPerTenant, maxAsyncBytesPerTenant: the message names it)",
    502: "the replica failed the request",
    503: "temporarily unavailable (Redis unreachable or full, or nearly full for async "
    "requests; the replica went away): retry after Retry-After seconds",
    504: "no replica became available within the queue timeout",
}
STREAM = "text/event-stream"
NDJSON = "application/x-ndjson"
JSON = "application/json"


@dataclass(frozen=True)
class Events:
    """A server-sent event stream: each event's data is the JSON of one of `payloads`, or
    `done` (OpenAI's `[DONE]`) as the last."""

    payloads: tuple[type[BaseModel], ...]
    done: bool = False


@dataclass(frozen=True)
class Lines:
    """Newline-delimited JSON, one `item` per line."""

    item: type[BaseModel]


# Schema sources: a model, ("array", model), a stream, or a JSON schema as is.
Source = type[BaseModel] | tuple[str, type[BaseModel]] | Events | Lines | dict[str, Any]


@dataclass(frozen=True)
class Reply:
    description: str
    content: dict[str, Source] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # name -> description


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    family: Family
    ok: dict[int, Reply]
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | None = None
    auth: Literal["tenant", "admin", "none"] = "tenant"
    query: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> schema
    priority_header: bool = False


def _json(source: Source, description: str) -> Reply:
    return Reply(description, {JSON: source})


_TEXT = {"type": "string"}
_CONTROL_ERRORS = (401, 408, 413, 429, 503)
_DATA_ERRORS = (401, 404, 424, 429, 503)
_GENERATE_ERRORS = (*_DATA_ERRORS, 400, 408, 413, 422, 502, 504)
_LORAX_EVENTS = Events((LoraxStreamEvent, LoraxStreamError))
_COMPLETION_EVENTS = Events((CompletionChunk, OpenAIError), done=True)
_CHAT_EVENTS = Events((ChatCompletionChunk, OpenAIError), done=True)
_STREAM_REPLY = Reply(
    "server-sent events, one per token, the last with the text and details; a failure "
    "after the 200 is an error event",
    {STREAM: _LORAX_EVENTS},
)
_TIME = {
    "type": "string",
    "description": "ISO 8601 (2026-11-28T10:00:00Z; without an offset, UTC) or seconds since "
    "the epoch",
}
_ZIP = {"type": "string", "contentMediaType": "application/zip"}

OPERATIONS: tuple[Op, ...] = (
    Op("get", "/healthz", "health", "Liveness: the gateway and its Redis", "operations",
       "control", {200: _json(Health, "healthy")}, (503,), auth="none"),
    # Operators only: the metrics token (`metrics_token_file`) or an admin token opens it.
    Op("get", "/metrics", "metrics", "Prometheus metrics of this gateway (operators only)",
       "operations", "control",
       {200: Reply("Prometheus text exposition", {"text/plain": _TEXT})}, (401, 403, 429, 503),
       auth="admin"),
    Op("get", OPENAPI_PATH, "openapi", "This document", "operations", "control",
       {200: _json({"type": "object"}, "the OpenAPI 3.1 document")}, auth="none"),
    # control plane
    Op("get", "/users/current", "currentUser", "The token's user and tenant", "control",
       "control", {200: _json(CurrentUser, "the user")}, (401, 503)),
    Op("post", "/v2/deployments", "createDeployment", "Create a deployment", "control",
       "control", {200: _json(DeploymentResponse, "created (or an identical repeat)")},
       (*_CONTROL_ERRORS, 400, 403, 409), body=CreateRequest),
    Op("get", "/v2/deployments", "listDeployments", "The tenant's deployments", "control",
       "control", {200: _json(DeploymentList, "the deployments")}, (401, 400, 503),
       query={"type": {"type": "string", "description":
                       "serverless, dedicated, shared or private (any case)"}}),
    Op("get", f"/v2/deployments/{RECOMMENDED_CONFIG}", "recommendedConfig",
       "A DeploymentConfig for a base model: its engine's accelerator and context window, "
       "scale-to-zero defaults (the SDK's get_recommended_config)", "control", "control",
       {200: _json(ConfigUpdate, "the config, as create takes it")}, (401, 400, 503),
       query={"baseModel": {"type": "string", "description": "required: a catalogue model"},
              "accelerator": {"type": "string"}, "quantization": {"type": "string"}}),
    Op("get", "/v2/deployments/{name}", "getDeployment", "One deployment", "control",
       "control", {200: _json(DeploymentResponse, "the deployment")}, (401, 400, 404, 503)),
    Op("put", "/v2/deployments/{name}", "updateDeployment",
       "Update a deployment (null or absent: unchanged)", "control", "control",
       {200: _json(DeploymentResponse, "updated")},
       (*_CONTROL_ERRORS, 400, 403, 404, 409), body=UpdateRequest),
    Op("delete", "/v2/deployments/{name}", "deleteDeployment", "Delete a deployment",
       "control", "control", {200: _json(Deleted, "deleted")}, (401, 400, 404, 503)),
    Op("get", "/llms/{name}/events", "deploymentEvents",
       "Events of the deployment's current revision (the SDK's readiness poll)", "control",
       "control", {200: _json(DeploymentEvents, "the events")}, (401, 400, 503)),
    Op("get", "/v2/deployments/{name}/requests", "requestLog",
       "The deployment's request log for [start, end], oldest first", "control", "control",
       {200: Reply("one JSON object per line", {NDJSON: Lines(RequestLogEntry)})},
       (401, 400, 404, 503),
       query={"start": _TIME, "end": _TIME}),
    Op("get", "/v2/deployments/{name}/request-logs", "downloadRequestLogs",
       "The request log for [from, to) as a zip: one JSON Lines file per UTC hour, then "
       "manifest.json (the SDK's download_request_logs)", "control", "logs",
       {200: Reply("a zip archive", {"application/zip": _ZIP})}, (401, 400, 404, 503),
       query={"from": _TIME, "to": _TIME,
              "adapterId": {"type": "string", "description": "only this adapter's requests"}}),
    Op("get", HEALTH_PATH, "deploymentHealth",
       "The deployment's health over a window: requests/s, tokens/s, time to first token "
       "p50/p95, queue wait, cold starts, replicas by state", "status", "control",
       {200: _json(DeploymentHealth, "the health view, oldest point first")},
       (401, 400, 404, 429, 503),
       query={"window": {"type": "string", "pattern": r"^\d{1,7}[smh]?$",
                         "description": f"seconds (900) or a duration (15m, 1h), within "
                                        f"[{MIN_WINDOW_S}, {MAX_WINDOW_S}] s; default 15 min"}}),
    Op("get", ACCELERATORS_PATH, "listAccelerators",
       "The pool's accelerators: SKUs in all and free, and the models it runs", "control",
       "control", {200: _json(PoolResponse, "the pool as the scaler last reported it")},
       (401, 429, 503)),
    # status overview (wakegate extension) and the page that shows it
    Op("get", STATUS_PATH, "status",
       "The tenant's deployments: replicas, load, scaling decisions, events, the last hour",
       "status", "control", {200: _json(Overview, "the overview")}, (401, 429, 503)),
    Op("get", PAGE_PATH, "statusPage", "The status page (it asks for a token)", "status",
       "control", {200: Reply("the page", {"text/html": _TEXT})}, auth="none"),
    Op("get", FILE_PATH, "statusPageFile",
       f"A file of the status page: {', '.join(sorted(ASSETS))}", "status", "control",
       {200: Reply("the file", {t: _TEXT for t in sorted(set(ASSETS.values()))})}, (404,),
       auth="none"),
    # admin
    Op("get", "/admin/v1/quotas", "allQuotas", "Quota defaults and every override", "admin",
       "control", {200: _json(AllQuotas, "defaults and overrides")}, (401, 403, 503),
       auth="admin"),
    Op("get", "/admin/v1/tenants/{tenant}/quotas", "getTenantQuotas",
       "A tenant's effective quotas, override and deployment count", "admin", "control",
       {200: _json(TenantQuotas, "the tenant's quotas")}, (401, 400, 403, 503), auth="admin"),
    Op("put", "/admin/v1/tenants/{tenant}/quotas", "setTenantQuotas",
       "Set fields of a tenant's override (null: unlimited; absent: kept)", "admin",
       "control", {200: _json(TenantQuotas, "the tenant's quotas")},
       (*_CONTROL_ERRORS, 400, 403), body=QuotaOverride, auth="admin"),
    Op("delete", "/admin/v1/tenants/{tenant}/quotas", "deleteTenantQuotas",
       "Remove a tenant's override", "admin", "control",
       {200: _json(TenantQuotas, "the tenant's quotas")}, (401, 400, 403, 503), auth="admin"),
    # LoRAX / TGI
    Op("post", DEPLOY_URL, "generateSdk",
       "Generate (the SDK's URL): a one-element array, or events with stream: true", "lorax",
       "lorax",
       {200: Reply("the generation", {JSON: ("array", GenerateResponse), STREAM: _LORAX_EVENTS})},
       _GENERATE_ERRORS, body=GenerateRequest, priority_header=True),
    Op("post", DEPLOY_URL + "/generate", "generate", "Generate (LoRAX's /generate)", "lorax",
       "lorax", {200: _json(GenerateResponse, "the generation")}, _GENERATE_ERRORS,
       body=GenerateRequest, priority_header=True),
    Op("post", DEPLOY_URL + "/generate_stream", "generateStream",
       "Generate as server-sent events (LoRAX's /generate_stream)", "lorax", "lorax",
       {200: _STREAM_REPLY}, _GENERATE_ERRORS, body=GenerateRequest, priority_header=True),
    Op("post", DEPLOY_URL + "/async", "submitAsync",
       "Queue a generate request; fetch its result later", "lorax", "lorax",
       {202: Reply("queued", {JSON: AsyncAccepted}, {"Location": "the request's URL"})},
       (*_DATA_ERRORS, 400, 408, 413, 422), body=GenerateRequest, priority_header=True),
    Op("get", DEPLOY_URL + "/async/{job_id}", "asyncStatus", "An async request's status",
       "lorax", "lorax", {200: _json(AsyncJob, "the request")}, _DATA_ERRORS),
    Op("get", DEPLOY_URL + "/metrics", "deploymentMetrics",
       "The deployment's series on this gateway (LoRAX's /metrics)", "lorax", "lorax",
       {200: Reply("Prometheus text, or JSON with Accept: application/json",
                   {"text/plain": _TEXT, JSON: DeploymentMetrics})}, _DATA_ERRORS),
    *(Op("post", f"{DEPLOY_URL}/{route}", f"{route}Unsupported",
         f"LoRAX's /{route}: not served; 422 (error_type unsupported) says why", "lorax",
         "lorax", {}, (*_DATA_ERRORS, 422)) for route in NOT_SERVED),
    # OpenAI
    Op("get", DEPLOY_URL + "/v1/models", "listModels", "The deployment's model", "openai",
       "openai", {200: _json(ModelList, "the model")}, _DATA_ERRORS),
    Op("post", DEPLOY_URL + "/v1/completions", "createCompletion", "OpenAI completions",
       "openai", "openai",
       {200: Reply("the completion, or chunks with stream: true",
                   {JSON: Completion, STREAM: _COMPLETION_EVENTS})},
       _GENERATE_ERRORS, body=CompletionRequest, priority_header=True),
    Op("post", DEPLOY_URL + "/v1/chat/completions", "createChatCompletion",
       "OpenAI chat completions", "openai", "openai",
       {200: Reply("the completion, or chunks with stream: true",
                   {JSON: ChatCompletion, STREAM: _CHAT_EVENTS})},
       _GENERATE_ERRORS, body=ChatRequest, priority_header=True),
    # OpenAI, one base URL for the tenant's deployments: `model` names one (or one's adapter)
    Op("get", "/v1/models", "listGatewayModels",
       "The tenant's deployments and their adapters (deployment/adapter)", "openai", "openai",
       {200: _json(ModelList, "the models")}, (401, 429, 503)),
    Op("post", "/v1/completions", "createGatewayCompletion",
       "OpenAI completions on the deployment `model` names", "openai", "openai",
       {200: Reply("the completion, or chunks with stream: true",
                   {JSON: Completion, STREAM: _COMPLETION_EVENTS})},
       _GENERATE_ERRORS, body=GatewayCompletionRequest, priority_header=True),
    Op("post", "/v1/chat/completions", "createGatewayChatCompletion",
       "OpenAI chat completions on the deployment `model` names", "openai", "openai",
       {200: Reply("the completion, or chunks with stream: true",
                   {JSON: ChatCompletion, STREAM: _CHAT_EVENTS})},
       _GENERATE_ERRORS, body=GatewayChatRequest, priority_header=True),
)  # fmt: skip


def _models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = [*ERROR_MODELS.values()]
    for op in OPERATIONS:
        if op.body is not None:
            found.append(op.body)
        for reply in op.ok.values():
            for source in reply.content.values():
                if isinstance(source, tuple):
                    found.append(source[1])
                elif isinstance(source, Events):
                    found += source.payloads
                elif isinstance(source, Lines):
                    found.append(source.item)
                elif isinstance(source, type):
                    found.append(source)
    return list(dict.fromkeys(found))


def _schema(source: Source, refs: dict[type[BaseModel], dict[str, Any]]) -> dict[str, Any]:
    if isinstance(source, tuple):
        return {"type": "array", "items": refs[source[1]]}
    if isinstance(source, Events):
        # OpenAPI 3.1: the schema of an event stream describes one event (3.2's itemSchema).
        payload = {
            "type": "string",
            "contentMediaType": JSON,
            "contentSchema": {"anyOf": [refs[m] for m in source.payloads]},
        }
        data = {"anyOf": [payload, {"const": "[DONE]"}]} if source.done else payload
        return {
            "type": "object",
            "required": ["data"],
            "properties": {"event": {"type": "string"}, "id": {"type": "string"}, "data": data},
        }
    if isinstance(source, Lines):
        return {
            "type": "string",
            "description": "one JSON object per line (x-itemSchema)",
            "x-itemSchema": refs[source.item],
        }
    if isinstance(source, dict):
        return source
    return refs[source]


def _operation(op: Op, refs: dict[type[BaseModel], dict[str, Any]]) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", op.path)
    ]
    params += [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in op.query.items()
    ]
    if op.priority_header:
        params.append(
            {
                "name": PRIORITY_HEADER,
                "in": "header",
                "required": False,
                "description": "higher is served first (wakegate extension)",
                "schema": {"type": "integer", "minimum": -MAX_PRIORITY, "maximum": MAX_PRIORITY},
            }
        )
    responses: dict[str, Any] = {}
    for status, reply in op.ok.items():
        out: dict[str, Any] = {"description": reply.description}
        if reply.content:
            out["content"] = {
                media: {"schema": _schema(src, refs)} for media, src in reply.content.items()
            }
        if reply.headers:
            out["headers"] = {
                name: {"description": text, "schema": {"type": "string"}}
                for name, text in reply.headers.items()
            }
        responses[str(status)] = out
    error = {JSON: {"schema": refs[ERROR_MODELS[op.family]]}}
    for status in sorted(set(op.errors)):
        out = {"description": STATUS_TEXT[status], "content": error}
        if status in (429, 503):
            out["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
        responses[str(status)] = out
    doc: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
    }
    if params:
        doc["parameters"] = params
    if op.body is not None:
        doc["requestBody"] = {"required": True, "content": {JSON: {"schema": refs[op.body]}}}
    doc["security"] = {"none": [], "tenant": [{"tenantToken": []}],
                       "admin": [{"adminToken": []}]}[op.auth]  # fmt: skip
    return doc


def _bearer(description: str) -> dict[str, str]:
    return {"type": "http", "scheme": "bearer", "description": description}


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The whole document; built once per process (it depends on code only)."""
    models = _models()
    keys, defs = models_json_schema(
        [(m, "validation") for m in models], by_alias=True, ref_template=REF_TEMPLATE
    )
    refs = {m: keys[(m, "validation")] for m in models}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wakegate",
            "version": "1",
            "description": (
                "Serverless LLM deployments on your own GPUs: the Predibase-compatible control "
                "plane, LoRAX and OpenAI data planes, and the operator API. The gateway's "
                "private listener (direct ingress) serves the data-plane operations only, for "
                "every deployment; the public one serves all operations, but not the data "
                "plane of deployments with directIngress (404, as for no such deployment)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "tenantToken": _bearer("a tenant's API token"),
                "adminToken": _bearer("an operator's admin token (/admin/v1/ only)"),
            },
        },
    }
