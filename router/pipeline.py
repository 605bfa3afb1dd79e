"""The data-plane pipeline every public API shares.

Every request follows one chain: resolve the deployment -> validate -> queue (waking a cold
deployment) -> wait for a replica slot (bounded; 504 on timeout) -> proxy in the replica's
dialect -> release. Queue entry and slot are given back in `finally`, because a client that
disconnects cancels the handler at any await. The public APIs (router/lorax_api.py,
router/openai_api.py) only parse their requests and render the results.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from router.context import (
    BUS,
    DISPATCHER,
    HEALTH,
    HOLDING,
    METRICS,
    POOL_CACHE,
    QUOTA_CACHE,
    SETTINGS,
    SPEC_CACHE,
    STORAGE,
    STORE,
    UPSTREAM,
)
from router.dialects import Finish, Generation, Token, UpstreamError, get_dialect
from router.dispatch import Ticket
from router.errors import ApiError
from router.holding import deployment_problem
from router.middlewares import on_private_listener, tenant_of
from router.params import GenerateRequest
from router.pool import current_pool
from router.request_log import RequestLogEntry, write_entry
from router.retries import ATTEMPTS, SUSPECT_MS, retry_elsewhere
from router.sse_writer import EventWriter
from wakegate import topics
from wakegate.quotas import Quotas, queue_limit, tenant_quotas
from wakegate.spec import DeploymentSpec, valid_name
from wakegate.store import MAX_PRIORITY, QueueFull, routing_of

log = logging.getLogger(__name__)

DEPLOY_URL = "/{tenant}/deployments/v2/llms/{name}"
# Queue-depth reports to the scaler: at most this often per deployment and gateway.
LOAD_REPORT_EVERY_S = 0.5
PRIORITY_HEADER = "X-Wakegate-Priority"


async def resolve(request: web.Request, fresh: bool = False) -> DeploymentSpec:
    """The deployment the request's URL names; `fresh` skips the cache (the spec may be a
    second old)."""
    return await lookup(request, request.match_info["tenant"], request.match_info["name"], fresh)


async def lookup(
    request: web.Request, tenant: str, name: str, fresh: bool = False
) -> DeploymentSpec:
    """Deployment `name` of `tenant`, if the request's token may use it and it can serve:
    404 when it does not exist for this token (or has direct ingress and the request did not
    come in on the private listener), 424 when it failed."""
    if not valid_name(name):
        raise ApiError(404, f"deployment {name!r} not found")  # none can have this name
    if tenant != tenant_of(request)["code"]:
        # Another tenant's deployments do not exist for this token.
        raise ApiError(404, f"deployment {name} not found")
    key = f"{tenant}/{name}"
    cache = request.app[SPEC_CACHE]
    store = request.app[STORE]
    if fresh:
        spec = await store.get_deployment(key)
        if spec is not None:
            cache[key] = spec
    else:
        spec = cache.get(key)
        if spec is None:
            spec = await cache.load(key, lambda: store.get_deployment(key))
    if spec is not None and spec.config.direct_ingress and not on_private_listener(request):
        # Direct ingress: served on the private listener only; elsewhere it does not exist.
        spec = None
    pool = await current_pool(request.app[POOL_CACHE], store)
    problem = await deployment_problem(store, key, spec, pool)
    if problem is not None:
        raise problem
    assert spec is not None
    return spec


async def queue_limit_of(request: web.Request, spec: DeploymentSpec) -> int:
    """How many requests the deployment's queue takes, sync and async alike (its own limit
    within its tenant's quota)."""
    return queue_limit(spec, await quotas_of(request, spec))


async def quotas_of(request: web.Request, spec: DeploymentSpec) -> Quotas:
    """The deployment's tenant's quotas, cached for a few seconds (every request needs them)."""
    cache = request.app[QUOTA_CACHE]
    quotas: Quotas | None = cache.get(spec.tenant)
    if quotas is None:
        app = request.app
        quotas = await cache.load(
            spec.tenant, lambda: tenant_quotas(app[STORE], app[SETTINGS], spec.tenant)
        )
        assert quotas is not None
    return quotas


def overloaded(spec: DeploymentSpec, full: QueueFull) -> ApiError:
    """The 429 of a request, sync or async, that found the deployment's queue full."""
    return ApiError(
        429,
        f"deployment {spec.name} is at its queue limit ({full.depth} requests waiting); "
        f"retry in {RETRY_AFTER_S} s",
        error_type="overloaded",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def check_adapter(spec: DeploymentSpec, req: GenerateRequest) -> None:
    """Adapters a deployment serves are its `preloadedAdapters` (loaded at replica start)."""
    p = req.parameters
    if p.merged_adapters is not None:
        raise ApiError(422, "parameters.merged_adapters: merging adapters is not supported",
                       field="parameters.merged_adapters", error_type="validation")  # fmt: skip
    if p.adapter_id is None:
        return
    if spec.config.disable_adapters:
        raise ApiError(422, "parameters.adapter_id: adapters are disabled on this deployment",
                       field="parameters.adapter_id", error_type="validation")  # fmt: skip
    if p.adapter_id not in (spec.config.preloaded_adapters or ()):
        raise ApiError(
            404,
            f"adapter {p.adapter_id!r} is not loaded by deployment {spec.name}: "
            "add it to preloadedAdapters",
            field="parameters.adapter_id",
        )


def check_length(
    spec: DeploymentSpec, requested: int | None, field: str, status: int, error_type: str
) -> None:
    """Generated tokens within what the deployment's engine holds for one request (its
    `maxTotalTokens`, else the model's context window); the engine still checks the prompt
    plus them, which only it can count."""
    if requested is not None and requested > spec.max_total_tokens:
        raise ApiError(
            status,
            f"{field}: must be <= {spec.max_total_tokens} (the deployment's maxTotalTokens "
            f"or its model's context window), not {requested}",
            field=field,
            error_type=error_type,
        )


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
    """After the request is queued: the depth for metrics and the scaler (a wake went out
    already, from the dispatcher: `publish_wake`)."""
    request.app[METRICS].of(ticket.deployment).queue_depth.set(ticket.queued_depth)
    bus = request.app[BUS]
    if bus is not None and not ticket.woke:
        disp = request.app[DISPATCHER]
        await bus.publish_at_most(
            LOAD_REPORT_EVERY_S,
            "load",
            ticket.deployment,
            lambda: topics.LoadReport(
                deployment=ticket.deployment,
                queued=ticket.queued_depth,
                in_flight=disp.running_count(ticket.deployment),
            ),
        )


def wake_publisher(app: web.Application) -> Callable[[str, int, float], None]:
    """What the dispatcher calls when a request woke its deployment: count it, publish the
    wake (in a task of its own) and measure the reaction (request queued to wake published)."""
    pending: set[asyncio.Task[None]] = set()

    async def publish(deployment: str, depth: int, since_s: float) -> None:
        started = time.monotonic()
        bus = app[BUS]
        if bus is not None:
            await bus.publish("wake", topics.Wake(deployment=deployment, queued=depth))
        reaction = since_s + time.monotonic() - started
        app[METRICS].of(deployment).wake_reaction.observe(reaction)

    def on_wake(deployment: str, depth: int, since_s: float) -> None:
        app[METRICS].of(deployment).wakes.inc()
        log.info("waking %s", deployment)
        task = asyncio.get_running_loop().create_task(publish(deployment, depth, since_s))
        pending.add(task)
        task.add_done_callback(pending.discard)

    return on_wake


# What a 429 tells clients to wait before retrying (the OpenAI client honours it).
RETRY_AFTER_S = 2
# aiohttp-sse's own ping interval, in effect never (it must be positive): see serve_stream.
NO_OWN_PING_S = 1e9


# Sends a list of events: a dict is one event's JSON, a str its JSON already made.
Send = Callable[[list[Any]], Awaitable[None]]


@contextlib.asynccontextmanager
async def request_log_entry(
    request: web.Request,
    spec: DeploymentSpec,
    req: GenerateRequest,
    stream: bool,
    arrived: float,
) -> AsyncIterator[RequestLogEntry]:
    trail = RequestLogEntry(request.get("wakegate.family", "lorax"), stream, req, arrived)
    try:
        yield trail
    except ApiError as err:
        trail.status, trail.error = err.status, err.message
        raise
    except asyncio.CancelledError:
        trail.status, trail.error = 499, "client went away"
        raise
    finally:
        finish = trail.finish
        tokens = finish.generated_tokens if finish is not None else len(trail.output)
        request.app[HEALTH].ended(
            spec.key, trail.status, tokens, trail.queue_wait_s, trail.ttft_s, trail.cold
        )
        if spec.config.request_logging_enabled:
            app = request.app
            entry = trail.record(app[SETTINGS].request_log_max_bytes)
            await asyncio.shield(log_entry(request, spec, entry))


async def log_entry(request: web.Request, spec: DeploymentSpec, entry: dict[str, Any]) -> None:
    app = request.app
    try:
        limit = (await quotas_of(request, spec)).max_request_log_bytes
    except Exception:
        log.exception("request log of %s failed", spec.key)
        return
    await write_entry(app[STORE], app[STORAGE], spec.key, entry, limit)


class StreamRenderer(Protocol):
    """How a public API writes a stream: its events, its end and its in-stream errors."""

    def tokens(self, tokens: list[Token]) -> list[Any]:
        """The events of these tokens (those of one read from the replica)."""
        ...

    def finish(self, finish: Finish, text: str) -> list[Any]: ...

    def error(self, message: str, error_type: str) -> Any: ...

    async def close(self, resp: EventSourceResponse) -> None: ...


async def tracked(
    request: web.Request,
    spec: DeploymentSpec,
    arrived: float,
    handler: Awaitable[web.StreamResponse],
) -> web.StreamResponse:
    """Count the request's outcome and duration, whatever happens to it."""
    metrics = request.app[METRICS]
    code = "200"
    try:
        return await handler
    except ApiError as err:
        code = str(err.status)
        raise
    except asyncio.CancelledError:
        code = "499"  # the client went away
        raise
    finally:
        metrics.requests.labels(spec.key, code).inc()
        metrics.of(spec.key).duration.observe(time.monotonic() - arrived)


# Prefix-aware routing sees a prompt as a chain of chunks of this many characters (about 500
# tokens); each chunk's key hashes the whole prompt up to its end, so two prompts share the key
# of chunk i exactly when they agree up to there, and the deepest shared key is their longest
# common prefix (to chunk granularity). Replicas that served a prefix recently hold its KV
# cache. Chains stop after PREFIX_MAX_CHUNKS (about 64k tokens): deeper agreement changes no
# routing decision.
PREFIX_CHUNK_CHARS = 2048
PREFIX_MAX_CHUNKS = 128


def prefix_chain(req: GenerateRequest) -> list[str]:
    text = req.inputs if req.messages is None else json.dumps(req.messages)
    running = hashlib.sha1(usedforsecurity=False)
    keys: list[str] = []
    end = min(len(text), PREFIX_CHUNK_CHARS * PREFIX_MAX_CHUNKS)
    for start in range(0, end, PREFIX_CHUNK_CHARS):
        running.update(text[start : start + PREFIX_CHUNK_CHARS].encode())
        keys.append(running.hexdigest()[:12])
    return keys


@contextlib.asynccontextmanager
async def admit(
    request: web.Request, spec: DeploymentSpec, req: GenerateRequest, priority: int
) -> AsyncIterator[Ticket]:
    """A place in the deployment's queue, given back on the way out; 429 when it is full."""
    dispatcher = request.app[DISPATCHER]
    limit = await queue_limit_of(request, spec)
    try:
        ticket = await dispatcher.enqueue(
            spec.key,
            priority,
            limit,
            req.parameters.adapter_id,
            prefix_chain(req),
            routing_of(spec),
        )
    except QueueFull as full:
        raise overloaded(spec, full) from None
    try:
        await on_enqueued(request, ticket)
        yield ticket
    finally:
        # Not awaited (so a disconnecting client's cancellation cannot stop it, and the
        # response does not wait for Redis): the slot goes back with the next exchange call.
        dispatcher.finish_soon(ticket)


def _first_token(
    request: web.Request,
    spec: DeploymentSpec,
    ticket: Ticket,
    arrived: float,
    trail: RequestLogEntry,
) -> None:
    metrics = request.app[METRICS]
    elapsed = time.monotonic() - arrived
    trail.ttft_s = round(elapsed, 4)
    metrics.of(spec.key).ttft.observe(elapsed)
    trail.cold = ticket.cold
    if ticket.cold:
        metrics.of(spec.key).cold_start.observe(elapsed)


async def serve_unary(
    request: web.Request,
    spec: DeploymentSpec,
    req: GenerateRequest,
    priority: int,
    arrived: float,
) -> Generation:
    """Queue, wait for a slot, generate; the caller renders the result."""
    check_adapter(spec, req)
    async with (
        request_log_entry(request, spec, req, False, arrived) as trail,
        admit(request, spec, req, priority) as ticket,
    ):
        try:
            gen = await _attempts(request, spec, req, ticket, trail, arrived)
        except UpstreamError as exc:
            if not exc.retryable:
                raise ApiError(exc.status, str(exc), error_type="validation") from None
            raise ApiError(502, str(exc), error_type="generation") from None
        assert gen is not None
        return gen


async def _attempts(
    request: web.Request,
    spec: DeploymentSpec,
    req: GenerateRequest,
    ticket: Ticket,
    trail: RequestLogEntry,
    arrived: float,
    renderer: StreamRenderer | None = None,
    send: Send | None = None,
    resp: web.StreamResponse | None = None,
) -> Generation | None:
    """Wait for the ticket's replica slot (bounded: 504), then generate there: the generation
    is returned (unary), or relayed token by token through `renderer` to `send` (stream; the
    first wait is told to `resp` in a comment). A replica that fails before its first byte is
    suspected and the request queued again, away from it (`retry_elsewhere`); the last
    failure is raised as the UpstreamError."""
    app = request.app
    metrics = app[METRICS].of(spec.key)
    for attempt in range(ATTEMPTS):
        start = time.monotonic()
        # Waiting costs nothing per second: the gateway re-checks each deployment with
        # waiting requests once (router/holding.py) and fails their waits when it is deleted
        # or failed.
        if not ticket.assigned.done():  # done: it found a free slot when it was queued
            timeout_s = app[SETTINGS].queue_timeout_s
            try:
                with app[HOLDING].waiting(ticket):
                    async with asyncio.timeout(timeout_s):
                        await app[DISPATCHER].wait(ticket)
            except TimeoutError:
                raise ApiError(
                    504,
                    f"no replica of {ticket.deployment} became available within {timeout_s:.0f}s",
                    error_type="timeout",
                ) from None
        waited = time.monotonic() - start
        metrics.queue_wait.observe(waited)
        trail.queue_wait_s = round(waited + (trail.queue_wait_s or 0.0), 4)
        replica_id = ticket.assigned.result()
        # The record came with the assignment when this gateway's own dispatch made it.
        replica = ticket.replica or await app[STORE].replica(ticket.deployment, replica_id)
        if replica is None:
            raise ApiError(503, "the assigned replica went away", error_type="generation")
        trail.replica = replica.id
        if resp is not None and not attempt:
            # For tools that measure the queue (trace replay); clients ignore SSE comments.
            await resp.write(
                f": wakegate queue_wait_ms={int(waited * 1000)} cold={int(ticket.cold)} "
                f"replica={replica.id}\n\n".encode()
            )
        metrics.in_flight.inc()
        try:
            dialect = get_dialect(replica.dialect)
            if renderer is None:
                gen = await dialect.generate(app[UPSTREAM], replica, spec.base_model, req)
                _first_token(request, spec, ticket, arrived, trail)
                trail.output.append(gen.text)
                trail.finish = gen.finish
                return gen
            assert send is not None
            text = trail.output
            # A read's tokens at a time: per token, only their text and their event.
            async for item in dialect.stream(app[UPSTREAM], replica, spec.base_model, req):
                if isinstance(item, Finish):
                    trail.finish = item
                    await send(renderer.finish(item, "".join(text)))
                    continue
                if not text:
                    _first_token(request, spec, ticket, arrived, trail)
                # A special token (the end-of-sequence one) is shown as a token, never as
                # text.
                text += ["" if token.special else token.text for token in item]
                await send(renderer.tokens(item))
            return None
        except UpstreamError as exc:
            if not retry_elsewhere(exc, attempt + 1):
                raise
            log.warning("replica %s failed before the first byte (%s); retrying elsewhere",
                        replica.id, exc)  # fmt: skip
            metrics.retries.inc()
            await app[DISPATCHER].requeue(ticket, SUSPECT_MS)
        finally:
            metrics.in_flight.dec()
    raise AssertionError("retry_elsewhere allows at most ATTEMPTS tries")


async def serve_stream(
    request: web.Request,
    spec: DeploymentSpec,
    req: GenerateRequest,
    priority: int,
    arrived: float,
    renderer: StreamRenderer,
) -> web.StreamResponse:
    """Queue first (a full queue is still a plain 429), then commit the 200 and keep the
    connection alive with comments while queued, so a cold start never trips the client's
    read timeout. Failures after that become in-stream events."""
    check_adapter(spec, req)
    app = request.app
    # Keep-alive comments come from the gateway's one timer for all streams (Holding); the
    # response's own ping task is left asleep (a timer that never fires costs no CPU).
    resp = EventSourceResponse(sep="\n", allow_all_methods=True, ping_interval=NO_OWN_PING_S)

    send = EventWriter(request, resp, EventSourceResponse.DEFAULT_SEND_TIMEOUT).send

    async with (
        request_log_entry(request, spec, req, True, arrived) as trail,
        admit(request, spec, req, priority) as ticket,
        app[HOLDING].stream(request, resp),
    ):
        await resp.prepare(request)
        try:
            await _attempts(request, spec, req, ticket, trail, arrived, renderer, send, resp)
        except ApiError as err:
            trail.status, trail.error = err.status, err.message
            await send([renderer.error(err.message, err.error_type or "generation")])
        except UpstreamError as exc:
            trail.status, trail.error = exc.status, str(exc)
            kind = "generation" if exc.retryable else "validation"
            await send([renderer.error(str(exc), kind)])
        except (ConnectionError, asyncio.CancelledError):
            raise  # the client went away
        except Exception:
            log.exception("stream of %s failed", spec.key)
            trail.status, trail.error = 500, "internal error"
            await send([renderer.error("internal error", "generation")])
    await renderer.close(resp)
    resp.stop_streaming()
    await resp.write_eof()
    return resp
