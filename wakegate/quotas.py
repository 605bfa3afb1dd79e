"""Operator quotas: how much one tenant may hold, with per-tenant overrides.

Quotas, each a default from `Settings` that an operator may override per tenant (stored
in Redis, see wakegate/store.py; set with the admin API or `wakegate quota set`):

  maxDeploymentsPerTenant      deployments one tenant has (hard: create answers 403)
  maxReplicasPerDeployment     min/maxReplicas of one deployment (hard: create/update 403)
  maxReplicasPerTenant         replicas the tenant's deployments hold, CPU replicas included.
                               Soft for running (the scaler makes a deployment beyond it wait
                               for capacity); hard for a deployment whose minReplicas alone
                               exceed it.
  maxGpusPerTenant             GPUs the tenant's replicas hold; CPU replicas count none. Soft
                               for running: the scaler makes a deployment beyond it wait for
                               capacity. Hard only for a deployment that could never run
                               within it (one replica, or minReplicas of them, need more).
  guaranteedGpusPerTenant      the operator's grant of reserved capacity: GPUs of the tenant
                               that the allocator serves first and never takes for others
                               (its `usesGuaranteedCapacity` deployments first, then its
                               deployments' `minReplicas`). 0 by default: a create or update
                               asking for `usesGuaranteedCapacity` without a grant is a 403.
  maxQueueLengthPerDeployment  requests waiting per deployment; a deployment's own
                               `maxQueueLength` above it is accepted, stored as given and
                               clamped where it is used (`queue_limit`).
  maxAsyncJobsPerTenant        async requests the tenant has stored (queued, running or
                               results kept), and
  maxAsyncBytesPerTenant       the bytes they take (request and result): a submission
                               beyond either answers 429 naming it. Counted in Redis with
                               each job's expiry (wakegate/store.py `reserve_job`): a job
                               counts until it expires or its deployment is deleted.
  maxRequestLogBytesPerDeployment  bytes of entries one deployment's request log keeps (the
                               oldest go first): with maxDeploymentsPerTenant, what the
                               tenant's request logs may take.

`None` is unlimited (for the queue, unlimited means the largest `maxQueueLength` any
deployment may set; for the grant, every GPU the tenant holds). This module is a shared
contract: the gateway checks and the scaler bounds with the same values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Protocol, cast

from pydantic import Field, StrictInt

from wakegate.catalog import pool_units
from wakegate.settings import Settings
from wakegate.spec import (
    MAX_QUEUE_LENGTH,
    MAX_REPLICAS,
    DeploymentSpec,
    WireModel,
    parse_object,
)

# Largest values an override may hold: far above any real installation, and finite.
MAX_DEPLOYMENTS_QUOTA = 100_000
MAX_GPUS_QUOTA = 1_000_000

DeploymentsQuota = Annotated[StrictInt, Field(ge=0, le=MAX_DEPLOYMENTS_QUOTA)]
ReplicasQuota = Annotated[StrictInt, Field(ge=0, le=MAX_REPLICAS)]
TenantReplicasQuota = Annotated[StrictInt, Field(ge=0, le=MAX_GPUS_QUOTA)]
GpusQuota = Annotated[StrictInt, Field(ge=0, le=MAX_GPUS_QUOTA)]
# Every queue is bounded: at least one request may wait.
QueueQuota = Annotated[StrictInt, Field(ge=1, le=MAX_QUEUE_LENGTH)]
# Async requests (jobs) per tenant, and the bytes they may take.
MAX_JOBS_QUOTA = 10_000_000
MAX_JOB_BYTES_QUOTA = 1 << 40
JobsQuota = Annotated[StrictInt, Field(ge=0, le=MAX_JOBS_QUOTA)]
JobBytesQuota = Annotated[StrictInt, Field(ge=0, le=MAX_JOB_BYTES_QUOTA)]
LogBytesQuota = Annotated[StrictInt, Field(ge=0, le=MAX_JOB_BYTES_QUOTA)]


@dataclass(frozen=True)
class Quotas:
    """A tenant's effective quotas. None: unlimited."""

    max_deployments: int | None  # per tenant
    max_replicas: int | None  # per deployment
    max_gpus: int | None  # per tenant, GPUs its replicas hold
    max_queue_length: int  # per deployment, requests waiting
    max_tenant_replicas: int | None = None  # per tenant, replicas held (CPU ones included)
    guaranteed_gpus: int | None = 0  # per tenant, GPUs of reserved capacity granted
    max_async_jobs: int | None = None  # per tenant, async requests stored
    max_async_bytes: int | None = None  # per tenant, bytes of its async requests
    max_request_log_bytes: int | None = None  # per deployment, bytes its request log keeps

    def to_wire(self) -> dict[str, int | None]:
        return {
            "maxDeploymentsPerTenant": self.max_deployments,
            "maxReplicasPerDeployment": self.max_replicas,
            "maxReplicasPerTenant": self.max_tenant_replicas,
            "maxGpusPerTenant": self.max_gpus,
            "guaranteedGpusPerTenant": self.guaranteed_gpus,
            "maxQueueLengthPerDeployment": self.max_queue_length,
            "maxAsyncJobsPerTenant": self.max_async_jobs,
            "maxAsyncBytesPerTenant": self.max_async_bytes,
            "maxRequestLogBytesPerDeployment": self.max_request_log_bytes,
        }


class QuotaOverride(WireModel):
    """A tenant's override of the operator defaults, as the admin API and the CLI take it.

    A field left out keeps the default (or the override already stored); `null` is
    unlimited. The only model that validates quota values: both edges use it.
    """

    max_deployments_per_tenant: DeploymentsQuota | None = None
    max_replicas_per_deployment: ReplicasQuota | None = None
    max_replicas_per_tenant: TenantReplicasQuota | None = None
    max_gpus_per_tenant: GpusQuota | None = None
    guaranteed_gpus_per_tenant: GpusQuota | None = None
    max_queue_length_per_deployment: QueueQuota | None = None
    max_async_jobs_per_tenant: JobsQuota | None = None
    max_async_bytes_per_tenant: JobBytesQuota | None = None
    max_request_log_bytes_per_deployment: LogBytesQuota | None = None

    def merged(self, change: QuotaOverride) -> QuotaOverride:
        """This override with the fields `change` sets replaced."""
        fields = {**self.to_record(), **change.to_record()}
        return QuotaOverride.model_validate(fields)

    def to_record(self) -> dict[str, int | None]:
        """The fields that are set (snake_case), null included: what is stored."""
        return self.model_dump(exclude_unset=True)

    def to_wire(self) -> dict[str, int | None]:
        return self.model_dump(exclude_unset=True, by_alias=True)


def parse_override(body: Any) -> QuotaOverride:
    """Validate an override from the edge; InvalidSpec names the offending field (in
    camelCase, whichever spelling came in)."""
    return parse_object(QuotaOverride, body, camel_case=True)


def default_quotas(settings: Settings) -> Quotas:
    return Quotas(
        max_deployments=settings.quota_max_deployments_per_tenant,
        max_replicas=settings.quota_max_replicas_per_deployment,
        max_gpus=settings.quota_max_gpus_per_tenant,
        max_queue_length=settings.max_queue_length,
        max_tenant_replicas=settings.quota_max_replicas_per_tenant,
        guaranteed_gpus=settings.quota_guaranteed_gpus_per_tenant,
        max_async_jobs=settings.quota_max_async_jobs_per_tenant,
        max_async_bytes=settings.quota_max_async_bytes_per_tenant,
        max_request_log_bytes=settings.quota_max_request_log_bytes_per_deployment,
    )


def effective_quotas(defaults: Quotas, override: QuotaOverride | None) -> Quotas:
    """The defaults with what the override sets in their place."""
    if override is None:
        return defaults
    given = override.model_fields_set

    def pick(field: str, default: int | None) -> int | None:
        return cast(int | None, getattr(override, field)) if field in given else default

    queue = pick("max_queue_length_per_deployment", defaults.max_queue_length)
    return Quotas(
        max_deployments=pick("max_deployments_per_tenant", defaults.max_deployments),
        max_replicas=pick("max_replicas_per_deployment", defaults.max_replicas),
        max_gpus=pick("max_gpus_per_tenant", defaults.max_gpus),
        # An unlimited queue is the longest that any deployment may ask for.
        max_queue_length=MAX_QUEUE_LENGTH if queue is None else queue,
        max_tenant_replicas=pick("max_replicas_per_tenant", defaults.max_tenant_replicas),
        guaranteed_gpus=pick("guaranteed_gpus_per_tenant", defaults.guaranteed_gpus),
        max_async_jobs=pick("max_async_jobs_per_tenant", defaults.max_async_jobs),
        max_async_bytes=pick("max_async_bytes_per_tenant", defaults.max_async_bytes),
        max_request_log_bytes=pick(
            "max_request_log_bytes_per_deployment", defaults.max_request_log_bytes
        ),
    )


class QuotaRecords(Protocol):
    """What quotas read from the store (wakegate/store.py Store, which imports this module)."""

    async def quota_override(self, tenant: str) -> QuotaOverride | None: ...

    async def tenant_deployment_count(self, tenant: str) -> int: ...

    async def job_usage(self, tenant: str) -> tuple[int, int]: ...


async def tenant_quotas(store: QuotaRecords, settings: Settings, tenant: str) -> Quotas:
    """A tenant's effective quotas: the operator defaults merged with its override."""
    return effective_quotas(default_quotas(settings), await store.quota_override(tenant))


async def quota_report(store: QuotaRecords, settings: Settings, tenant: str) -> dict[str, Any]:
    """What the admin API and `wakegate quota show` print for a tenant: the effective quotas,
    its override, the defaults and how many deployments it has."""
    defaults = default_quotas(settings)
    override = await store.quota_override(tenant)
    return {
        "tenant": tenant,
        "quotas": effective_quotas(defaults, override).to_wire(),
        "override": override.to_wire() if override is not None else None,
        "defaults": defaults.to_wire(),
        "deployments": await store.tenant_deployment_count(tenant),
        **_job_usage_report(*await store.job_usage(tenant)),
    }


def _job_usage_report(jobs: int, job_bytes: int) -> dict[str, int]:
    return {"asyncJobs": jobs, "asyncBytes": job_bytes}


def queue_limit(spec: DeploymentSpec, quotas: Quotas) -> int:
    """Requests that may wait for this deployment: its own `maxQueueLength` (the quota when
    unset), never more than the quota."""
    wanted = spec.config.max_queue_length or quotas.max_queue_length
    return min(int(wanted), quotas.max_queue_length)


def gpus_per_replica(spec: DeploymentSpec) -> int:
    """GPUs one replica of this deployment holds; a CPU replica holds none."""
    sku, units = pool_units(spec.accelerator)
    return 0 if sku == "cpu" else units


class QuotaExceeded(Exception):
    """A deployment is beyond a hard quota. `field` is the JSON path of the value that is,
    `quota` the quota's wire name, `limit` its value."""

    def __init__(self, field: str, quota: str, limit: int, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.quota = quota
        self.limit = limit
        self.message = message


def check_deployment(spec: DeploymentSpec, quotas: Quotas) -> None:
    """Refuse a deployment beyond the hard quotas: replicas per deployment, replicas and
    GPUs per tenant where the deployment alone could never run within them, and
    `usesGuaranteedCapacity` beyond the tenant's grant. Raises QuotaExceeded."""
    _check_guaranteed(spec, quotas)
    tenant_limit = quotas.max_tenant_replicas
    if tenant_limit is not None and spec.min_replicas > tenant_limit:
        raise QuotaExceeded(
            "config.minReplicas",
            "maxReplicasPerTenant",
            tenant_limit,
            f"config.minReplicas: {spec.min_replicas} is above the quota of {tenant_limit} "
            "replicas per tenant (maxReplicasPerTenant)",
        )
    limit = quotas.max_replicas
    if limit is not None:
        replicas = (("minReplicas", spec.min_replicas), ("maxReplicas", spec.max_replicas))
        for field, value in replicas:
            if value > limit:
                raise QuotaExceeded(
                    f"config.{field}",
                    "maxReplicasPerDeployment",
                    limit,
                    f"config.{field}: {value} is above the quota of {limit} replicas per "
                    "deployment (maxReplicasPerDeployment)",
                )
    gpu_limit = quotas.max_gpus
    per_replica = gpus_per_replica(spec)
    if gpu_limit is None or per_replica == 0:
        return
    if per_replica > gpu_limit:
        field = _accelerator_field(spec)
        raise QuotaExceeded(
            field,
            "maxGpusPerTenant",
            gpu_limit,
            f"{field}: one replica on {spec.accelerator} needs {per_replica} GPU(s), above "
            f"the quota of {gpu_limit} GPUs per tenant (maxGpusPerTenant)",
        )
    if spec.min_replicas * per_replica > gpu_limit:
        raise QuotaExceeded(
            "config.minReplicas",
            "maxGpusPerTenant",
            gpu_limit,
            f"config.minReplicas: {spec.min_replicas} replicas of {per_replica} GPU(s) each "
            f"need {spec.min_replicas * per_replica}, above the quota of {gpu_limit} GPUs per "
            "tenant (maxGpusPerTenant)",
        )


def _check_guaranteed(spec: DeploymentSpec, quotas: Quotas) -> None:
    """`usesGuaranteedCapacity` is the operator's to grant: refused without a grant, on CPU
    (the grant is in GPUs) and where one replica needs more GPUs than the grant."""
    grant = quotas.guaranteed_gpus
    if not spec.config.uses_guaranteed_capacity or grant is None:
        return
    field = "config.usesGuaranteedCapacity"
    per_replica = gpus_per_replica(spec)
    if grant == 0:
        why = "the tenant has no reserved capacity: the operator grants it"
    elif per_replica == 0:
        why = f"a replica on {spec.accelerator} holds no GPU, and reserved capacity is GPUs"
    elif per_replica > grant:
        why = f"one replica on {spec.accelerator} needs {per_replica} GPU(s), above the grant"
    else:
        return
    raise QuotaExceeded(
        field,
        "guaranteedGpusPerTenant",
        grant,
        f"{field}: {why} (guaranteedGpusPerTenant={grant})",
    )


def _accelerator_field(spec: DeploymentSpec) -> str:
    """Where the deployment's accelerator came from."""
    if spec.config.accelerator:
        return "config.accelerator"
    if spec.config.compute_spec:
        return "config.computeSpec"
    return "config.baseModel"
