"""Gateway middlewares: error rendering per API family, then bearer-token authentication."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from router.context import STORE, TENANT_KEY, TOKEN_CACHE
from router.errors import ApiError, render

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/healthz", "/metrics"})


def _family(path: str) -> str:
    if "/deployments/v2/llms/" in path:
        return "openai" if "/v1/" in path else "lorax"
    return "control"


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request["wakegate.family"] = _family(request.path)
    try:
        return await handler(request)
    except ApiError as err:
        return render(request, err)
    except web.HTTPRequestEntityTooLarge as exc:
        return render(request, ApiError(413, f"request body too large: {exc.text}", field="body"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return render(request, ApiError(exc.status, exc.reason, headers=dict(exc.headers)))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return render(request, ApiError(500, "internal error"))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing API token: send 'Authorization: Bearer <token>'")
    token = token.strip()
    cache = request.app[TOKEN_CACHE]
    tenant = cache.get(token)
    if tenant is None:
        tenant = await request.app[STORE].tenant_for_token(token)
        if tenant is not None:
            cache[token] = tenant
    if tenant is None:
        raise ApiError(401, "invalid API token")
    request[TENANT_KEY] = tenant
    return await handler(request)


def tenant_of(request: web.Request) -> dict[str, Any]:
    tenant: dict[str, Any] = request[TENANT_KEY]
    return tenant
