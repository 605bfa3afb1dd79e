"""Data plane, OpenAI flavour: `.../v1/completions`, `.../v1/chat/completions`, `.../v1/models`.

Two base URLs serve them: each deployment's own (`DEPLOY_URL/v1`, where `model` names the
base model or an adapter) and the gateway's (`/v1`, one base URL for every deployment of the
token's tenant, where `model` is `deployment` or `deployment/adapter`). Requests of both become
the same neutral generate request the LoRAX routes use (chat keeps its messages: the engine
applies the model's own chat template), so queueing, waking and routing are shared. OpenAI
sampling semantics are kept: temperature defaults to 1.
"""

from __future__ import annotations

import json
import random
import time
from typing import Annotated, Any, Literal, TypeVar

import orjson
from aiohttp import web
from aiohttp_sse import EventSourceResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from router.context import STORE
from router.control import read_json
from router.dialects import Finish, Token
from router.errors import ApiError
from router.middlewares import on_private_listener, tenant_of
from router.params import MAX_SEED, GenerateRequest, Parameters, TokenCount
from router.pipeline import (
    DEPLOY_URL,
    check_length,
    lookup,
    priority_of,
    resolve,
    serve_stream,
    serve_unary,
    tracked,
)
from wakegate.spec import DeploymentSpec

routes = web.RouteTableDef()


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients add fields faster than servers learn
    model: StrictStr = ""
    max_tokens: TokenCount | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: StrictStr | list[StrictStr] | None = None
    # The neutral request's seed is LoRAX's: not negative.
    seed: Annotated[StrictInt, Field(ge=0, le=MAX_SEED)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=1)] = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    priority: Annotated[StrictInt, Field(ge=-1000, le=1000)] | None = None  # extension


class CompletionRequest(_Common):
    prompt: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=1)]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: StrictStr


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[ContentPart]

    def flat(self) -> dict[str, str]:
        text = (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(_Common):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: TokenCount | None = None
    tools: list[Any] | None = None


# On the gateway's base URL `model` picks the deployment: `deployment` (its base model) or
# `deployment/adapter`. Deployment names hold no `/`, adapter ids may (`my-repo/1`): the
# deployment is what comes before the first `/`.
GatewayModel = Annotated[
    StrictStr,
    Field(
        min_length=1,
        description="a deployment of the token's tenant, or deployment/adapter for one of "
        "its preloadedAdapters",
    ),
]


class GatewayCompletionRequest(CompletionRequest):
    """`POST /v1/completions`: a deployment's completion request, `model` naming it."""

    model: GatewayModel


class GatewayChatRequest(ChatRequest):
    """`POST /v1/chat/completions`: a deployment's chat request, `model` naming it."""

    model: GatewayModel


T = TypeVar("T", bound=BaseModel)


def _parse(model: type[T], body: Any) -> T:
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", field="body")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        msg = err["msg"].removeprefix("Value error, ")
        raise ApiError(
            400, f"{field}: {msg}", field=field, error_type="invalid_request_error"
        ) from None


def _adapter(spec: DeploymentSpec, model: str) -> str | None:
    """`model` names the base model (or the deployment, or nothing) or an adapter."""
    if model in ("", spec.base_model, spec.name):
        return None
    if model in _adapters(spec):
        return model
    raise ApiError(
        404,
        f"model {model!r} not found: this deployment serves {spec.base_model!r} and "
        "the adapters in its preloadedAdapters",
        field="model",
        error_type="invalid_request_error",
    )


def _adapters(spec: DeploymentSpec) -> list[str]:
    return list(spec.config.preloaded_adapters or ())


async def _target(request: web.Request, model: str) -> tuple[DeploymentSpec, str | None]:
    """The deployment and adapter a gateway-wide `model` names (see GatewayModel)."""
    name, slash, adapter = model.partition("/")
    try:
        spec = await lookup(request, tenant_of(request)["code"], name)
    except ApiError as err:
        if err.status != 404:
            raise
        raise ApiError(404, f"model {model!r} not found: no deployment {name!r}", field="model",
                       error_type="invalid_request_error") from None  # fmt: skip
    if not slash:
        return spec, None
    if adapter not in _adapters(spec):
        raise ApiError(
            404,
            f"model {model!r} not found: deployment {spec.name} serves its base model (model "
            f"{spec.name!r}) and the adapters in its preloadedAdapters (model "
            f"'{spec.name}/<adapter>')",
            field="model",
            error_type="invalid_request_error",
        )
    return spec, adapter


def _parameters(
    spec: DeploymentSpec, body: _Common, max_tokens: int | None, adapter: str | None
) -> Parameters:
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    temperature = 1.0 if body.temperature is None else body.temperature
    return Parameters(
        adapter_id=adapter,
        max_new_tokens=max_tokens,
        # OpenAI samples unless told otherwise: temperature 1 by default, 0 means greedy.
        do_sample=temperature > 0,
        temperature=temperature,
        top_p=body.top_p if body.top_p is not None and body.top_p < 1 else None,
        stop=stop or None,
        seed=body.seed,
        details=False,  # the non-streaming engine call reports token usage
        priority=body.priority,
    )


def _finish_reason(finish: Finish) -> str:
    return "length" if finish.reason == "length" else "stop"


def _usage(finish: Finish) -> dict[str, int]:
    return {
        "prompt_tokens": finish.prompt_tokens,
        "completion_tokens": finish.generated_tokens,
        "total_tokens": finish.prompt_tokens + finish.generated_tokens,
    }


def _model_entry(spec: DeploymentSpec, ident: str) -> dict[str, Any]:
    return {"id": ident, "object": "model", "created": int(spec.created_at),
            "owned_by": spec.tenant}  # fmt: skip


@routes.get(DEPLOY_URL + "/v1/models")
async def models(request: web.Request) -> web.Response:
    spec = await resolve(request)
    return web.json_response({"object": "list", "data": [_model_entry(spec, spec.base_model)]})


# Deployments in these states serve requests (a failed one answers 424, a deleted one 404).
SERVING = frozenset({"ready", "updating"})


@routes.get("/v1/models")
async def gateway_models(request: web.Request) -> web.Response:
    """Every model the gateway's base URL serves the token's tenant: each deployment (its base
    model) and `deployment/adapter` for each adapter it preloads; on the public listener, not
    the deployments with direct ingress."""
    specs = await request.app[STORE].list_deployments(tenant_of(request)["code"])
    private = on_private_listener(request)
    data: list[dict[str, Any]] = []
    for spec in sorted(specs, key=lambda s: s.name):
        if spec.status not in SERVING or (spec.config.direct_ingress and not private):
            continue
        data.append(_model_entry(spec, spec.name))
        if not spec.config.disable_adapters:
            data += [_model_entry(spec, f"{spec.name}/{a}") for a in _adapters(spec)]
    return web.json_response({"object": "list", "data": data})


def _completion(
    spec: DeploymentSpec, body: CompletionRequest, adapter: str | None
) -> GenerateRequest:
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    check_length(spec, body.max_tokens, "max_tokens", 400, "invalid_request_error")
    params = _parameters(spec, body, body.max_tokens, adapter)
    return GenerateRequest(inputs=prompt or " ", parameters=params)


def _chat(spec: DeploymentSpec, body: ChatRequest, adapter: str | None) -> GenerateRequest:
    if body.tools:
        raise ApiError(400, "tools are not supported by this deployment", field="tools",
                       error_type="invalid_request_error")  # fmt: skip
    field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    max_tokens = body.max_completion_tokens or body.max_tokens
    check_length(spec, max_tokens, field, 400, "invalid_request_error")
    params = _parameters(spec, body, max_tokens, adapter)
    return GenerateRequest.model_construct(
        inputs="", parameters=params, stream=body.stream,
        messages=[m.flat() for m in body.messages],
    )  # fmt: skip


@routes.post(DEPLOY_URL + "/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    arrived = time.monotonic()
    spec = await resolve(request)
    body = _parse(CompletionRequest, await read_json(request))
    req = _completion(spec, body, _adapter(spec, body.model))
    return await _serve(request, spec, req, body, arrived, chat=False)


@routes.post(DEPLOY_URL + "/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    arrived = time.monotonic()
    spec = await resolve(request)
    body = _parse(ChatRequest, await read_json(request))
    req = _chat(spec, body, _adapter(spec, body.model))
    return await _serve(request, spec, req, body, arrived, chat=True)


@routes.post("/v1/completions")
async def gateway_completions(request: web.Request) -> web.StreamResponse:
    arrived = time.monotonic()
    body = _parse(GatewayCompletionRequest, await read_json(request))
    spec, adapter = await _target(request, body.model)
    return await _serve(request, spec, _completion(spec, body, adapter), body, arrived, False)


@routes.post("/v1/chat/completions")
async def gateway_chat_completions(request: web.Request) -> web.StreamResponse:
    arrived = time.monotonic()
    body = _parse(GatewayChatRequest, await read_json(request))
    spec, adapter = await _target(request, body.model)
    return await _serve(request, spec, _chat(spec, body, adapter), body, arrived, True)


async def _serve(
    request: web.Request,
    spec: DeploymentSpec,
    req: GenerateRequest,
    body: _Common,
    arrived: float,
    chat: bool,
) -> web.StreamResponse:
    priority = priority_of(request, req)
    model = body.model or spec.base_model
    prefix = "chatcmpl" if chat else "cmpl"
    # A response id, not a secret: no system call per request (uuid4 reads the OS's random).
    ident = f"{prefix}-{random.getrandbits(128):032x}"

    async def handle() -> web.StreamResponse:
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            renderer = OpenAIStream(ident, model, chat, include_usage)
            return await serve_stream(request, spec, req, priority, arrived, renderer)
        gen = await serve_unary(request, spec, req, priority, arrived)
        choice: dict[str, Any] = {"index": 0, "finish_reason": _finish_reason(gen.finish)}
        if chat:
            choice["message"] = {"role": "assistant", "content": gen.text}
        else:
            choice["text"] = gen.text
            choice["logprobs"] = None
        return web.json_response(dumps=_dumps, data={
            "id": ident,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": _usage(gen.finish),
        })  # fmt: skip

    return await tracked(request, spec, arrived, handle())


def _dumps(obj: Any) -> str:
    """A response body's JSON through orjson (json.dumps was a few percent of a request)."""
    return orjson.dumps(obj).decode()


# Stands for a token's text while a chunk's JSON is cut around it.
_MARK = "\x00wakegate-text\x00"


class OpenAIStream:
    """OpenAI chunks: one per token, the finish reason on the last, usage on request, then
    `[DONE]` (the OpenAI client stops there)."""

    def __init__(self, ident: str, model: str, chat: bool, include_usage: bool) -> None:
        self.ident, self.model, self.chat, self.include_usage = ident, model, chat, include_usage
        self.created = int(time.time())
        self.started = False
        # A token's chunk is this JSON around the token's text (one dict and one dumps per
        # token cost a tenth of a streaming gateway's CPU); made once the first chunk is out.
        self._around: tuple[str, str] | None = None

    def _chunk(self, text: str | None, finish: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if self.chat:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            if not self.started:
                delta["role"] = "assistant"
                self.started = True
            choice["delta"] = delta
        else:
            choice["text"] = text or ""
            choice["logprobs"] = None
        return {
            "id": self.ident,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def tokens(self, tokens: list[Token]) -> list[Any]:
        events: list[Any] = []
        for token in tokens:
            if token.special:  # the end-of-sequence token: OpenAI streams carry text only
                continue
            if self._around is None:
                events.append(self._chunk(token.text, None))
                head, _, tail = json.dumps(
                    self._chunk(_MARK, None), separators=(",", ":")
                ).partition(json.dumps(_MARK))
                self._around = head, tail
                continue
            head, tail = self._around
            events.append(head + orjson.dumps(token.text).decode() + tail)
        return events

    def finish(self, finish: Finish, text: str) -> list[Any]:
        events = [self._chunk(None, _finish_reason(finish))]
        if self.include_usage:
            chunk = self._chunk(None, None)
            chunk["choices"] = []
            chunk["usage"] = _usage(finish)
            events.append(chunk)
        return events

    def error(self, message: str, error_type: str) -> Any:
        return {"error": {"message": message, "type": error_type, "code": None}}

    async def close(self, resp: EventSourceResponse) -> None:
        await resp.send("[DONE]")
