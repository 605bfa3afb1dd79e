"""Gateway middlewares: error rendering per API family, then bearer-token authentication.

The status page's files (/ui) need no token. Tenant tokens open every other route but
/admin/v1/ and /metrics, which only operator (admin) tokens open (and /metrics the metrics
token too); the two kinds are stored apart (wakegate/store.py), so neither works in the
other's place. An address that fails to authenticate `auth_failures_max` times within
`auth_failures_window_s` gets 429 until the window ends.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from router.context import ADMIN_KEY, METRICS_TOKEN, SETTINGS, STORE, TENANT_KEY, TOKEN_CACHE
from router.errors import ApiError, render

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json"})
# The status page and its files (router/ui): the page asks for a token and sends it to the
# JSON routes, which check it like any other. Told by the matched route, not by the path: a
# tenant called "ui" has data-plane paths under /ui/ too.
UI_PAGE = "/ui"
UI_FILE = "/ui/{asset}"
# Opened by the metrics token (a file: `metrics_token_file`, for Prometheus) or an admin token.
METRICS_PATH = "/metrics"
OOM_RETRY_AFTER_S = 5
ADMIN_PREFIX = "/admin/v1/"
# The SDK's download_request_logs reads its errors as `{"error": {"message"}}` (router/errors.py).
REQUEST_LOGS = "/v2/deployments/{name}/request-logs"


# Set on every request by the ingress middleware when the gateway has a private listener:
# True when the request came in on it (direct ingress, README "Direct ingress").
PRIVATE_KEY = "wakegate.private"
# What the private listener serves besides the data plane: liveness, for probes.
PRIVATE_EXTRA_PATHS = frozenset({"/healthz"})


def _template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


def ingress_middleware(private_port: int) -> Middleware:
    """Tells the private listener's requests (by the local port of their connection) from
    the public ones, and answers the private listener's routes that are not the data plane
    404, as a path no route has."""

    @web.middleware
    async def ingress(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        private = isinstance(sockname, tuple) and sockname[1] == private_port
        request[PRIVATE_KEY] = private
        if private and request["wakegate.family"] == "control":
            if _template(request) not in PRIVATE_EXTRA_PATHS:
                raise web.HTTPNotFound()
        return await handler(request)

    return ingress


def on_private_listener(request: web.Request) -> bool:
    """Whether the request came in on the private (direct-ingress) listener."""
    return bool(request.get(PRIVATE_KEY, False))


def _family(request: web.Request) -> str:
    # The matched route's template, not the path: a path parameter may hold "/v1/" (as %2F).
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else request.path
    if "/deployments/v2/llms/" in path:
        return "openai" if "/v1/" in path else "lorax"
    if path == REQUEST_LOGS:
        return "logs"
    # The gateway's own OpenAI base URL (no tenant or deployment name is called "v1").
    return "openai" if path.startswith("/v1/") else "control"


# What clients are told to wait before retrying while Redis is unreachable.
STORE_RETRY_AFTER_S = 2


def http_error(request: web.Request, exc: web.HTTPException) -> ApiError:
    """aiohttp's own 4xx (no route, wrong method) in the API's error shape. Its headers but
    the body's own (Content-Type, Content-Length) are kept: `Allow` on a 405."""
    headers = {
        k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")
    }
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        message = f"method {request.method} is not allowed on {request.path}; allowed: {allowed}"
    elif isinstance(exc, web.HTTPNotFound):
        message = f"no route {request.path}"
    else:
        message = exc.reason
    return ApiError(exc.status, message, headers=headers)


def store_unavailable() -> ApiError:
    """503 with Retry-After: wakegate's state (Redis) cannot be reached right now."""
    return ApiError(
        503,
        f"wakegate's state store is unreachable; retry in {STORE_RETRY_AFTER_S} s",
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether Redis refused a write for its maxmemory: `OutOfMemoryError`, or (Redis 6) a
    script's `ResponseError` carrying the same `-OOM` refusal. Redis refuses a script only at
    its first write, before any effect: nothing is left half-written (wakegate/store.py)."""
    if isinstance(exc, OutOfMemoryError):
        return True
    return isinstance(exc, ResponseError) and "OOM command not allowed" in str(exc)


def out_of_storage() -> ApiError:
    """503 with Retry-After: Redis is at its maxmemory and refuses writes."""
    retry = {"Retry-After": str(OOM_RETRY_AFTER_S)}
    return ApiError(503, "out of storage; retry later", error_type="overloaded", headers=retry)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request["wakegate.family"] = _family(request)
    try:
        return await handler(request)
    except ApiError as err:
        return render(request, err)
    except web.HTTPRequestEntityTooLarge as exc:
        return render(request, ApiError(413, f"request body too large: {exc.text}", field="body"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return render(request, http_error(request, exc))
    except OutOfMemoryError:
        # Redis is at its maxmemory and refuses writes (nothing is left half-written).
        return render(request, out_of_storage())
    except ResponseError as exc:
        if is_out_of_memory(exc):  # refused inside a Lua script (Redis 6 reports it so)
            return render(request, out_of_storage())
        log.exception("unhandled error on %s %s", request.method, request.path)
        return render(request, ApiError(500, "internal error"))
    except (RedisConnectionError, RedisTimeoutError) as exc:
        log.warning("Redis unreachable on %s %s: %s", request.method, request.path, exc)
        return render(request, store_unavailable())
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return render(request, ApiError(500, "internal error"))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS or _ui(request):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing API token: send 'Authorization: Bearer <token>'")
    token = token.strip()
    if request.path == METRICS_PATH:
        # Metrics name every tenant's deployments and traffic: operators only.
        expected = request.app[METRICS_TOKEN]
        if not (expected and hmac.compare_digest(token.encode(), expected.encode())):
            await _admin(request, token)
        return await handler(request)
    if request.path.startswith(ADMIN_PREFIX):
        request[ADMIN_KEY] = await _admin(request, token)
        return await handler(request)
    tenant = await _tenant(request, token)
    if tenant is None:
        raise await _failed(request)
    request[TENANT_KEY] = tenant
    return await handler(request)


def _ui(request: web.Request) -> bool:
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical in (UI_PAGE, UI_FILE)


async def _failed(request: web.Request) -> ApiError:
    """Count a failed authentication of the caller's address: the error to answer, a 429
    once the address has failed too often in the window. Only failures are counted and
    refused: a token that verifies is let in whatever its address did (behind a proxy or
    NAT, every client shares one address)."""
    settings = request.app[SETTINGS]
    failures, retry_s = await request.app[STORE].count_auth_failure(
        _address(request), settings.auth_failures_window_s
    )
    if failures > settings.auth_failures_max:
        return ApiError(
            429,
            f"too many failed authentications from this address; retry in {retry_s} s",
            headers={"Retry-After": str(max(retry_s, 1))},
        )
    return ApiError(401, "invalid admin token" if _admin_path(request) else "invalid API token")


def _admin_path(request: web.Request) -> bool:
    return request.path.startswith(ADMIN_PREFIX) or request.path == METRICS_PATH


def _address(request: web.Request) -> str:
    return request.remote or "unknown"


async def _tenant(request: web.Request, token: str) -> dict[str, Any] | None:
    cache = request.app[TOKEN_CACHE]
    tenant: dict[str, Any] | None = cache.get(token)
    if tenant is None:

        async def fetch() -> dict[str, Any] | None:
            return await request.app[STORE].tenant_for_token(token)

        # One read for a burst with one token.
        tenant = await cache.load(token, fetch)
    return tenant


async def _admin(request: web.Request, token: str) -> str:
    """The operator name of an admin token; 403 for a tenant's token, 401 for any other."""
    cache = request.app[TOKEN_CACHE]
    name: str | None = cache.get(("admin", token))
    if name is None:

        async def fetch() -> str | None:
            return await request.app[STORE].admin_for_token(token)

        name = await cache.load(("admin", token), fetch)
    if name is not None:
        return name
    if await _tenant(request, token) is not None:
        raise ApiError(403, "this route needs an operator (admin) token, not a tenant's API token")
    raise await _failed(request)


def tenant_of(request: web.Request) -> dict[str, Any]:
    tenant: dict[str, Any] = request[TENANT_KEY]
    return tenant
