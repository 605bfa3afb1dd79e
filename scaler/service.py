"""The scaler's control loop: leadership, wake-ups, and passes of observe, decide, share, act.

Only deployments with something to do are looked at: one with a cold request, an event
(MQTT wake, load, config), a change to its spec, or a due timer (deployments holding replicas
or load are due every `reconcile_interval_s`: cooldowns, drains, backoff). Events are the fast
path; the Redis set `wg:dirty` (marked by gateways on a cold request and on every spec write)
is polled every `reconcile_interval_s` as the level path; a full sweep over every deployment
every `full_sweep_interval_s` is the safety net for anything lost. So 10,000 deployments at
zero cost a sweep now and then, and a wake never waits behind one: woken deployments are
passed before any backlog, and a sweep yields between its small batches.

A pass reads its deployments in one round trip (wakegate/store.py `observe`), gets each one's
verdict (scaler/decide.py: policy, replica plan, demand on the pool), drains what the plan
retires, lets the allocator share the pool among every deployment that wants more
(scaler/sharing.py, scaler/allocator.py), and the actuator (scaler/actuator.py) starts and
stops replicas, reporting their outcomes back here. Only the instance holding the Redis lease
acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace

from scaler.actuator import Actuator, Outcome
from scaler.allocator import MODES, Mode
from scaler.backends import Backend
from scaler.decide import DeploymentState, decide
from scaler.metrics import ScalerMetrics
from scaler.plan import Backoff
from scaler.policies import Decision
from scaler.sharing import Sharing
from scaler.status import announce_ready, finish_rollout, mark_failed
from wakegate import topics
from wakegate.bus import Bus
from wakegate.pool import REPORT_EVERY_S
from wakegate.settings import Settings
from wakegate.spec import DeploymentSpec
from wakegate.status import HISTORY_SAMPLE_S, decision_due, sample, sample_due
from wakegate.store import Observed, ReplicaRecord, Store

log = logging.getLogger(__name__)

# Deployments read per pass (one round trip); more wait for the next pass, woken ones first.
PASS_BATCH = 256
# Deployments read per page of a sweep: small enough that a wake waits at most a few
# milliseconds of the sweep's parsing.
SWEEP_BATCH = 200


class Scaler:
    def __init__(self, settings: Settings, store: Store, backend: Backend) -> None:
        if settings.allocator not in MODES:
            raise ValueError(f"unknown allocator {settings.allocator!r}; known: {', '.join(MODES)}")
        mode: Mode = settings.allocator
        self.settings = settings
        self.store = store
        self.backend = backend
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
        self.sharing = Sharing(settings, store, self.actuator, self.metrics, mode, self.publish)
        self.is_leader = False
        self._states: dict[str, DeploymentState] = {}
        self._registries: dict[str, list[ReplicaRecord]] = {}  # of the active deployments
        self._due: dict[str, float] = {}  # next pass of each active deployment
        self._urgent: set[str] = set()  # woken by an event: passed first
        self._dirty: set[str] = set()  # found by a sweep or a timer
        self._wakeup = asyncio.Event()
        self._publishing: set[asyncio.Task[bool]] = set()
        self._passing = False  # a pass is under way (the sweep waits for it)
        # The status overview's records (wakegate/status.py): the last load sample stored
        # and the last decision recorded of each deployment, and what this pass adds.
        self._sampled: dict[str, list[float]] = {}
        self._decided: dict[str, tuple[int, int, str]] = {}
        self._new_decisions: list[tuple[str, dict[str, object]]] = []
        self._new_samples: list[tuple[str, list[float]]] = []

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            if self.bus is not None:
                tg.create_task(self.bus.run())
            tg.create_task(self._leadership_loop())
            tg.create_task(self._pass_loop())
            tg.create_task(self._every(self.settings.reconcile_interval_s, self._level))
            tg.create_task(self._every(self.settings.full_sweep_interval_s, self._sweep))
            tg.create_task(self._every(REPORT_EVERY_S, self._report_pool))

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
                # What an earlier term of this instance knew may be stale: start from Redis.
                self._reset()
                self.is_leader = True
                try:
                    await self._report_pool()
                    await self.actuator.sync_with_backend(None)
                    await self._sweep()
                except Exception:
                    log.exception("taking over failed; the next sweep retries")
            elif not held and self.is_leader:
                log.warning("%s lost the leader lease", self.instance_id)
                self.is_leader = False
            self.metrics.is_leader.set(1 if self.is_leader else 0)
            await asyncio.sleep(self.settings.scaler_lease_ttl_s / 3)

    def _reset(self) -> None:
        for key in list(self.sharing.demands):
            self._forget(key)
        self._registries.clear()
        self._states.clear()
        self._sampled.clear()
        self._decided.clear()
        self._due.clear()
        self._urgent.clear()
        self._dirty.clear()

    async def _every(self, interval_s: float, work: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            if not self.is_leader:
                continue
            try:
                await work()
            except Exception:
                log.exception("%s failed", getattr(work, "__name__", work))

    async def _report_pool(self) -> None:
        """What the pool has, for the gateways (wakegate/pool.py); a SKU that joined or left
        shows within REPORT_EVERY_S."""
        try:
            await self.sharing.report_pool()
        except Exception as exc:
            # The report expires by itself; gateways then refuse nothing on its word.
            log.warning("reporting the pool failed: %s", exc)

    def schedule_pass(self, *keys: str, urgent: bool = False) -> None:
        """Pass these deployments soon; urgent ones (events) before any backlog."""
        (self._urgent if urgent else self._dirty).update(keys)
        self._wakeup.set()

    async def _on_event(self, kind: str, ev: topics.Event) -> None:
        if self.is_leader:
            self.schedule_pass(ev.deployment, urgent=True)

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
        self.schedule_pass(*await self.store.take_dirty(), urgent=True)
        await self.actuator.sync_with_backend({k: v for k, v in self._registries.items() if v})

    async def _sweep(self) -> None:
        """Every deployment, in batches: those holding replicas or load, being deleted or
        updated, or kept above zero by min_replicas are passed; idle ones cost one read."""
        started = time.monotonic()
        cursor = 0
        while True:
            # Page by page, never the whole index at once: a wake waits at most one page.
            cursor, keys = await self.store.scan_deployments(cursor, SWEEP_BATCH)
            for row in await self.store.sweep(keys):
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
                    self.schedule_pass(row.key)
            if cursor == 0:
                break
            # A pass (a wake among them) runs before the next page, not interleaved with it:
            # every await of a pass would otherwise let a page of parsing in.
            await asyncio.sleep(0)
            while self._passing or self._urgent:
                await asyncio.sleep(0.002)
        self.metrics.sweep_seconds.set(time.monotonic() - started)

    async def _pass_loop(self) -> None:
        while True:
            next_due = min(self._due.values(), default=None)
            timeout = None if next_due is None else max(0.0, next_due - time.time())
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
            batch += sorted(self._dirty - set(batch))[: PASS_BATCH - len(batch)]
            self._urgent.difference_update(batch)
            self._dirty.difference_update(batch)
            if not batch:
                continue
            self._passing = True
            try:
                await self.pass_once(batch)
            except Exception:
                log.exception("pass over %d deployment(s) failed", len(batch))
                for key in batch:
                    self._due[key] = time.time() + self.settings.reconcile_interval_s
            finally:
                self._passing = False

    # --- one pass ---------------------------------------------------------------------------

    async def pass_once(self, keys: list[str]) -> None:
        """Observe, decide and act for these deployments, then share the pool."""
        for key in keys:
            self._due.pop(key, None)
        now = time.time()
        for seen in await self.store.observe(keys):
            try:
                await self._pass_one(seen, now)
            except Exception:
                log.exception("%s: pass failed", seen.key)
                self._due[seen.key] = now + self.settings.reconcile_interval_s
        await self.sharing.allocate()
        await self._record_status()
        self.metrics.passes.inc()

    async def _record_status(self) -> None:
        """The pass's decisions and load samples, in one write: for people (the status
        overview), so a failure is logged and scaling goes on."""
        decisions, samples = self._new_decisions, self._new_samples
        self._new_decisions, self._new_samples = [], []
        try:
            await self.store.record_status(decisions, samples)
        except Exception as exc:
            log.warning("recording %d status sample(s) failed: %s", len(samples), exc)

    async def _pass_one(self, seen: Observed, now: float) -> None:
        key, spec = seen.key, seen.spec
        if spec is None:
            self._forget(key)
            return
        if spec.status == "deleting":
            await self._retire(seen, now)
            return
        before = self._states.get(key, DeploymentState())
        verdict, state = decide(
            seen,
            before,
            await self.sharing.quotas(spec.tenant),
            now,
            self.actuator.takes(spec),
            self.settings.reclaim_grace_s,
        )
        self._states[key] = state
        self._observe_metrics(seen)
        self._sample(seen, now)
        await self._report(key, before.last_reason_kind, verdict.current, verdict.decision)
        for rec in verdict.plan.victims:
            await self.actuator.drain(rec)
        if spec.status == "updating" and verdict.plan.rollout_done:
            await finish_rollout(self.store, spec)
        if verdict.active:
            self.sharing.update(spec, verdict.demand)
            self._registries[key] = seen.replicas
            due = now + self.settings.reconcile_interval_s
            if state.backoff.holds(now) and verdict.plan.to_start:
                due = min(due, state.backoff.retry_at + 0.05)
            self._due[key] = due
        else:
            self._forget(key)
            self.metrics.idle(key)
        await self.sharing.settle_wait(key, verdict.demand.need, seen.waiting)

    async def _retire(self, seen: Observed, now: float) -> None:
        """A deleted deployment: drain everything, then forget it."""
        if await self.actuator.retire_all(seen.replicas):
            await self.store.purge_deployment(seen.key)
            self._forget(seen.key)
            self._states.pop(seen.key, None)
            self._sampled.pop(seen.key, None)
            self._decided.pop(seen.key, None)
            self.metrics.forget(seen.key)
            log.info("%s deleted", seen.key)
        else:
            self._due[seen.key] = now + self.settings.reconcile_interval_s

    def _forget(self, key: str) -> None:
        self.sharing.forget(key)
        self._registries.pop(key, None)
        self._due.pop(key, None)

    async def _report(self, key: str, last_kind: str, current: int, decision: Decision) -> None:
        desired, reason = decision.desired, decision.reason
        # Log changes of count or of kind of reason, not every pass of a countdown.
        kind = reason.split(":")[0]
        if desired != current or kind != last_kind:
            log.info("%s: %d -> %d (%s)", key, current, desired, reason)
        if decision_due(self._decided.get(key), current, desired, reason):
            self._decided[key] = (current, desired, kind)
            self._new_decisions.append(
                (key, {"at": time.time(), "current": current, "desired": desired, "reason": reason})
            )
        elif desired == current:
            self._decided.pop(key, None)
        if desired != current:
            self.metrics.decisions.labels(key, kind).inc()
            await self.publish(
                "decision",
                topics.ScaleDecided(
                    deployment=key, current=current, desired=desired, reason=reason
                ),
            )

    def _sample(self, seen: Observed, now: float) -> None:
        new = sample(now, seen.load.queued, seen.load.in_flight, (r.state for r in seen.replicas))
        if sample_due(self._sampled.get(seen.key), new, HISTORY_SAMPLE_S):
            self._sampled[seen.key] = new
            self._new_samples.append((seen.key, new))

    def _observe_metrics(self, seen: Observed) -> None:
        self.metrics.queue_depth.labels(seen.key).set(seen.load.queued)
        self.metrics.in_flight.labels(seen.key).set(seen.load.in_flight)
        for st in ("starting", "ready", "draining"):
            self.metrics.replicas.labels(seen.key, st).set(
                sum(1 for r in seen.replicas if r.state == st)
            )

    # --- outcomes from the actuator -----------------------------------------------------------

    async def _on_outcome(self, key: str, spec: DeploymentSpec | None, outcome: Outcome) -> None:
        state = self._states.get(key, DeploymentState())
        if outcome.kind == "ready":
            state = replace(state, backoff=Backoff())
            if outcome.startup_s is not None:
                state = state.started_in(outcome.startup_s)
            self._states[key] = state
            await announce_ready(self.store, key)
            self.schedule_pass(key, urgent=True)
        elif outcome.kind == "failed" and spec is not None:
            await self._start_failed(spec, state, outcome.reason)
        elif outcome.kind == "refused" and spec is not None:
            await mark_failed(self.store, spec, outcome.reason)
        elif outcome.kind == "no_room":
            self._due[key] = time.time() + self.settings.reconcile_interval_s
            self._wakeup.set()
        elif outcome.kind == "stopped":
            # A replica gave its units back: whoever waits for them gets a pass now.
            self.schedule_pass(key, *self.sharing.wanting(), urgent=True)

    async def _start_failed(self, spec: DeploymentSpec, state: DeploymentState, why: str) -> None:
        backoff = state.backoff.after_failure(time.time(), spec.revision)
        self._states[spec.key] = replace(state, backoff=backoff)
        self.metrics.replica_failures.labels(spec.key).inc()
        delay = backoff.retry_at - time.time()
        log.warning(
            "%s: start failed (%d in a row, retry in %.0fs): %s",
            spec.key,
            backoff.failures,
            delay,
            why,
        )
        await self.publish(
            "replica", topics.ReplicaChanged(deployment=spec.key, replica_id="", state="failed")
        )
        if backoff.exhausted:
            await mark_failed(self.store, spec, why)
        else:
            # The retry is due then, whether or not another pass or an event comes by.
            asyncio.get_running_loop().call_later(
                max(0.0, delay) + 0.05, lambda: self.schedule_pass(spec.key, urgent=True)
            )

    # --- for tests and tools ------------------------------------------------------------------

    async def reconcile(self, keys: Iterable[str]) -> None:
        """One pass over these deployments now (tests; the loop does this by itself)."""
        await self.pass_once(sorted(keys))
