"""The pool's accelerators on the gateway: the scaler's report (wakegate/pool.py), read from
Redis at most once per POOL_TTL_S per gateway, so the data plane's check costs a dict lookup,
and the refusal of a create or update that needs what the pool lacks. `GET /v2/accelerators`,
which lists the pool, is in router/control.py.
"""

from __future__ import annotations

from router.errors import ApiError
from router.lookups import LoadingCache
from wakegate.catalog import MODELS
from wakegate.pool import PoolReport
from wakegate.spec import DeploymentSpec
from wakegate.store import Store

# A SKU that joins or leaves the pool reaches the data plane within this plus the scaler's
# REPORT_EVERY_S; the control plane reads the report fresh.
POOL_TTL_S = 2.0
ACCELERATORS_PATH = "/v2/accelerators"


async def current_pool(cache: LoadingCache, store: Store) -> PoolReport | None:
    """The report as of at most the cache's TTL (POOL_TTL_S) ago; None: the pool is unknown."""

    async def fetch() -> tuple[PoolReport | None]:
        return (await store.pool(),)  # a 1-tuple: "unknown" is cached too

    got: tuple[PoolReport | None] | None = await cache.load("pool", fetch)
    assert got is not None
    return got[0]


def missing_accelerator(pool: PoolReport | None, spec: DeploymentSpec) -> str | None:
    """Why the deployment can never get a replica in this pool, or None."""
    model = MODELS.get(spec.config.base_model or "")
    if pool is None or model is None:
        return None
    return pool.missing(spec.accelerator, model.engine)


def refuse_missing(pool: PoolReport | None, spec: DeploymentSpec) -> None:
    """A create or update that needs what the pool lacks: 400 naming the field that chose the
    accelerator (the model's default chose it when neither accelerator field is set)."""
    why = missing_accelerator(pool, spec)
    if why is None:
        return
    if spec.config.accelerator:
        field = "config.accelerator"
    elif spec.config.compute_spec is not None:
        field = "config.computeSpec"
    else:
        field = "config.baseModel"
    raise ApiError(400, why, field=field)
