"""Operator API under /admin/v1/: quotas and their per-tenant overrides.

Only admin tokens open these routes (router/middlewares.py): a tenant's token gets 403.
Bodies use the control plane's conventions: camelCase keys, `{"error", "field"}` on 400.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from router.context import QUOTA_CACHE, SETTINGS, STORE
from router.control import read_json
from router.errors import ApiError
from wakegate.quotas import default_quotas, parse_override, quota_report
from wakegate.spec import InvalidSpec, validate_name

routes = web.RouteTableDef()


def _tenant(request: web.Request) -> str:
    tenant = request.match_info["tenant"]
    try:
        return validate_name(tenant, "tenant")
    except InvalidSpec as exc:
        raise ApiError(400, str(exc), field=exc.field) from None


async def _tenant_quotas(request: web.Request, tenant: str) -> dict[str, Any]:
    return await quota_report(request.app[STORE], request.app[SETTINGS], tenant)


@routes.get("/admin/v1/quotas")
async def all_quotas(request: web.Request) -> web.Response:
    """The operator defaults and every tenant's override."""
    overrides = await request.app[STORE].quota_overrides()
    return web.json_response(
        {
            "defaults": default_quotas(request.app[SETTINGS]).to_wire(),
            "overrides": {t: o.to_wire() for t, o in overrides.items()},
        }
    )


@routes.get("/admin/v1/tenants/{tenant}/quotas")
async def get_tenant_quotas(request: web.Request) -> web.Response:
    """A tenant's effective quotas, its override (null: none) and its deployment count."""
    return web.json_response(await _tenant_quotas(request, _tenant(request)))


@routes.put("/admin/v1/tenants/{tenant}/quotas")
async def set_tenant_quotas(request: web.Request) -> web.Response:
    """Set fields of the tenant's override (`null`: unlimited); fields left out are kept."""
    tenant = _tenant(request)
    try:
        change = parse_override(await read_json(request))
    except InvalidSpec as exc:
        raise ApiError(400, str(exc), field=exc.field) from None
    await request.app[STORE].set_quota_override(tenant, change)
    request.app[QUOTA_CACHE].pop(tenant, None)
    return web.json_response(await _tenant_quotas(request, tenant))


@routes.delete("/admin/v1/tenants/{tenant}/quotas")
async def delete_tenant_quotas(request: web.Request) -> web.Response:
    """Remove the tenant's override: the operator defaults apply again."""
    tenant = _tenant(request)
    await request.app[STORE].delete_quota_override(tenant)
    request.app[QUOTA_CACHE].pop(tenant, None)
    return web.json_response(await _tenant_quotas(request, tenant))
