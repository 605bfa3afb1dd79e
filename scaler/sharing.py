"""The shared pool as the control loop sees it: every active deployment's demand, the
allocator's verdict applied (starts, reclaims), and who waits for capacity and why.

The allocator (scaler/allocator.py) decides; this applies: it starts replicas through the
actuator, drains reclaimed ones, and announces each capacity wait once (a Redis record that
`GET /v2/deployments/{name}` shows, a `WaitingForCapacity` event, an MQTT `capacity` event,
a gauge), and its end (`CapacityAvailable`). It also reports the pool itself to Redis
(wakegate/pool.py), which gateways read to refuse what needs a SKU the pool does not have.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from cachetools import TTLCache

from scaler.actuator import Actuator
from scaler.allocator import Demand, Mode, allocate, static_caps
from scaler.backends import Backend
from scaler.metrics import ScalerMetrics
from wakegate import topics
from wakegate.catalog import ACCELERATORS, ENGINES, MODELS
from wakegate.events import event
from wakegate.pool import CPU, PoolReport, pool_totals
from wakegate.quotas import Quotas, tenant_quotas
from wakegate.settings import Settings
from wakegate.spec import DeploymentConfig, DeploymentSpec
from wakegate.store import Store

log = logging.getLogger(__name__)

# An operator's quota change reaches the scaler within this long.
QUOTA_TTL_S = 5.0

Publisher = Callable[[topics.Kind, topics.Event], Awaitable[None]]


class Sharing:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        actuator: Actuator,
        metrics: ScalerMetrics,
        mode: Mode,
        publish: Publisher,
    ) -> None:
        self.settings = settings
        self.store = store
        self.actuator = actuator
        self.metrics = metrics
        self.mode = mode
        self._publish = publish
        # Every deployment that holds replicas or wants some: what the allocator shares out.
        self.demands: dict[str, Demand] = {}
        self._specs: dict[str, DeploymentSpec] = {}
        self._waiting: dict[str, str] = {}  # deployments announced waiting, and why
        self._quotas: TTLCache[str, Quotas] = TTLCache(maxsize=100_000, ttl=QUOTA_TTL_S)
        self.pool: PoolReport | None = None  # the last report made

    async def quotas(self, tenant: str) -> Quotas:
        quotas = self._quotas.get(tenant)
        if quotas is None:
            quotas = await tenant_quotas(self.store, self.settings, tenant)
            self._quotas[tenant] = quotas
        return quotas

    def update(self, spec: DeploymentSpec, demand: Demand) -> None:
        self.demands[spec.key] = demand
        self._specs[spec.key] = spec

    def forget(self, key: str) -> None:
        self.demands.pop(key, None)
        self._specs.pop(key, None)
        self._waiting.pop(key, None)

    def wanting(self) -> list[str]:
        """Deployments that want replicas they do not have yet."""
        return [k for k, d in self.demands.items() if d.need > 0]

    async def settle_wait(self, key: str, need: int, stored: dict[str, object] | None) -> None:
        """Align the wait of a deployment just observed: one that needs nothing waits no
        more; one a former leader announced waiting keeps its announcement."""
        if need == 0 and (key in self._waiting or stored):
            await self._stop_waiting(key)
        elif need > 0 and stored and key not in self._waiting:
            self._waiting[key] = str(stored.get("reason", ""))

    # --- the pool's report ---------------------------------------------------------------------

    async def report_pool(self) -> PoolReport:
        """Tell the gateways what the pool has (every SKU, in all and free now) and store it."""
        backend = self.actuator.backend
        free = await backend.free_accelerators()
        held: dict[str, int] = {}
        for d in self.demands.values():
            held[d.sku] = held.get(d.sku, 0) + d.holding * d.units
        self.pool = PoolReport(
            backend=backend.name,
            at=time.time(),
            skus=pool_totals(free, held),
            cpu_engines=cpu_engines(backend),
            complete=backend.knows_whole_pool and not self.settings.pool_autoscaled,
        )
        await self.store.put_pool(self.pool)
        return self.pool

    def _missing(self, key: str) -> str | None:
        """Why the deployment can never get a replica from this pool, if that is why."""
        spec = self._specs.get(key)
        if self.pool is None or spec is None or spec.base_model not in MODELS:
            return None
        return self.pool.missing(spec.accelerator, MODELS[spec.base_model].engine)

    # --- one allocation -----------------------------------------------------------------------

    async def allocate(self) -> None:
        demands = list(self.demands.values())
        if not any(d.need > 0 for d in demands):
            return
        free = await self.actuator.free_units()
        for sku, units in free.items():
            self.metrics.pool_free.labels(sku).set(units)
        caps = None
        if self.mode == "static":
            total = dict(free)
            for d in demands:
                if total.get(d.sku, 0) != -1:
                    total[d.sku] = total.get(d.sku, 0) + d.holding * d.units
            caps = static_caps(total, await self._static_members(demands))
        quotas = {t: await self.quotas(t) for t in {d.tenant for d in demands}}
        allocation = allocate(
            free,
            demands,
            mode=self.mode,
            gpu_quota={t: q.max_gpus for t, q in quotas.items()},
            caps=caps,
            replica_quota={t: q.max_tenant_replicas for t, q in quotas.items()},
            grants={t: q.guaranteed_gpus for t, q in quotas.items()},
        )
        for key, count in allocation.starts.items():
            for _ in range(count):
                await self.actuator.start(self._specs[key])
            d = self.demands[key]
            # Until the next observation of this deployment, what was started counts as held.
            self.demands[key] = replace(d, need=d.need - count, holding=d.holding + count)
        for victim, replica_ids in allocation.reclaims.items():
            await self._reclaim(victim, replica_ids)
        for key, why in allocation.waiting.items():
            await self._start_waiting(key, self._missing(key) or why, self.demands[key].need)
        for key in [k for k in self._waiting if k not in allocation.waiting]:
            if self.demands.get(key) is None or self.demands[key].need <= 0:
                await self._stop_waiting(key)

    async def _static_members(self, demands: list[Demand]) -> list[Demand]:
        """Every deployment shares in a static partition, idle ones included."""
        known = {d.key for d in demands}
        others = [k for k in await self.store.deployment_keys() if k not in known]
        members = list(demands)
        for spec in await self.store.list_specs(others) if others else []:
            sku, units = self.actuator.takes(spec)
            members.append(Demand(spec.key, spec.tenant, sku, units, 0))
        return members

    async def _reclaim(self, victim: str, replica_ids: tuple[str, ...]) -> None:
        """Drain replicas of `victim` for a deployment the pool left out: idle ones, unless
        they are wanted again since it was observed; starting ones the allocator took from a
        tenant above its fair share (cancelled: stopped before they serve), unless they
        became ready meanwhile; and serving ones it took from such a tenant (their requests
        in flight finish first)."""
        d = self.demands.get(victim)
        if d is None:
            return
        queued = (await self.store.load(victim)).queued
        busy = await self.store.in_flight_by_replica(victim)
        records = {r.id: r for r in await self.store.replicas(victim)}
        idle, cancelled, serving = [], [], []
        for rid in replica_ids:
            rec = records.get(rid)
            if rec is None:
                continue
            if rid in d.cancellable or (rid in d.floor and rec.state == "starting"):
                if rec.state == "starting":
                    cancelled.append(rec)
            elif rec.state != "ready":
                continue
            elif rid in d.drainable or (rid in d.floor and (queued or busy)):
                serving.append(rec)
            elif not queued and not busy:
                idle.append(rec)  # its deployment is still idle
        taken = idle + cancelled + serving
        if not taken:
            return
        for rec in taken:
            await self.actuator.drain(rec)  # a start the backend has not returned is recalled
        gone = {r.id for r in taken}
        self.demands[victim] = replace(
            d,
            draining=d.draining + len(taken),
            reclaimable=tuple(r for r in d.reclaimable if r not in gone),
            cancellable=tuple(r for r in d.cancellable if r not in gone),
            drainable=tuple(r for r in d.drainable if r not in gone),
            floor=tuple(r for r in d.floor if r not in gone),
        )
        self.metrics.reclaims.labels(d.sku).inc(len(taken))
        parts = []
        if idle:
            parts.append(
                f"{len(idle)} idle replica(s) reclaimed for a deployment with queued requests"
            )
        if cancelled:
            parts.append(
                f"{len(cancelled)} starting replica(s) cancelled for a deployment at zero of a "
                "tenant below its fair share (nothing ran on them yet)"
            )
        if serving:
            parts.append(
                f"{len(serving)} replica(s) drained for a deployment at zero of a tenant below "
                "its fair share (requests in flight finish)"
            )
        below = sum(1 for r in taken if r.id in d.floor)
        if below:
            parts.append(
                f"{below} of them below minReplicas (its tenant holds more than its fair share "
                "and has no reserved capacity for them: guaranteedGpusPerTenant)"
            )
        message = "; ".join(parts)
        log.info("%s: %s", victim, message)
        spec = self._specs.get(victim)
        await self.store.append_events(
            victim, [event("Reclaimed", spec.revision if spec else 0, message)]
        )
        await self._publish(
            "decision",
            topics.ScaleDecided(
                deployment=victim,
                current=len(records),
                desired=len(records) - len(taken),
                reason=f"reclaim: {message}",
            ),
        )

    # --- capacity waits -----------------------------------------------------------------------

    async def _start_waiting(self, key: str, why: str, wanted: int) -> None:
        if self._waiting.get(key) == why:
            return
        first = key not in self._waiting
        self._waiting[key] = why
        self.metrics.waiting.labels(key).set(1)
        await self.store.set_waiting(key, {"since": time.time(), "reason": why, "wanted": wanted})
        if first:
            spec = self._specs.get(key)
            log.info("%s: waiting for capacity (%s)", key, why)
            await self.store.append_events(
                key, [event("WaitingForCapacity", spec.revision if spec else 0, why)]
            )
        await self._publish(
            "capacity", topics.CapacityWait(deployment=key, waiting=True, reason=why, wanted=wanted)
        )

    async def _stop_waiting(self, key: str) -> None:
        was = self._waiting.pop(key, None)
        self.metrics.waiting.labels(key).set(0)
        await self.store.clear_waiting(key)
        if was is None:
            return
        spec = self._specs.get(key)
        log.info("%s: capacity available", key)
        await self.store.append_events(
            key, [event("CapacityAvailable", spec.revision if spec else 0, "replicas starting")]
        )
        await self._publish("capacity", topics.CapacityWait(deployment=key, waiting=False))


def cpu_engines(backend: Backend) -> frozenset[str]:
    """The engines `backend` runs on CPU replica slots whatever the accelerator (the local
    backend's CPU engines on a host without GPUs): those it places on `cpu` for every GPU
    accelerator of the catalogue."""
    gpu_accelerators = [a.id for a in ACCELERATORS.values() if a.gpu_count > 0]
    out = set()
    for engine in ENGINES:
        probes = (
            DeploymentSpec(
                tenant="pool",
                name="probe",
                uuid="",
                description="",
                config=DeploymentConfig(accelerator=acc),
                status="ready",
                revision=1,
                created_at=0.0,
                updated_at=0.0,
            )
            for acc in gpu_accelerators
        )
        if all(backend.takes(spec, engine)[0] == CPU for spec in probes):
            out.add(engine)
    return frozenset(out)
