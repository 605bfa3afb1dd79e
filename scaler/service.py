"""The scaler's control loop: leadership, wake-ups, and passes of observe, decide, allocate, act.

Only deployments with something to do are looked at: one with a cold request, an event
(MQTT wake, load, config), a change to its spec, or a due timer (deployments holding replicas
or load are due every `reconcile_interval_s`: cooldowns, drains, backoff). Events are the fast
path; the Redis set `wg:dirty` (marked by gateways on a cold request and on every spec write)
is polled every `reconcile_interval_s` as the level path; a full sweep over every deployment
every `full_sweep_interval_s` is the safety net for anything lost. So 10,000 deployments at
zero cost a sweep now and then, and a wake never waits behind one: woken deployments are
passed before any backlog of the sweep.

A pass reads its deployments in one round trip (wakegate/store.py `observe`), runs each one's
policy (scaler/policies/), plans starts and drains (scaler/plan.py), lets the allocator share
the pool among every deployment that wants more (scaler/allocator.py), and hands the result
to the actuator (scaler/actuator.py), which owns the replicas' lifecycles and reports their
outcomes back here. Only the instance holding the Redis lease acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from cachetools import TTLCache

from scaler.actuator import Actuator, Outcome
from scaler.allocator import MODES, Demand, Mode, allocate, static_caps
from scaler.backends import Backend
from scaler.metrics import ScalerMetrics
from scaler.plan import Backoff, active_count, plan_replicas, reclaimable
from scaler.policies import Observation, ScalingConfig, get_policy
from wakegate import topics
from wakegate.bus import Bus
from wakegate.events import event
from wakegate.quotas import Quotas, tenant_quotas
from wakegate.settings import Settings
from wakegate.spec import DeploymentSpec
from wakegate.store import Observed, Store

log = logging.getLogger(__name__)

# Deployments read per pass (one round trip); more wait for the next pass, woken ones first.
PASS_BATCH = 256
# Deployments read per round trip of a sweep: small enough that a wake waits at most a few
# milliseconds of the sweep's parsing.
SWEEP_BATCH = 200
# An operator's quota change reaches the scaler within this long.
QUOTA_TTL_S = 5.0


@dataclass
class DeploymentState:
    """What the loop remembers of one deployment between passes."""

    policy_name: str = ""
    policy_state: Any = None
    # Launch-to-ready seconds of the latest replicas: what a scale-up costs in time.
    startup_samples: deque[float] = field(default_factory=lambda: deque(maxlen=5))
    backoff: Backoff = field(default_factory=Backoff)
    last_reason_kind: str = ""
    wanting_since: float | None = None  # since when it wants more replicas than it has

    def startup_s(self) -> float | None:
        return statistics.median(self.startup_samples) if self.startup_samples else None


class Scaler:
    def __init__(self, settings: Settings, store: Store, backend: Backend) -> None:
        if settings.allocator not in MODES:
            raise ValueError(f"unknown allocator {settings.allocator!r}; known: {', '.join(MODES)}")
        self.settings = settings
        self.store = store
        self.backend = backend
        self.mode: Mode = settings.allocator
        self.instance_id = f"scaler-{uuid.uuid4().hex[:8]}"
        self.metrics = ScalerMetrics()
        self.bus: Bus | None = None
        if settings.mqtt_url:
            self.bus = Bus(
                settings.mqtt_url,
                "wakegate-scaler",
                subscriptions=[
                    topics.all_of("wake"),
                    topics.all_of("load"),
                    topics.all_of("config"),
                ],
                handler=self._on_event,
            )
        self.actuator = Actuator(
            settings, store, backend, self.metrics, self.publish, self._on_outcome
        )
        self.is_leader = False
        self._states: dict[str, DeploymentState] = {}
        # Every deployment that holds replicas or wants some: what the allocator shares out.
        self._demands: dict[str, Demand] = {}
        self._specs: dict[str, DeploymentSpec] = {}
        self._registries: dict[str, list[Any]] = {}  # replica records of those deployments
        self._due: dict[str, float] = {}  # next pass of each active deployment
        self._urgent: set[str] = set()  # woken by an event: passed first
        self._dirty: set[str] = set()  # found by a sweep or a timer
        self._wakeup = asyncio.Event()
        self._waiting: dict[str, str] = {}  # deployments announced waiting for capacity
        self._publishing: set[asyncio.Task[bool]] = set()
        self._quotas: TTLCache[str, Quotas] = TTLCache(maxsize=100_000, ttl=QUOTA_TTL_S)

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            if self.bus is not None:
                tg.create_task(self.bus.run())
            tg.create_task(self._leadership_loop())
            tg.create_task(self._pass_loop())
            tg.create_task(self._every(self.settings.reconcile_interval_s, self._level))
            tg.create_task(self._every(self.settings.full_sweep_interval_s, self._sweep))

    async def close(self) -> None:
        await self.actuator.close()
        if self.is_leader:
            with contextlib.suppress(Exception):
                await self.store.resign_leadership(self.instance_id)
        await self.backend.close()

    async def _leadership_loop(self) -> None:
        ttl_ms = int(self.settings.scaler_lease_ttl_s * 1000)
        while True:
            try:
                held = await self.store.hold_leadership(self.instance_id, ttl_ms)
            except Exception as exc:
                log.warning("leader lease check failed: %s", exc)
                held = False
            if held and not self.is_leader:
                log.info("%s is the leader; adopting running replicas", self.instance_id)
                self.is_leader = True
                try:
                    await self.actuator.sync_with_backend(None)
                    await self._sweep()
                except Exception:
                    log.exception("taking over failed; the next sweep retries")
            elif not held and self.is_leader:
                log.warning("%s lost the leader lease", self.instance_id)
                self.is_leader = False
            self.metrics.is_leader.set(1 if self.is_leader else 0)
            await asyncio.sleep(self.settings.scaler_lease_ttl_s / 3)

    async def _every(self, interval_s: float, work: Any) -> None:
        while True:
            await asyncio.sleep(interval_s)
            if not self.is_leader:
                continue
            try:
                await work()
            except Exception:
                log.exception("%s failed", work.__name__)

    def mark(self, *keys: str, urgent: bool = False) -> None:
        """Pass these deployments soon; urgent ones (events) before any backlog."""
        (self._urgent if urgent else self._dirty).update(keys)
        self._wakeup.set()

    async def _on_event(self, kind: str, ev: topics.Event) -> None:
        if self.is_leader:
            self.mark(ev.deployment, urgent=True)

    async def publish(self, kind: topics.Kind, ev: topics.Event) -> None:
        """Publish in the background: a QoS 1 publish waits for the broker's ack (tens of
        ms), and no pass or replica start waits for an event to go out. Tasks start in the
        order they are made, so a deployment's events keep their order."""
        if self.bus is None:
            return
        task = asyncio.create_task(self.bus.publish(kind, ev))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    # --- what to pass -----------------------------------------------------------------------

    async def _level(self) -> None:
        """The level path: deployments marked dirty in Redis, replicas the backend lost."""
        self.mark(*await self.store.take_dirty(), urgent=True)
        await self.actuator.sync_with_backend({k: v for k, v in self._registries.items() if v})

    async def _sweep(self) -> None:
        """Every deployment, in batches: those holding replicas or load, being deleted or
        updated, or kept above zero by min_replicas are passed; idle ones cost one read."""
        started = time.monotonic()
        keys = await self.store.deployment_keys()
        for i in range(0, len(keys), SWEEP_BATCH):
            for row in await self.store.sweep(keys[i : i + SWEEP_BATCH]):
                spec = row.spec
                if spec is None:
                    continue
                if (
                    row.replicas
                    or row.load
                    or spec.status in ("deleting", "updating")
                    or spec.min_replicas > 0
                    or row.key in self._due
                ):
                    self.mark(row.key)
            await asyncio.sleep(0)  # woken deployments go between batches
        self.metrics.sweep_seconds.set(time.monotonic() - started)

    async def _pass_loop(self) -> None:
        while True:
            now = time.time()
            next_due = min(self._due.values(), default=None)
            timeout = None if next_due is None else max(0.0, next_due - now)
            if not (self._urgent or self._dirty):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
            self._wakeup.clear()
            if not self.is_leader:
                self._urgent.clear()
                self._dirty.clear()
                self._due.clear()
                continue
            now = time.time()
            self._dirty.update(k for k, t in self._due.items() if t <= now)
            batch = sorted(self._urgent)[:PASS_BATCH]
            rest = sorted(self._dirty - set(batch))[: PASS_BATCH - len(batch)]
            batch += rest
            self._urgent.difference_update(batch)
            self._dirty.difference_update(batch)
            if not batch:
                continue
            try:
                await self.pass_once(batch)
            except Exception:
                log.exception("pass over %d deployment(s) failed", len(batch))
                for key in batch:
                    self._due[key] = time.time() + self.settings.reconcile_interval_s

    # --- one pass ---------------------------------------------------------------------------

    async def pass_once(self, keys: list[str]) -> None:
        """Observe, decide and act for these deployments, then share the pool."""
        for key in keys:
            self._due.pop(key, None)
        now = time.time()
        for observed in await self.store.observe(keys):
            try:
                await self._consider(observed, now)
            except Exception:
                log.exception("%s: reconcile failed", observed.key)
                self._due[observed.key] = now + self.settings.reconcile_interval_s
        await self._allocate()
        self.metrics.passes.inc()

    async def _consider(self, seen: Observed, now: float) -> None:
        key, spec = seen.key, seen.spec
        if spec is None:
            self._forget(key)
            return
        if spec.status == "deleting":
            if await self.actuator.retire_all(seen.replicas):
                await self.store.purge_deployment(key)
                self._forget(key)
                self._states.pop(key, None)
                self.metrics.forget(key)
                log.info("%s deleted", key)
            else:
                self._due[key] = now + self.settings.reconcile_interval_s
            return
        state = self._states.setdefault(key, DeploymentState())
        state.backoff = state.backoff.for_revision(spec.revision)
        active = [r for r in seen.replicas if r.state in ("starting", "ready")]
        draining = [r for r in seen.replicas if r.state == "draining"]
        current = active_count(active, spec.engine_revision)
        load = seen.load
        observation = Observation(
            queued=load.queued,
            in_flight=load.in_flight,
            last_activity_at=load.last_activity_ms / 1000 if load.last_activity_ms else None,
            observed_at=now,
            arrivals_total=load.arrivals_total,
            completions_total=load.completions_total,
            startup_s=state.startup_s(),
            slots=sum(r.concurrency for r in active),
        )
        policy_name, params = spec.scaling_policy
        policy = get_policy(policy_name)
        if state.policy_name != policy_name:
            state.policy_name, state.policy_state = policy_name, policy.initial_state()
        quotas = await self._quota(spec.tenant)
        # A quota lowered after the deployment was made bounds it from now on.
        max_replicas = spec.max_replicas
        if quotas.max_replicas is not None:
            max_replicas = min(max_replicas, quotas.max_replicas)
        config = ScalingConfig(
            min_replicas=min(spec.min_replicas, max_replicas),
            max_replicas=max_replicas,
            scale_up_threshold=spec.scale_up_threshold,
            cooldown_s=spec.cooldown_s,
            params=params,
        )
        if spec.status == "failed":
            # Stay down until the user updates the deployment; hold what is running.
            config = ScalingConfig(0, current, config.scale_up_threshold, 0)
        decision, state.policy_state = policy.decide(
            now, observation, config, current, state.policy_state
        )
        self._observe_metrics(key, seen)
        await self._report(key, state, current, decision.desired, decision.reason)
        outdated = any(r.revision < spec.engine_revision for r in active)
        busy = (
            await self.store.in_flight_by_replica(key)
            if outdated or len(active) > decision.desired
            else {}
        )
        plan = plan_replicas(active, spec.engine_revision, decision.desired, busy)
        for rec in plan.victims:
            await self.actuator.drain(rec)
        if spec.status == "updating" and plan.rollout_done:
            await self._finish_rollout(spec)
        need = 0 if spec.status == "failed" or state.backoff.holds(now) else plan.to_start
        if need > 0 and state.wanting_since is None:
            state.wanting_since = now
        elif need == 0:
            state.wanting_since = None
        victims = {r.id for r in plan.victims}
        staying = [r for r in active if r.id not in victims]
        sku, units = self.actuator.takes(spec)
        demand = Demand(
            key=key,
            tenant=spec.tenant,
            sku=sku,
            units=units,
            holding=len(active) + len(draining),
            need=need,
            cold=load.queued > 0 and not active,
            draining=len(draining) + len(victims),
            guaranteed=bool(spec.config.get("uses_guaranteed_capacity")),
            reclaimable=reclaimable(
                staying,
                load=load.queued + load.in_flight,
                min_replicas=spec.min_replicas,
                guaranteed=bool(spec.config.get("uses_guaranteed_capacity")),
                now=now,
                grace_s=self.settings.reclaim_grace_s,
            ),
            since=state.wanting_since or now,
        )
        if seen.replicas or need or load.queued or load.in_flight or spec.status == "updating":
            self._demands[key] = demand
            self._specs[key] = spec
            self._registries[key] = seen.replicas
            due = now + self.settings.reconcile_interval_s
            if state.backoff.holds(now) and plan.to_start:
                due = min(due, state.backoff.retry_at + 0.05)
            self._due[key] = due
        else:
            self._forget(key)
            self.metrics.idle(key)
        if need == 0 and (key in self._waiting or seen.waiting):
            await self._stop_waiting(key)
        elif need > 0 and seen.waiting and key not in self._waiting:
            self._waiting[key] = str(seen.waiting.get("reason", ""))  # a former leader's

    def _forget(self, key: str) -> None:
        self._demands.pop(key, None)
        self._specs.pop(key, None)
        self._registries.pop(key, None)
        self._due.pop(key, None)
        self._waiting.pop(key, None)

    async def _report(
        self, key: str, state: DeploymentState, current: int, desired: int, reason: str
    ) -> None:
        # Log changes of count or of kind of reason, not every pass of a countdown.
        kind = reason.split(":")[0]
        if desired != current or kind != state.last_reason_kind:
            log.info("%s: %d -> %d (%s)", key, current, desired, reason)
        state.last_reason_kind = kind
        if desired != current:
            self.metrics.decisions.labels(key, kind).inc()
            await self.publish(
                "decision",
                topics.Decision(deployment=key, current=current, desired=desired, reason=reason),
            )

    def _observe_metrics(self, key: str, seen: Observed) -> None:
        self.metrics.queue_depth.labels(key).set(seen.load.queued)
        self.metrics.in_flight.labels(key).set(seen.load.in_flight)
        for st in ("starting", "ready", "draining"):
            self.metrics.replicas.labels(key, st).set(
                sum(1 for r in seen.replicas if r.state == st)
            )

    # --- sharing the pool -------------------------------------------------------------------

    async def _allocate(self) -> None:
        demands = list(self._demands.values())
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
        gpu_quota = {t: (await self._quota(t)).max_gpus for t in {d.tenant for d in demands}}
        allocation = allocate(free, demands, mode=self.mode, gpu_quota=gpu_quota, caps=caps)
        for key, count in allocation.starts.items():
            spec = self._specs[key]
            for _ in range(count):
                await self.actuator.start(spec)
            d = self._demands[key]
            # Until the next observation of this deployment, what was started counts as held.
            self._demands[key] = replace(d, need=d.need - count, holding=d.holding + count)
        for victim, replica_ids in allocation.reclaims.items():
            await self._reclaim(victim, replica_ids)
        for key, why in allocation.waiting.items():
            d = self._demands[key]
            await self._start_waiting(key, why, d.need)
        for key in [k for k in self._waiting if k not in allocation.waiting]:
            if self._demands.get(key) is None or self._demands[key].need <= 0:
                await self._stop_waiting(key)

    async def _quota(self, tenant: str) -> Quotas:
        quotas = self._quotas.get(tenant)
        if quotas is None:
            quotas = await tenant_quotas(self.store, self.settings, tenant)
            self._quotas[tenant] = quotas
        return quotas

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
        """Drain idle replicas of `victim` for a deployment the pool left out."""
        load = await self.store.load(victim)
        if load.queued or load.in_flight:
            return  # it got work since it was observed: no longer idle
        records = {r.id: r for r in await self.store.replicas(victim)}
        taken = [records[r] for r in replica_ids if r in records and records[r].state == "ready"]
        for rec in taken:
            await self.actuator.drain(rec)
        if not taken:
            return
        d = self._demands.get(victim)
        if d is not None:
            gone = {r.id for r in taken}
            self._demands[victim] = replace(
                d,
                draining=d.draining + len(taken),
                reclaimable=tuple(r for r in d.reclaimable if r not in gone),
            )
            self.metrics.reclaims.labels(d.sku).inc(len(taken))
        message = f"{len(taken)} idle replica(s) reclaimed for a deployment with queued requests"
        log.info("%s: %s", victim, message)
        spec = self._specs.get(victim)
        await self.store.append_events(
            victim, [event("Reclaimed", spec.revision if spec else 0, message)]
        )
        await self.publish(
            "decision",
            topics.Decision(
                deployment=victim,
                current=len(records),
                desired=len(records) - len(taken),
                reason=f"reclaim: {message}",
            ),
        )

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
        await self.publish(
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
        await self.publish("capacity", topics.CapacityWait(deployment=key, waiting=False))

    # --- outcomes from the actuator -----------------------------------------------------------

    async def _on_outcome(self, key: str, spec: DeploymentSpec | None, outcome: Outcome) -> None:
        state = self._states.setdefault(key, DeploymentState())
        if outcome.kind == "ready":
            state.backoff = Backoff()
            if outcome.startup_s is not None:
                state.startup_samples.append(outcome.startup_s)
            await self._announce_ready(key)
            self.mark(key, urgent=True)
        elif outcome.kind == "failed" and spec is not None:
            await self._start_failed(spec, state, outcome.reason)
        elif outcome.kind == "refused" and spec is not None:
            await self._mark_failed(spec, outcome.reason)
        elif outcome.kind == "no_room":
            self._due[key] = time.time() + self.settings.reconcile_interval_s
            self._wakeup.set()
        elif outcome.kind == "stopped":
            # A replica gave its units back: whoever waits for them gets a pass now.
            self.mark(key, *(k for k, d in self._demands.items() if d.need > 0), urgent=True)

    async def _start_failed(self, spec: DeploymentSpec, state: DeploymentState, why: str) -> None:
        state.backoff = state.backoff.after_failure(time.time(), spec.revision)
        self.metrics.replica_failures.labels(spec.key).inc()
        delay = state.backoff.retry_at - time.time()
        log.warning(
            "%s: start failed (%d in a row, retry in %.0fs): %s",
            spec.key,
            state.backoff.failures,
            delay,
            why,
        )
        await self.publish(
            "replica", topics.ReplicaChanged(deployment=spec.key, replica_id="", state="failed")
        )
        if state.backoff.exhausted:
            await self._mark_failed(spec, why)
        else:
            # The retry is due then, whether or not another pass or an event comes by.
            asyncio.get_running_loop().call_later(
                max(0.0, delay) + 0.05, lambda: self.mark(spec.key, urgent=True)
            )

    async def _mark_failed(self, spec: DeploymentSpec, why: str) -> None:
        current = await self.store.get_deployment(spec.key)
        if current is None or current.status in ("failed", "deleting"):
            return
        await self.store.put_deployment(replace(current, status="failed", updated_at=time.time()))
        await self.store.append_events(spec.key, [event("Failed", current.revision, why)])
        log.error("%s failed: %s", spec.key, why)

    async def _finish_rollout(self, spec: DeploymentSpec) -> None:
        current = await self.store.get_deployment(spec.key)
        if current is None or current.status != "updating" or current.revision != spec.revision:
            return
        await self.store.put_deployment(replace(current, status="ready", updated_at=time.time()))
        await self.store.append_events(
            spec.key, [event("Ready", spec.revision, "rolling update complete")]
        )
        log.info("%s: rolling update to revision %d complete", spec.key, spec.revision)

    async def _announce_ready(self, key: str) -> None:
        """Deployments that wait for a replica (min_replicas > 0) get their Ready event now."""
        spec = await self.store.get_deployment(key)
        if spec is None:
            return
        events = [e for e in await self.store.events(key) if e.get("revision") == spec.revision]
        if not any(e["eventType"] == "Ready" for e in events):
            await self.store.append_events(
                key, [event("Ready", spec.revision, "first replica is ready")]
            )

    # --- for tests and tools ------------------------------------------------------------------

    async def reconcile(self, keys: Iterable[str]) -> None:
        """One pass over these deployments now (tests; the loop does this by itself)."""
        await self.pass_once(sorted(keys))
