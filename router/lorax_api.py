"""Data plane, LoRAX/TGI flavour: the SDK's deployment URL, /generate and /generate_stream,
async requests, and the rest of what the SDK's clients call (/metrics, /embed, /classify)."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web
from aiohttp_sse import EventSourceResponse
from prometheus_client import CONTENT_TYPE_LATEST

from router.context import JOBS, METRICS, SETTINGS, STORAGE
from router.control import read_json
from router.dialects import Finish, Token
from router.errors import ApiError
from router.lorax_json import details_json, lorax_response, token_json
from router.params import GenerateRequest, parse_generate
from router.pipeline import (
    DEPLOY_URL,
    check_adapter,
    check_length,
    overloaded,
    priority_of,
    quotas_of,
    resolve,
    serve_stream,
    serve_unary,
    tracked,
)
from router.storage import BULK_RETRY_AFTER_S
from wakegate.catalog import MODELS
from wakegate.quotas import queue_limit
from wakegate.spec import DeploymentSpec
from wakegate.store import JobsFull, QueueFull

routes = web.RouteTableDef()


def check_max_new_tokens(spec: DeploymentSpec, req: GenerateRequest) -> None:
    """LoRAX answers 422 (validation) to a max_new_tokens its engine cannot hold."""
    field = "parameters.max_new_tokens"
    check_length(spec, req.parameters.max_new_tokens, field, 422, "validation")


def _dumps(obj: Any) -> str:
    """A response body's JSON through orjson (json.dumps was a few percent of a request)."""
    return orjson.dumps(obj).decode()


@routes.post(DEPLOY_URL)
async def generate_root(request: web.Request) -> web.StreamResponse:
    """The SDK's and lorax.Client's URL: `"stream"` in the body picks the mode."""
    return await _generate(request, None, as_array=True)


@routes.post(DEPLOY_URL + "/generate")
async def generate(request: web.Request) -> web.StreamResponse:
    """Native LoRAX route: one JSON object, not the array the deployment URL answers."""
    return await _generate(request, False)


@routes.post(DEPLOY_URL + "/generate_stream")
async def generate_stream(request: web.Request) -> web.StreamResponse:
    return await _generate(request, True)


async def _generate(
    request: web.Request, force_stream: bool | None, as_array: bool = False
) -> web.StreamResponse:
    arrived = time.monotonic()
    spec = await resolve(request)
    req = parse_generate(await read_json(request))
    check_max_new_tokens(spec, req)
    stream = req.stream if force_stream is None else force_stream
    priority = priority_of(request, req)

    async def handle() -> web.StreamResponse:
        if stream:
            return await serve_stream(request, spec, req, priority, arrived, LoraxStream(req))
        body = lorax_response(await serve_unary(request, spec, req, priority, arrived), req)
        return web.json_response([body] if as_array else body, dumps=_dumps)

    return await tracked(request, spec, arrived, handle())


class LoraxStream:
    """LoRAX events: one per token; the last token's event carries the text and details, so
    each token is held until the next one (or the finish) arrives. No `[DONE]`."""

    def __init__(self, req: GenerateRequest) -> None:
        self.req = req
        self.held: Token | None = None

    def tokens(self, tokens: list[Token]) -> list[Any]:
        events = []
        for token in tokens:
            if self.held is not None:
                events.append(
                    {"token": token_json(self.held), "generated_text": None, "details": None}
                )
            self.held = token
        return events

    def finish(self, finish: Finish, text: str) -> list[Any]:
        # No visible token at all still needs one final event to carry the details.
        last = self.held or Token(-1, "", 0.0, special=True)
        if self.req.parameters.return_full_text:
            text = self.req.inputs + text
        details = details_json(finish, None) if self.req.parameters.details else None
        return [{"token": token_json(last), "generated_text": text, "details": details}]

    def error(self, message: str, error_type: str) -> Any:
        return {"error": message, "error_type": error_type}

    async def close(self, resp: EventSourceResponse) -> None:
        return None


def jobs_full(full: JobsFull) -> ApiError:
    """429 naming the tenant's async quota that is reached (nothing was stored)."""
    what = "async requests" if full.quota == "maxAsyncJobsPerTenant" else "bytes of async requests"
    return ApiError(
        429,
        f"{full.quota}: the tenant has {full.used} {what} stored, its quota is {full.limit}; "
        "they count until they expire or their deployment is deleted",
        error_type="quota", extra={"quota": full.quota, "limit": full.limit},
    )  # fmt: skip


@routes.post(DEPLOY_URL + "/async")
async def submit_async(request: web.Request) -> web.Response:
    """Queue a request and answer its id at once; the result is fetched later (GET)."""
    spec = await resolve(request)
    req = parse_generate(await read_json(request, request.app[SETTINGS].max_async_body_bytes))
    if req.stream:
        raise ApiError(422, "stream: async requests cannot stream", field="stream",
                       error_type="validation")  # fmt: skip
    check_adapter(spec, req)
    check_max_new_tokens(spec, req)
    if request.app[STORAGE].bulk_refused:
        # Redis is nearly full: what is left is for the control plane and every queue.
        raise ApiError(
            503, "async requests are refused for now: storage is nearly full; retry later",
            error_type="overloaded", headers={"Retry-After": str(BULK_RETRY_AFTER_S)},
        )  # fmt: skip
    quotas = await quotas_of(request, spec)
    jobs = request.app[JOBS]
    try:
        job_id = await jobs.submit(
            spec, req, priority_of(request, req), queue_limit(spec, quotas), quotas
        )
    except QueueFull as full:
        raise overloaded(spec, full) from None
    except JobsFull as full:
        raise jobs_full(full) from None
    url = f"{request.path}/{job_id}"
    return web.json_response({"id": job_id, "status": "queued", "url": url}, status=202,
                             headers={"Location": url})  # fmt: skip


@routes.get(DEPLOY_URL + "/async/{job_id}")
async def async_status(request: web.Request) -> web.Response:
    spec = await resolve(request)
    job = await request.app[JOBS].status(spec.key, request.match_info["job_id"])
    if job is None:
        raise ApiError(404, "no such async request (or its result expired)", field="job_id")
    return web.json_response(job)


@routes.get(DEPLOY_URL + "/metrics")
async def deployment_metrics(request: web.Request) -> web.Response:
    """LoRAX's `/metrics` (the SDK clients' `metrics()`): this deployment's series on this
    gateway, as Prometheus text, or as JSON when `Accept` asks for it."""
    spec = await resolve(request)
    metrics = request.app[METRICS]
    families = metrics.deployment_metrics(spec.key)
    if "application/json" in request.headers.get("Accept", ""):
        samples = [
            {"name": s.name, "labels": s.labels, "value": s.value}
            for family in families
            for s in family.samples
        ]
        return web.json_response({"deployment": spec.name, "samples": samples})
    return web.Response(body=metrics.text(families), headers={"Content-Type": CONTENT_TYPE_LATEST})


# LoRAX's embedding and classification routes, which the SDK clients call: wakegate's
# deployments generate text, so these answer what they cannot do rather than "no route"
# (422, not 501: a client's request, not the gateway, is what cannot be served).
NOT_SERVED = {
    "embed": "embeddings",
    "classify": "sequence classification",
    "classify_batch": "sequence classification",
}


async def _not_served(request: web.Request) -> web.Response:
    spec = await resolve(request)
    what = NOT_SERVED[request.path.rsplit("/", 1)[1]]
    engine = MODELS[spec.base_model].engine
    raise ApiError(
        422,
        f"{what} is not served: deployment {spec.name} generates text ({spec.base_model} on "
        f"{engine}); use /generate or /v1/completions",
        error_type="unsupported",
    )


for _route in NOT_SERVED:
    routes.post(f"{DEPLOY_URL}/{_route}")(_not_served)
