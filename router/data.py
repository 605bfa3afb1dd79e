"""Data plane, LoRAX/TGI flavour: the SDK's deployment URL, /generate and /generate_stream.

Every request follows one chain: resolve the deployment -> validate -> queue (waking a cold
deployment) -> wait for a replica slot (bounded; 504 on timeout) -> proxy in the replica's
dialect -> release. Queue entry and slot are given back in `finally`, because a client that
disconnects cancels the handler at any await.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from router.context import BUS, DISPATCHER, METRICS, SETTINGS, SPEC_CACHE, STORE, UPSTREAM
from router.control import read_json
from router.dialects import Finish, Generation, Token, UpstreamError, get_dialect
from router.dispatch import Ticket
from router.errors import ApiError
from router.middlewares import tenant_of
from router.params import GenerateRequest, parse_generate
from wakegate import topics
from wakegate.spec import DeploymentSpec
from wakegate.store import MAX_PRIORITY, ReplicaRecord

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

DEPLOY_URL = "/{tenant}/deployments/v2/llms/{name}"
# Queue-depth reports to the scaler: at most this often per deployment and gateway.
LOAD_REPORT_EVERY_S = 0.5
PRIORITY_HEADER = "X-Wakegate-Priority"


async def resolve(request: web.Request, fresh: bool = False) -> DeploymentSpec:
    """The request's deployment; `fresh` skips the cache (the spec may be a second old)."""
    tenant, name = request.match_info["tenant"], request.match_info["name"]
    if tenant != tenant_of(request)["code"]:
        # Another tenant's deployments do not exist for this token.
        raise ApiError(404, f"deployment {name} not found")
    key = f"{tenant}/{name}"
    cache = request.app[SPEC_CACHE]
    spec = None if fresh else cache.get(key)
    if spec is None:
        spec = await request.app[STORE].get_deployment(key)
        if spec is not None:
            cache[key] = spec
    if spec is None or spec.status == "deleting":
        raise ApiError(404, f"deployment {name} not found")
    if spec.status == "failed":
        events = await request.app[STORE].events(spec.key)
        why = next((e["message"] for e in reversed(events) if e["eventType"] == "Failed"), "")
        raise ApiError(424, f"deployment {name} failed: {why}", error_type="generation")
    return spec


def priority_of(request: web.Request, req: GenerateRequest) -> int:
    raw = request.headers.get(PRIORITY_HEADER)
    if raw is None:
        return req.parameters.priority or 0
    try:
        value = int(raw)
        if abs(value) > MAX_PRIORITY:
            raise ValueError
        return value
    except ValueError:
        raise ApiError(
            422,
            f"{PRIORITY_HEADER} must be an integer within ±{MAX_PRIORITY}",
            field=PRIORITY_HEADER,
            error_type="validation",
        ) from None


async def on_enqueued(request: web.Request, ticket: Ticket) -> None:
    bus = request.app[BUS]
    if ticket.woke:
        request.app[METRICS].wakes.labels(ticket.deployment).inc()
        log.info("waking %s", ticket.deployment)
    request.app[METRICS].queue_depth.labels(ticket.deployment).set(ticket.queued_depth)
    if bus is not None:
        if ticket.woke:
            await bus.publish(
                "wake", topics.Wake(deployment=ticket.deployment, queued=ticket.queued_depth)
            )
        else:
            disp = request.app[DISPATCHER]
            await bus.publish_at_most(
                LOAD_REPORT_EVERY_S,
                "load",
                topics.LoadReport(
                    deployment=ticket.deployment,
                    queued=ticket.queued_depth,
                    in_flight=disp.running_count(ticket.deployment),
                ),
            )


# While a request waits, the deployment is re-checked this often: a deployment that failed or
# was deleted answers its waiting requests at once instead of at the queue timeout.
RECHECK_S = 1.0


async def await_replica(request: web.Request, ticket: Ticket) -> ReplicaRecord:
    settings = request.app[SETTINGS]
    start = time.monotonic()
    deadline = start + settings.queue_timeout_s
    while True:
        try:
            async with asyncio.timeout(min(RECHECK_S, max(0.0, deadline - time.monotonic()))):
                replica_id = await request.app[DISPATCHER].wait(ticket)
            break
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise ApiError(
                    504,
                    f"no replica of {ticket.deployment} became available within "
                    f"{settings.queue_timeout_s:.0f}s",
                    error_type="timeout",
                ) from None
            await resolve(request, fresh=True)  # 404 / 424 when it is gone or failed
    request.app[METRICS].queue_wait.labels(ticket.deployment).observe(time.monotonic() - start)
    replica = await request.app[STORE].replica(ticket.deployment, replica_id)
    if replica is None:
        raise ApiError(503, "the assigned replica went away", error_type="generation")
    return replica


def token_json(t: Token) -> dict[str, Any]:
    return {"id": t.id, "text": t.text, "logprob": t.logprob, "special": t.special}


def details_json(finish: Finish, tokens: list[Token] | None) -> dict[str, Any]:
    d: dict[str, Any] = {
        "finish_reason": finish.reason,
        "prompt_tokens": finish.prompt_tokens,
        "generated_tokens": finish.generated_tokens,
        "seed": finish.seed,
    }
    if tokens is not None:
        d["prefill"] = []
        d["tokens"] = [token_json(t) for t in tokens]
    return d


def lorax_response(gen: Generation, req: GenerateRequest) -> dict[str, Any]:
    text = (req.inputs + gen.text) if req.parameters.return_full_text else gen.text
    out: dict[str, Any] = {"generated_text": text}
    if req.parameters.details:
        out["details"] = details_json(gen.finish, gen.tokens)
    return out


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
    stream = req.stream if force_stream is None else force_stream
    priority = priority_of(request, req)
    metrics = request.app[METRICS]
    code = "200"
    try:
        if stream:
            return await _stream(request, spec, req, priority, arrived)
        return await _unary(request, spec, req, priority, arrived, as_array)
    except ApiError as err:
        code = str(err.status)
        raise
    except asyncio.CancelledError:
        code = "499"  # the client went away
        raise
    finally:
        metrics.requests.labels(spec.key, code).inc()
        metrics.duration.labels(spec.key).observe(time.monotonic() - arrived)


async def _unary(
    request: web.Request,
    spec: DeploymentSpec,
    req: GenerateRequest,
    priority: int,
    arrived: float,
    as_array: bool,
) -> web.StreamResponse:
    app = request.app
    async with app[DISPATCHER].admitted(spec.key, priority) as ticket:
        await on_enqueued(request, ticket)
        replica = await await_replica(request, ticket)
        app[METRICS].in_flight.labels(spec.key).inc()
        try:
            gen = await get_dialect(replica.dialect).generate(
                app[UPSTREAM], replica, spec.base_model, req
            )
        except UpstreamError as exc:
            raise ApiError(502, str(exc), error_type="generation") from None
        finally:
            app[METRICS].in_flight.labels(spec.key).dec()
        elapsed = time.monotonic() - arrived
        app[METRICS].ttft.labels(spec.key).observe(elapsed)
        if ticket.cold:
            app[METRICS].cold_start.labels(spec.key).observe(elapsed)
        body = lorax_response(gen, req)
        return web.json_response([body] if as_array else body)


async def _stream(
    request: web.Request,
    spec: DeploymentSpec,
    req: GenerateRequest,
    priority: int,
    arrived: float,
) -> web.StreamResponse:
    app = request.app
    # Commit the 200 at once and keep the connection alive with comments while queued, so a
    # cold start never trips the client's read timeout. Failures become in-stream events.
    resp = EventSourceResponse(
        sep="\n", allow_all_methods=True, ping_interval=app[SETTINGS].keepalive_s
    )
    await resp.prepare(request)

    async def send(obj: dict[str, Any]) -> None:
        await resp.send(json.dumps(obj, separators=(",", ":")))

    try:
        async with app[DISPATCHER].admitted(spec.key, priority) as ticket:
            await on_enqueued(request, ticket)
            queued_at = time.monotonic()
            replica = await await_replica(request, ticket)
            # For tools that measure the queue (trace replay); clients ignore SSE comments.
            wait_ms = int((time.monotonic() - queued_at) * 1000)
            await resp.write(
                f": wakegate queue_wait_ms={wait_ms} cold={int(ticket.cold)} "
                f"replica={replica.id}\n\n".encode()
            )
            app[METRICS].in_flight.labels(spec.key).inc()
            try:
                await _relay(request, spec, req, replica, ticket, arrived, send)
            finally:
                app[METRICS].in_flight.labels(spec.key).dec()
    except ApiError as err:
        await send({"error": err.message, "error_type": err.error_type or "generation"})
    except UpstreamError as exc:
        await send({"error": str(exc), "error_type": "generation"})
    except (ConnectionError, asyncio.CancelledError):
        raise  # the client went away
    except Exception:
        # The 200 is committed: a failure can only be an event in the stream now.
        log.exception("stream of %s failed", spec.key)
        await send({"error": "internal error", "error_type": "generation"})
    resp.stop_streaming()
    await resp.write_eof()
    return resp


async def _relay(
    request: web.Request,
    spec: DeploymentSpec,
    req: GenerateRequest,
    replica: ReplicaRecord,
    ticket: Ticket,
    arrived: float,
    send: Any,
) -> None:
    """Forward tokens as they come; the last token event carries the text and details."""
    app = request.app
    held: Token | None = None
    text: list[str] = []
    first = True
    async for item in get_dialect(replica.dialect).stream(
        app[UPSTREAM], replica, spec.base_model, req
    ):
        if isinstance(item, Token):
            if first:
                first = False
                elapsed = time.monotonic() - arrived
                app[METRICS].ttft.labels(spec.key).observe(elapsed)
                if ticket.cold:
                    app[METRICS].cold_start.labels(spec.key).observe(elapsed)
            if held is not None:
                await send({"token": token_json(held), "generated_text": None, "details": None})
            held = item
            text.append(item.text)
            continue
        # Finish: no visible token at all still needs one final event to carry the details.
        last = held or Token(-1, "", 0.0, special=True)
        full = "".join(text)
        if req.parameters.return_full_text:
            full = req.inputs + full
        await send(
            {
                "token": token_json(last),
                "generated_text": full,
                "details": details_json(item, None) if req.parameters.details else None,
            }
        )
