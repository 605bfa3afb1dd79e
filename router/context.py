"""Typed keys for what the gateway app holds (created in cleanup contexts, never globals)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from router.lookups import LoadingCache
from wakegate.settings import Settings
from wakegate.store import Store

if TYPE_CHECKING:
    from router.dispatch import Dispatcher
    from router.health import HealthRecorder
    from router.holding import Holding
    from router.jobs import JobRunner
    from router.metrics import GatewayMetrics
    from router.storage import StorageWatch
    from wakegate.bus import Bus

SETTINGS = web.AppKey("settings", Settings)
# Short-lived caches of what every request looks up: API token -> tenant, key -> deployment
# (router/lookups.py: concurrent misses of one key share one read).
TOKEN_CACHE = web.AppKey("token_cache", LoadingCache)
SPEC_CACHE = web.AppKey("spec_cache", LoadingCache)
# Tenant code -> effective Quotas (wakegate/quotas.py), so requests do not read Redis for them.
QUOTA_CACHE = web.AppKey("quota_cache", LoadingCache)
# The scaler's report of the pool's accelerators (router/pool.py), one entry.
POOL_CACHE = web.AppKey("pool_cache", LoadingCache)
STORE = web.AppKey("store", Store)
UPSTREAM = web.AppKey("upstream", aiohttp.ClientSession)
DISPATCHER: web.AppKey[Dispatcher] = web.AppKey("dispatcher")
# Waiting requests and open streams, re-checked and kept alive in bulk (router/holding.py).
HOLDING: web.AppKey[Holding] = web.AppKey("holding")
METRICS: web.AppKey[GatewayMetrics] = web.AppKey("metrics")
HEALTH: web.AppKey[HealthRecorder] = web.AppKey("health")
JOBS: web.AppKey[JobRunner] = web.AppKey("jobs")
BUS: web.AppKey[Bus | None] = web.AppKey("bus")
# How full Redis is (router/storage.py): bulk writes stop above the operator's share.
STORAGE: web.AppKey[StorageWatch] = web.AppKey("storage")
# The token that opens /metrics besides admin tokens ("" : none configured).
METRICS_TOKEN = web.AppKey("metrics_token", str)

# Set on each authenticated request by the auth middleware: the tenant record, or on
# /admin/v1 routes the operator name of the admin token.
TENANT_KEY = "wakegate.tenant"
ADMIN_KEY = "wakegate.admin"
