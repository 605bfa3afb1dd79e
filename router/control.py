"""Control plane: the Predibase-compatible user, deployment and event endpoints."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from router.context import BUS, HEALTH, METRICS, SETTINGS, SPEC_CACHE, STORE
from router.errors import ApiError
from router.middlewares import tenant_of
from router.pipeline import DEPLOY_URL
from router.pool import ACCELERATORS_PATH, refuse_missing
from router.request_log import LogWindow, write_zip
from wakegate import engine_args, topics
from wakegate.catalog import ACCELERATORS, MODELS
from wakegate.engines import ADAPTER_ID, EngineRefused, validate_spec
from wakegate.events import event
from wakegate.pool import pool_view
from wakegate.quotas import QuotaExceeded, Quotas, check_deployment, tenant_quotas
from wakegate.sealing import SEALED_FIELDS, SEALED_PREFIX, seal_secrets
from wakegate.spec import (
    CONFIG_KEYS,
    DEFAULT_COOLDOWN_S,
    DEFAULT_MAX_REPLICAS,
    DEFAULT_MIN_REPLICAS,
    DEFAULT_SCALE_UP_THRESHOLD,
    ENGINE_FIELDS,
    RECOMMENDED_CONFIG,
    ConfigUpdate,
    DeploymentConfig,
    DeploymentSpec,
    InvalidSpec,
    merge_config,
    parse_create,
    parse_update,
    valid_name,
    validate_name,
)
from wakegate.store import Store, TenantFull

routes = web.RouteTableDef()

# A deployment is gettable and listed in these states; "deleting" ones are on their way out.
VISIBLE = frozenset({"ready", "updating", "failed"})


def _no_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which are not JSON and no value may hold.
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    # JSON numbers beyond a double's range (1e309) would become infinite.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def body_too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413, f"request body too large: an async request takes at most {max_bytes} bytes",
        field="body", extra={"limit": max_bytes},
    )  # fmt: skip


async def read_json(request: web.Request, max_bytes: int | None = None) -> Any:
    """The request's JSON body, read under the body deadline (408 when the client stops
    sending it: a silent client must not hold its handler forever); 413 beyond `max_bytes`
    where given (smaller than the gateway's body limit, which aiohttp enforces)."""
    timeout_s = request.app[SETTINGS].body_timeout_s
    if max_bytes is not None and (request.content_length or 0) > max_bytes:
        raise body_too_large(max_bytes)
    try:
        if request.content.is_eof():  # all of it arrived with the headers: nothing to wait for
            raw = await request.read()
        else:
            async with asyncio.timeout(timeout_s):
                raw = await request.read()
    except TimeoutError:
        raise ApiError(
            408, f"request body not received within {timeout_s:g} s", field="body"
        ) from None
    if max_bytes is not None and len(raw) > max_bytes:
        raise body_too_large(max_bytes)
    if not raw:
        return {}
    try:
        return orjson.loads(raw)  # a few percent of a request's CPU less than json's
    except orjson.JSONDecodeError:
        pass
    # What orjson refuses, json reads or names the fault of: an integer past 64 bits is a
    # value (the validation then names its field), NaN and Infinity are not JSON.
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except ValueError as exc:
        raise ApiError(400, f"malformed JSON: {exc}", field="body") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply", field="body") from None


def _key(request: web.Request, name: str) -> str:
    if not valid_name(name):
        # No deployment can have this name (one with a newline, a `/`): none is looked up.
        raise ApiError(404, f"deployment {name!r} not found")
    return f"{tenant_of(request)['code']}/{name}"


async def _visible(store: Store, key: str, name: str) -> DeploymentSpec:
    spec = await store.get_deployment(key)
    if spec is None or spec.status not in VISIBLE:
        raise ApiError(404, f"deployment {name} not found")
    return spec


def private_endpoint(spec: DeploymentSpec, serving_url: str | None) -> dict[str, str] | None:
    """Where a direct-ingress deployment is served (the private listener): the serving base
    to give the SDK (`serving_url_override`) and the deployment's own URL (lorax-client,
    REST). None for any other deployment, or on a gateway without a private listener."""
    if not spec.config.direct_ingress or serving_url is None:
        return None
    return {
        "servingUrl": serving_url,
        "url": f"{serving_url}{DEPLOY_URL.format(tenant=spec.tenant, name=spec.name)}",
    }


def _check_ingress(request: web.Request, config: ConfigUpdate | None) -> None:
    """`directIngress: true` needs a private listener to be served on."""
    if config is not None and config.direct_ingress and request.app[SETTINGS].private_port is None:
        raise ApiError(
            400,
            "config.directIngress: this gateway has no private listener to serve it on "
            "(WAKEGATE_PRIVATE_PORT is none)",
            field="config.directIngress",
        )


async def _wire(request: web.Request, spec: DeploymentSpec) -> dict[str, Any]:
    store = request.app[STORE]
    wire = spec.to_wire(current_replicas=await store.ready_count(spec.key))
    # wakegate extension (the SDK ignores extra keys): a direct-ingress deployment's private
    # endpoint; null otherwise.
    wire["privateEndpoint"] = private_endpoint(spec, request.app[SETTINGS].private_url())
    # wakegate extension (the SDK ignores extra keys): why it runs fewer replicas than it
    # wants, while the pool or its tenant's GPU quota holds it back; null otherwise.
    (waiting,) = await store.waiting([spec.key])
    wire["waitingForCapacity"] = (
        None
        if waiting is None
        else {
            "reason": waiting.get("reason", ""),
            "since": waiting.get("since"),
            "wantedReplicas": waiting.get("wanted", 0),
        }
    )
    return wire


def _check_engine(spec: DeploymentSpec) -> None:
    """Refuse what the engine cannot honour now, not when the first replica starts (the
    scaler would only mark the deployment failed, long after the client was told 200)."""
    try:
        engine_args.check(MODELS[spec.base_model].engine, spec.config.custom_args or ())
    except InvalidSpec as exc:
        raise ApiError(400, str(exc), field=exc.field) from None
    try:
        validate_spec(spec)
    except EngineRefused as exc:
        raise ApiError(400, str(exc), field=exc.field) from None


def _check_secrets(config: DeploymentConfig) -> None:
    for name in SEALED_FIELDS:
        value = getattr(config, name)
        if isinstance(value, str) and value.startswith(SEALED_PREFIX):
            # Only the gateway seals: a sealed value from a client would make the scaler open
            # whatever ciphertext it was given.
            raise ApiError(400, "not a token", field=f"config.{CONFIG_KEYS[name]}")


def quota_error(exc: QuotaExceeded) -> ApiError:
    """403 naming the quota and its value, in the control-plane error shape."""
    return ApiError(
        403, exc.message, field=exc.field, extra={"quota": exc.quota, "limit": exc.limit}
    )


async def _quotas(request: web.Request, tenant: str) -> Quotas:
    # Read fresh, not from the data plane's cache: a quota the operator just changed applies
    # to the next create or update.
    return await tenant_quotas(request.app[STORE], request.app[SETTINGS], tenant)


def _check_quotas(spec: DeploymentSpec, quotas: Quotas) -> None:
    try:
        check_deployment(spec, quotas)
    except QuotaExceeded as exc:
        raise quota_error(exc) from None


async def _announce(request: web.Request, key: str, change: str) -> None:
    request.app[SPEC_CACHE].pop(key, None)  # this gateway sees its own change at once
    if change == "deleted":
        request.app[METRICS].forget(key)  # other gateways hear it on the bus
        request.app[HEALTH].forget(key)
    bus = request.app[BUS]
    if bus is not None:
        await bus.publish("config", topics.ConfigChanged(deployment=key, change=change))  # type: ignore[arg-type]


@routes.get("/users/current")
async def current_user(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    return web.json_response(
        {
            "id": 1,
            "username": tenant["code"],
            "uuid": tenant["uuid"],
            "tenant": {
                "name": tenant["name"],
                "shortCode": tenant["code"],
                "subscription": {
                    "id": 1,
                    "tier": "enterprise",
                    "isTrial": False,
                    "expiration": None,
                    "daysRemainingInPlan": None,
                    "active": True,
                },
            },
        }
    )


@routes.post("/v2/deployments")
async def create_deployment(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        req = parse_create(await read_json(request))
    except InvalidSpec as exc:
        raise ApiError(400, str(exc), field=exc.field) from None
    _check_ingress(request, req.config)
    key = _key(request, req.name)
    plain = DeploymentConfig.from_update(req.config)
    _check_secrets(plain)
    # Secrets reach Redis encrypted (the scaler opens them when it launches a replica).
    config = seal_secrets(plain, store.box)
    now = time.time()
    spec = DeploymentSpec(
        tenant=tenant_of(request)["code"],
        name=req.name,
        uuid=str(uuid.uuid4()),
        description=req.description,
        config=config,
        status="ready",
        revision=1,
        created_at=now,
        updated_at=now,
    )
    _check_engine(spec)
    quotas = await _quotas(request, spec.tenant)
    _check_quotas(spec, quotas)
    refuse_missing(await store.pool(), spec)
    # A scale-to-zero deployment accepts (queues) requests at once, so it is Ready at once;
    # one with min_replicas > 0 becomes Ready when its first replica is (the scaler says so).
    events = [event("Created", 1, f"base model {spec.base_model}")]
    if spec.min_replicas == 0:
        events.append(event("Ready", 1, "accepting requests; replicas start on demand"))
    try:
        created = await store.create_deployment(spec, events, quotas.max_deployments)
    except TenantFull as full:
        raise quota_error(
            QuotaExceeded(
                "name",
                "maxDeploymentsPerTenant",
                full.limit,
                f"tenant {spec.tenant} already has {full.limit} deployment(s), its quota "
                "(maxDeploymentsPerTenant); delete one first",
            )
        ) from None
    if not created:
        existing = await store.get_deployment(key)
        # The SDK retries this POST on 5xx/429: an identical repeat is not a conflict.
        if (
            existing is not None
            and existing.status in VISIBLE
            and seal_secrets(plain, store.box, existing.config) == existing.config
            and existing.description == req.description
        ):
            return web.json_response({"data": await _wire(request, existing)})
        state = "is being deleted" if existing and existing.status == "deleting" else "exists"
        raise ApiError(409, f"deployment {req.name} already {state}", field="name")
    await _announce(request, key, "created")
    return web.json_response({"data": await _wire(request, spec)})


@routes.get(ACCELERATORS_PATH)
async def list_accelerators(request: web.Request) -> web.Response:
    """The pool's SKUs, in all and free, and the models it runs (fresh from Redis)."""
    report = await request.app[STORE].pool()
    return web.json_response({"data": pool_view(report).model_dump()})


@routes.get("/v2/deployments")
async def list_deployments(request: web.Request) -> web.Response:
    store = request.app[STORE]
    kind = request.query.get("type")
    if kind is not None and kind.lower() not in ("serverless", "dedicated", "shared", "private"):
        raise ApiError(400, f"unknown deployment type {kind!r}", field="type")
    specs = await store.list_deployments(tenant_of(request)["code"])
    # Every wakegate deployment is a private (dedicated) one.
    if kind is not None and kind.lower() in ("serverless", "shared"):
        specs = []
    data = [await _wire(request, s) for s in specs if s.status in VISIBLE]
    return web.json_response({"data": data})


def recommended_config(
    base_model: str, accelerator: str | None, quantization: str | None
) -> DeploymentConfig:
    """What `pb.deployments.get_recommended_config` gets: the catalogue's engine, accelerator
    and context window for the model, and wakegate's scale-to-zero defaults. It is checked
    as a create would be (the engine's profile), so it can be created as it is; a value the
    catalogue or the engine refuses raises ApiError naming its query parameter."""
    model = MODELS.get(base_model)
    if model is None:
        known = ", ".join(sorted(MODELS))
        raise ApiError(400, f"unknown base model {base_model!r}; known: {known}", field="baseModel")
    if accelerator is not None and accelerator not in ACCELERATORS:
        known = ", ".join(sorted(ACCELERATORS))
        raise ApiError(
            400, f"unknown accelerator {accelerator!r}; known: {known}", field="accelerator"
        )
    config = DeploymentConfig(
        base_model=model.name,
        accelerator=accelerator or model.default_accelerator,
        quantization=quantization,
        min_replicas=DEFAULT_MIN_REPLICAS,
        max_replicas=DEFAULT_MAX_REPLICAS,
        cooldown_time=DEFAULT_COOLDOWN_S,
        scale_up_threshold=DEFAULT_SCALE_UP_THRESHOLD,
        max_total_tokens=model.context_window,
    )
    now = time.time()
    probe = DeploymentSpec("", "", "", None, config, "ready", 1, now, now)
    try:
        validate_spec(probe)
    except EngineRefused as exc:
        # The profile names config fields; here they came as query parameters.
        raise ApiError(400, str(exc), field=exc.field.removeprefix("config.")) from None
    return config


# Registered before `/v2/deployments/{name}`; the name is reserved (wakegate/spec.py), so no
# deployment is hidden behind it.
@routes.get(f"/v2/deployments/{RECOMMENDED_CONFIG}")
async def get_recommended_config(request: web.Request) -> web.Response:
    """A DeploymentConfig (camelCase, as create takes it) for `baseModel`; the SDK returns
    this body as it is."""
    base_model = request.query.get("baseModel")
    if not base_model:
        raise ApiError(400, "baseModel: required", field="baseModel")
    config = recommended_config(
        base_model, request.query.get("accelerator"), request.query.get("quantization")
    )
    wire = {CONFIG_KEYS[k]: v for k, v in config.to_dict().items()}
    return web.json_response(wire)


@routes.get("/v2/deployments/{name}")
async def get_deployment(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    store = request.app[STORE]
    spec = await _visible(store, _key(request, name), name)
    return web.json_response({"data": await _wire(request, spec)})


# A PUT applies its change to the spec it read and stores it compare-and-set on that spec's
# revision and status (wakegate/store.py REPLACE_SPEC). When something changed the spec in
# between (another PUT, the scaler's status, a DELETE), the change is applied once more to a
# fresh read, as if it had come a moment later; losing that second race too is a 409 naming
# `revision`. A DELETE seen on the fresh read is a 404: the PUT never brings it back.
UPDATE_TRIES = 2


@routes.put("/v2/deployments/{name}")
async def update_deployment(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    store = request.app[STORE]
    key = _key(request, name)
    spec = await _visible(store, key, name)
    try:
        req = parse_update(await read_json(request))
        if req.config:
            _check_secrets(DeploymentConfig.from_update(req.config))
    except InvalidSpec as exc:
        raise ApiError(400, str(exc), field=exc.field) from None
    _check_ingress(request, req.config)
    for attempt in range(UPDATE_TRIES):
        if attempt:
            spec = await _visible(store, key, name)
        try:
            config = merge_config(spec.config, req.config) if req.config else spec.config
        except InvalidSpec as exc:
            raise ApiError(400, str(exc), field=exc.field) from None
        # A secret repeated unchanged keeps its ciphertext: no change, no rolling restart.
        config = seal_secrets(config, store.box, spec.config)
        changed = config.changed_fields(spec.config)
        description = req.description if req.description is not None else spec.description
        revision = spec.revision + 1
        engine_changes = sorted(changed & ENGINE_FIELDS)
        # Engine changes on a deployment with replicas need a rolling replacement (the scaler
        # starts new replicas, waits until they are ready, drains the old ones, then says
        # Ready). Everything else applies live, and so does an engine change at zero replicas.
        rolling = bool(engine_changes) and bool(await store.replicas(key))
        updated = replace(
            spec,
            config=config,
            description=description,
            revision=revision,
            engine_revision=revision if engine_changes else spec.engine_revision,
            # An update is also the way out of "failed": the scaler tries again.
            status="updating" if rolling else "ready",
            updated_at=time.time(),
        )
        if engine_changes:
            _check_engine(updated)
        # The deployment as updated must fit the quotas, whichever field changed: a quota
        # lowered since is met on the next update.
        _check_quotas(updated, await _quotas(request, spec.tenant))
        # Like the quotas: whichever field changed, the deployment as updated must be one the
        # pool can run (a pool that lost a SKU since is met on the next update).
        refuse_missing(await store.pool(), updated)
        if await store.replace_deployment(spec, updated):
            break
    else:
        raise ApiError(
            409,
            f"deployment {name} was changed by another request meanwhile (revision "
            f"{spec.revision}); read it again and retry",
            field="revision",
        )
    message = "changed: " + (", ".join(sorted(changed)) or "nothing")
    events = [event("Updating", revision, message)]
    if not rolling:
        events.append(event("Ready", revision, "applied"))
    await store.append_events(key, events)
    await _announce(request, key, "updated")
    return web.json_response({"data": await _wire(request, updated)})


@routes.delete("/v2/deployments/{name}")
async def delete_deployment(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    store = request.app[STORE]
    key = _key(request, name)
    # A DELETE wins over any PUT in flight: it retries on a fresh read until it has marked the
    # spec `deleting` (a PUT that read before can then no longer write) or finds it gone.
    while True:
        spec = await _visible(store, key, name)
        if await store.replace_deployment(
            spec, replace(spec, status="deleting", updated_at=time.time())
        ):
            break
    await store.append_events(key, [event("Deleted", spec.revision, "deleted by the user")])
    await _announce(request, key, "deleted")
    return web.json_response({})


@routes.get("/llms/{name}/events")
async def deployment_events(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    store = request.app[STORE]
    try:
        validate_name(name)
    except InvalidSpec as exc:
        raise ApiError(400, str(exc), field="name") from None
    key = _key(request, name)
    spec = await store.get_deployment(key)
    if spec is None:
        # The SDK treats status "deleted" as terminal; a 404 here would abort create().
        return web.json_response({"name": name, "deploymentStatus": "deleted", "ComputeEvents": []})
    events = [e for e in await store.events(key) if e.get("revision") == spec.revision]
    status = "deleted" if spec.status == "deleting" else spec.status
    return web.json_response(
        {
            "name": name,
            "deploymentStatus": status,
            "resourceActiveTime": int(time.time() - spec.created_at),
            "ComputeEvents": events,
        }
    )


# Query times lie between the epoch and the end of year 9999 (what ISO 8601 dates reach).
LATEST_TIME_S = 253_402_300_799
# A `+` of a UTC offset that came unescaped in a query string reads as a space (the SDK's
# download_request_logs puts its times in the URL as they are).
_SPACED_OFFSET = re.compile(r"(T[0-9:.]+) ([0-9]{2}(:?[0-9]{2})?)$")


def _time_param(request: web.Request, name: str, default: float) -> int:
    """A query time as ms: ISO 8601 (`2026-11-28T10:00:00Z`; without an offset, UTC) or
    seconds since the epoch."""
    raw = request.query.get(name)
    if raw is None:
        return int(default * 1000)
    try:
        seconds = float(raw)
    except ValueError:
        text = _SPACED_OFFSET.sub(r"\1+\2", raw.strip()).replace("Z", "+00:00")
        try:
            when = datetime.fromisoformat(text)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = when.timestamp()
        except (ValueError, OverflowError, OSError):
            raise ApiError(
                400, f"{name}: use ISO 8601 or seconds since the epoch", field=name
            ) from None
    # `inf`, `nan` and 1e309 parse as floats; no stream id holds them.
    if not 0 <= seconds <= LATEST_TIME_S:
        raise ApiError(
            400, f"{name}: must be a time between 1970 and 9999, not {raw[:40]!r}", field=name
        )
    return int(seconds * 1000)


# A request-log download reads the log in pages of at most this many bytes (and 500 entries).
LOG_PAGE_BYTES = 4 * 1024 * 1024


def log_page_entries(entry_budget: int) -> int:
    """Entries per page of a request-log download: an entry keeps at most four texts of
    `entry_budget` bytes (prompt, output, parameters, error) and some fields besides."""
    return max(1, min(500, LOG_PAGE_BYTES // (4 * entry_budget + 2048)))


@routes.get("/v2/deployments/{name}/requests")
async def request_log(request: web.Request) -> web.StreamResponse:
    """The deployment's request log for [start, end] as JSON lines, oldest first."""
    name = request.match_info["name"]
    store = request.app[STORE]
    spec = await _visible(store, _key(request, name), name)
    start = _time_param(request, "start", 0)
    end = _time_param(request, "end", time.time())
    if start > end:
        raise ApiError(400, "start must not be after end", field="start")
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    after: str | None = None
    count = log_page_entries(request.app[SETTINGS].request_log_max_bytes)
    while True:
        page = await store.request_log(spec.key, start, end, count, after)
        if not page:
            break
        await resp.write(b"".join(json.dumps(e).encode() + b"\n" for _, e in page))
        after = page[-1][0]
    await resp.write_eof()
    return resp


@routes.get("/v2/deployments/{name}/request-logs")
async def download_request_logs(request: web.Request) -> web.StreamResponse:
    """The SDK's `download_request_logs`: the request log for [from, to) as a zip, optionally
    of one adapter's requests (router/request_log.py `write_zip` says what is in it)."""
    name = request.match_info["name"]
    store = request.app[STORE]
    spec = await _visible(store, _key(request, name), name)
    start = _time_param(request, "from", 0)
    end = _time_param(request, "to", time.time())
    if start >= end:
        raise ApiError(400, "to: must be after from", field="to")
    adapter = request.query.get("adapterId")
    if adapter is not None and not (ADAPTER_ID.fullmatch(adapter) and ".." not in adapter):
        raise ApiError(400, f"adapterId: not an adapter id: {adapter[:80]!r}", field="adapterId")
    window = LogWindow(name, start, end, adapter, bool(spec.config.request_logging_enabled))
    resp = web.StreamResponse(
        headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="{name}_logs.zip"',
        }
    )
    await resp.prepare(request)
    await write_zip(window, lambda after: store.request_log(spec.key, start, end - 1, 200, after),
                    resp.write)  # fmt: skip
    await resp.write_eof()
    return resp
