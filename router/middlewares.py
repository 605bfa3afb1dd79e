"""Gateway middlewares: error rendering per API family, then bearer-token authentication.

Tenant tokens open every route but /admin/v1/, which only operator (admin) tokens open; the
two kinds are stored apart (wakegate/store.py), so neither works in the other's place.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from router.context import ADMIN_KEY, STORE, TENANT_KEY, TOKEN_CACHE
from router.errors import ApiError, render

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/healthz", "/metrics", "/openapi.json"})
ADMIN_PREFIX = "/admin/v1/"


def _family(request: web.Request) -> str:
    # The matched route's template, not the path: a path parameter may hold "/v1/" (as %2F).
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else request.path
    if "/deployments/v2/llms/" in path:
        return "openai" if "/v1/" in path else "lorax"
    return "control"


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
    if request.path.startswith(ADMIN_PREFIX):
        request[ADMIN_KEY] = await _admin(request, token)
        return await handler(request)
    tenant = await _tenant(request, token)
    if tenant is None:
        raise ApiError(401, "invalid API token")
    request[TENANT_KEY] = tenant
    return await handler(request)


async def _tenant(request: web.Request, token: str) -> dict[str, Any] | None:
    cache = request.app[TOKEN_CACHE]
    tenant: dict[str, Any] | None = cache.get(token)
    if tenant is None:
        tenant = await request.app[STORE].tenant_for_token(token)
        if tenant is not None:
            cache[token] = tenant
    return tenant


async def _admin(request: web.Request, token: str) -> str:
    """The operator name of an admin token; 403 for a tenant's token, 401 for any other."""
    cache = request.app[TOKEN_CACHE]
    name: str | None = cache.get(("admin", token))
    if name is None:
        name = await request.app[STORE].admin_for_token(token)
        if name is not None:
            cache[("admin", token)] = name
    if name is not None:
        return name
    if await _tenant(request, token) is not None:
        raise ApiError(403, "admin routes need an admin token, not a tenant's API token")
    raise ApiError(401, "invalid admin token")


def tenant_of(request: web.Request) -> dict[str, Any]:
    tenant: dict[str, Any] = request[TENANT_KEY]
    return tenant
