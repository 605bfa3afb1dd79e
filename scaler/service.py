"""The scaler's control loop: observe Redis, decide (scaler/policies/), actuate the backend.

Edge and level: MQTT events (wake, load, config) make a deployment's reconcile run at once; a
pass over every deployment every `reconcile_interval_s` makes the outcome certain even when
events are lost. Only the instance holding the Redis lease acts. Replica start, readiness
probing and drain run as tasks so one slow replica never stalls the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from scaler.backends import Backend, RunningReplica
from scaler.engines import EngineProfile, EngineRefused, get_engine
from scaler.metrics import ScalerMetrics
from scaler.policies import Observation, ScalingConfig, get_policy
from wakegate import topics
from wakegate.bus import Bus
from wakegate.catalog import MODELS
from wakegate.events import event
from wakegate.settings import Settings
from wakegate.spec import DeploymentSpec
from wakegate.store import ReplicaRecord, Store

log = logging.getLogger(__name__)

# Consecutive failed starts after which a deployment is marked failed.
MAX_START_FAILURES = 3


@dataclass
class DeploymentState:
    policy_name: str = ""
    policy_state: Any = None
    # Launch-to-ready seconds of the latest replicas: what a scale-up costs in time.
    startup_samples: deque[float] = field(default_factory=lambda: deque(maxlen=5))

    def startup_s(self) -> float | None:
        return statistics.median(self.startup_samples) if self.startup_samples else None

    consecutive_failures: int = 0
    retry_after: float = 0.0
    # The revision that failed: an update past it starts afresh, without the backoff.
    failed_revision: int | None = None
    last_reason_kind: str = ""


class Scaler:
    def __init__(self, settings: Settings, store: Store, backend: Backend) -> None:
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
        self.is_leader = False
        self._states: dict[str, DeploymentState] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}  # replica id -> start/probe/drain task
        self._reserved: set[str] = set()  # replica ids registered, task not yet spawned
        self._locks: dict[str, asyncio.Lock] = {}
        self._kicks: asyncio.Queue[str] = asyncio.Queue()
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(5.0))
        self._background: set[asyncio.Task[None]] = set()

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            if self.bus is not None:
                tg.create_task(self.bus.run())
            tg.create_task(self._leadership_loop())
            tg.create_task(self._reconcile_loop())
            tg.create_task(self._kick_loop())

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.is_leader:
            with contextlib.suppress(Exception):
                await self.store.resign_leadership(self.instance_id)
        await self._http.aclose()
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
                await self.adopt()
                self.kick_all()
            elif not held and self.is_leader:
                log.warning("%s lost the leader lease", self.instance_id)
                self.is_leader = False
            self.metrics.is_leader.set(1 if self.is_leader else 0)
            await asyncio.sleep(self.settings.scaler_lease_ttl_s / 3)

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reconcile_interval_s)
            if self.is_leader:
                self.kick_all()

    def kick_all(self) -> None:
        self._kicks.put_nowait("*")

    def kick(self, deployment: str) -> None:
        self._kicks.put_nowait(deployment)

    async def _kick_loop(self) -> None:
        while True:
            first = await self._kicks.get()
            batch = {first}
            while not self._kicks.empty():
                batch.add(self._kicks.get_nowait())
            if not self.is_leader:
                continue
            try:
                if "*" in batch:
                    await self.sync_with_backend()
                    keys = await self.store.deployment_keys()
                else:
                    keys = sorted(batch)
                await asyncio.gather(*(self.reconcile(k) for k in keys))
            except Exception:
                log.exception("reconcile pass failed")

    async def _on_event(self, kind: str, ev: topics.Event) -> None:
        if self.is_leader:
            self.kick(ev.deployment)

    async def publish(self, kind: topics.Kind, ev: topics.Event) -> None:
        if self.bus is not None:
            await self.bus.publish(kind, ev)

    # --- adoption and liveness --------------------------------------------------------------

    async def adopt(self) -> None:
        """Take over what the backend runs (called when this instance becomes the leader)."""
        await self.sync_with_backend()

    async def sync_with_backend(self) -> None:
        """Make the replica registry and what the backend runs agree.

        A live replica nobody watches is adopted (probed, then routable) or stopped when its
        deployment is gone; a registry entry without a live process is removed.
        """
        running = await self.backend.list()
        for rep in running:
            if self._busy(rep.replica_id):
                continue
            if not rep.alive:
                await self.backend.stop(rep, 0)
                continue
            spec = await self.store.get_deployment(rep.deployment)
            rec = await self.store.replica(rep.deployment, rep.replica_id)
            if spec is None or (spec.status == "deleting" and rec is None):
                log.info(
                    "stopping replica %s of missing deployment %s", rep.replica_id, rep.deployment
                )
                self._spawn(rep.replica_id, self._stop(rep, None))
                continue
            if rec is None:
                engine = get_engine(
                    MODELS[spec.base_model].engine, self.settings.replica_concurrency, spec=spec
                )
                rec = ReplicaRecord(
                    id=rep.replica_id,
                    deployment=rep.deployment,
                    revision=rep.revision,
                    state="starting",
                    url=rep.url,
                    dialect=engine.dialect,
                    concurrency=engine.concurrency,
                    backend=self.backend.name,
                    cheap_logprobs=engine.cheap_logprobs,
                    handle=rep.handle,
                    created_at=time.time(),
                )
                await self.store.put_replica(rec)
            if rec.state == "ready":
                continue
            if rec.state == "starting" and not rec.url:
                # The last leader stopped between the backend's launch and the record of its
                # address: the backend knows where the replica listens.
                rec.url, rec.handle = rep.url, rep.handle
                if not await self.store.advance_replica(rec):
                    continue  # withdrawn meanwhile: the drain stops it
            log.info("adopted replica %s of %s (%s)", rep.replica_id, rep.deployment, rec.state)
            if rec.state == "starting":
                # Its launch time is unknown: the start-up is not measured.
                self._spawn(rec.id, self._probe(spec, rec, time.time(), measured=False))
            elif rec.state == "draining":
                self._spawn(rec.id, self._drain(rec))
        alive = {r.replica_id for r in running if r.alive}
        for key in await self.store.deployment_keys():
            for rec in await self.store.replicas(key):
                if rec.id in alive or self._busy(rec.id):
                    continue
                log.warning("replica %s of %s is gone; removing it", rec.id, key)
                self.metrics.replica_failures.labels(key).inc()
                await self.store.remove_replica(key, rec.id)
                await self.publish(
                    "replica",
                    topics.ReplicaChanged(deployment=key, replica_id=rec.id, state="failed"),
                )

    def _busy(self, replica_id: str) -> bool:
        """A task of this instance is starting, probing, draining or stopping the replica."""
        return replica_id in self._tasks or replica_id in self._reserved

    # --- the decision -----------------------------------------------------------------------

    async def reconcile(self, key: str) -> None:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            spec = await self.store.get_deployment(key)
            if spec is None:
                return
            replicas = await self.store.replicas(key)
            if spec.status == "deleting":
                await self._delete(spec, replicas)
                return
            state = self._states.setdefault(key, DeploymentState())
            active = [r for r in replicas if r.state in ("starting", "ready")]
            outdated = [r for r in active if r.revision < spec.engine_revision]
            # While a rolling update replaces old replicas one for one, the deployment has
            # as many logical replicas as the larger of the two generations.
            current = max(len(outdated), len(active) - len(outdated)) if outdated else len(active)
            load = await self.store.load(key)
            now = time.time()
            observed = Observation(
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
            config = ScalingConfig(
                min_replicas=spec.min_replicas,
                max_replicas=spec.max_replicas,
                scale_up_threshold=spec.scale_up_threshold,
                cooldown_s=spec.cooldown_s,
                params=params,
            )
            if spec.status == "failed":
                # Stay down until the user updates the deployment; hold what is running.
                config = ScalingConfig(0, current, config.scale_up_threshold, 0)
            elif state.failed_revision is not None and spec.revision > state.failed_revision:
                state.consecutive_failures, state.retry_after = 0, 0.0
                state.failed_revision = None
            decision, state.policy_state = policy.decide(
                now, observed, config, current, state.policy_state
            )
            self._observe(key, replicas, load.queued, load.in_flight)
            # Log changes of count or of kind of reason, not every pass of a countdown.
            kind = decision.reason.split(":")[0]
            if decision.desired != current or kind != state.last_reason_kind:
                log.info("%s: %d -> %d (%s)", key, current, decision.desired, decision.reason)
            state.last_reason_kind = kind
            if decision.desired != current:
                self.metrics.decisions.labels(key, decision.reason.split(":")[0]).inc()
                await self.publish(
                    "decision",
                    topics.Decision(
                        deployment=key,
                        current=current,
                        desired=decision.desired,
                        reason=decision.reason,
                    ),
                )
            await self._actuate(spec, state, active, decision.desired, now)

    async def _actuate(
        self,
        spec: DeploymentSpec,
        state: DeploymentState,
        active: list[ReplicaRecord],
        desired: int,
        now: float,
    ) -> None:
        """Start and drain replicas so that `desired` of the current engine revision run.

        A rolling update starts one replica above `desired` (surge), and drains an old
        replica only once a new one is ready to take its place, so capacity never drops.
        """
        fresh = [r for r in active if r.revision >= spec.engine_revision]
        outdated = [r for r in active if r.revision < spec.engine_revision]
        fresh_ready = sum(1 for r in fresh if r.state == "ready")
        surge = 1 if outdated else 0
        to_start = min(desired - len(fresh), desired + surge - len(active))
        retire = len(outdated) - max(0, desired - fresh_ready)
        excess = len(fresh) - desired  # without a rollout, fresh is every active replica
        busy = await self.store.in_flight_by_replica(spec.key) if retire > 0 or excess > 0 else {}
        retired_old = self._pick_victims(outdated, retire, busy)
        victims = retired_old + self._pick_victims(fresh, excess, busy)
        if to_start > 0 and now >= state.retry_after:
            for _ in range(to_start):
                await self._start(spec, state)
        for rec in victims:
            rec.state = "draining"
            await self.store.put_replica(rec)
            self._spawn(rec.id, self._drain(rec))
        rollout_done = len(retired_old) == len(outdated) and fresh_ready >= min(desired, 1)
        if spec.status == "updating" and rollout_done:
            await self._finish_rollout(spec)

    async def _finish_rollout(self, spec: DeploymentSpec) -> None:
        current = await self.store.get_deployment(spec.key)
        if current is None or current.status != "updating" or current.revision != spec.revision:
            return
        await self.store.put_deployment(replace(current, status="ready", updated_at=time.time()))
        await self.store.append_events(
            spec.key, [event("Ready", spec.revision, "rolling update complete")]
        )
        log.info("%s: rolling update to revision %d complete", spec.key, spec.revision)

    def _observe(
        self, key: str, replicas: list[ReplicaRecord], queued: int, in_flight: int
    ) -> None:
        self.metrics.queue_depth.labels(key).set(queued)
        self.metrics.in_flight.labels(key).set(in_flight)
        for st in ("starting", "ready", "draining"):
            self.metrics.replicas.labels(key, st).set(sum(1 for r in replicas if r.state == st))

    @staticmethod
    def _pick_victims(
        active: list[ReplicaRecord], count: int, busy: dict[str, int]
    ) -> list[ReplicaRecord]:
        if count <= 0:
            return []
        # Not-yet-ready replicas go first (nothing to drain), then the ready ones with the
        # fewest requests in flight (their drain ends soonest and frees the GPU first), the
        # newest first among equals.
        ordered = sorted(
            active, key=lambda r: (r.state == "ready", busy.get(r.id, 0), -r.created_at)
        )
        return ordered[:count]

    # --- actuation --------------------------------------------------------------------------

    def _spawn(self, replica_id: str, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._tasks[replica_id] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._tasks.get(replica_id) is t:
                del self._tasks[replica_id]
            if not t.cancelled() and t.exception() is not None:
                log.error("task for replica %s failed", replica_id, exc_info=t.exception())

        task.add_done_callback(done)

    async def _start(self, spec: DeploymentSpec, state: DeploymentState) -> None:
        try:
            engine = get_engine(
                MODELS[spec.base_model].engine, self.settings.replica_concurrency, spec=spec
            )
        except EngineRefused as exc:
            await self._mark_failed(spec, str(exc))
            return
        replica_id = f"{spec.name}-{uuid.uuid4().hex[:8]}"
        rec = ReplicaRecord(
            id=replica_id,
            deployment=spec.key,
            revision=spec.revision,
            state="starting",
            url="",
            dialect=engine.dialect,
            concurrency=engine.concurrency,
            backend=self.backend.name,
            cheap_logprobs=engine.cheap_logprobs,
            adapters=list(spec.config.get("preloaded_adapters") or []),
            created_at=time.time(),
        )
        # Registered before launching, so a concurrent pass counts it and never doubles it.
        self._reserved.add(replica_id)
        try:
            await self.store.put_replica(rec)
            self._spawn(replica_id, self._launch(spec, rec, engine, state))
        finally:
            self._reserved.discard(replica_id)

    async def _launch(
        self,
        spec: DeploymentSpec,
        rec: ReplicaRecord,
        engine: EngineProfile,
        state: DeploymentState,
    ) -> None:
        started = time.time()
        try:
            running = await self.backend.start(spec, rec.id, engine)
        except EngineRefused as exc:
            await self.store.remove_replica(spec.key, rec.id)
            await self._mark_failed(spec, str(exc))
            return
        except Exception as exc:
            log.exception("backend failed to start %s", rec.id)
            await self.store.remove_replica(spec.key, rec.id)
            await self._start_failed(spec, state, f"backend start failed: {exc}")
            return
        rec.url = running.url
        rec.handle = running.handle
        if not await self.store.advance_replica(rec):
            # Scaled down while the backend was starting it: the drain may not have known its
            # handle, so nothing else would stop it.
            await self.backend.stop(running, 0)
            await self.store.remove_replica(spec.key, rec.id)
            return
        await self.publish(
            "replica",
            topics.ReplicaChanged(
                deployment=spec.key, replica_id=rec.id, state="starting", url=rec.url
            ),
        )
        await self._probe(spec, rec, started)

    async def _probe(
        self, spec: DeploymentSpec, rec: ReplicaRecord, started: float, measured: bool = True
    ) -> None:
        engine = get_engine(MODELS[spec.base_model].engine, spec=spec)
        deadline = started + self.settings.replica_start_timeout_s
        running = RunningReplica(rec.id, rec.deployment, rec.revision, rec.url, rec.handle)
        state = self._states.setdefault(spec.key, DeploymentState())
        while time.time() < deadline:
            if await self._withdrawn(rec):
                return  # scaled down or deleted while starting: the drain stops it
            if not await self._alive(running):
                if await self._withdrawn(rec):
                    return  # stopped by a drain between the two checks: not a failure
                await self.backend.stop(running, 0)
                await self.store.remove_replica(spec.key, rec.id)
                await self._start_failed(spec, state, self._exit_reason(rec))
                return
            with contextlib.suppress(httpx.HTTPError):
                resp = await self._http.get(rec.url + engine.health_path)
                if resp.status_code == 200:
                    break
            await asyncio.sleep(0.25)
        else:
            await self.backend.stop(running, 5)
            await self.store.remove_replica(spec.key, rec.id)
            await self._start_failed(spec, state, "replica was not ready before the start timeout")
            return
        rec.state = "ready"
        rec.ready_at = time.time()
        if not await self.store.advance_replica(rec):
            return  # picked for draining while it became ready: the drain stops it
        await self.store.clear_wake(spec.key)
        state.consecutive_failures = 0
        if measured:
            state.startup_samples.append(rec.ready_at - started)
            self.metrics.replica_start_seconds.labels(spec.key).observe(rec.ready_at - started)
        log.info("replica %s of %s ready after %.1fs", rec.id, spec.key, rec.ready_at - started)
        await self.publish(
            "replica",
            topics.ReplicaChanged(
                deployment=spec.key, replica_id=rec.id, state="ready", url=rec.url
            ),
        )
        await self._announce_ready(spec.key)

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

    async def _withdrawn(self, rec: ReplicaRecord) -> bool:
        """Whether a starting replica was picked for draining (or removed) meanwhile."""
        stored = await self.store.replica(rec.deployment, rec.id)
        return stored is None or stored.state == "draining"

    async def _alive(self, running: RunningReplica) -> bool:
        listed = {r.replica_id: r for r in await self.backend.list()}
        rep = listed.get(running.replica_id)
        return rep is not None and rep.alive

    @staticmethod
    def _exit_reason(rec: ReplicaRecord) -> str:
        """Why a replica died during start-up: the last line of its log, when there is one."""
        last_line = ""
        log_path = rec.handle.get("log")
        if log_path:
            with contextlib.suppress(OSError), open(log_path, "rb") as fh:
                fh.seek(0, 2)
                fh.seek(max(0, fh.tell() - 400))
                lines = fh.read().decode(errors="replace").strip().splitlines()
                last_line = lines[-1] if lines else ""
        return "replica exited during start-up" + (f": {last_line}" if last_line else "")

    async def _start_failed(self, spec: DeploymentSpec, state: DeploymentState, why: str) -> None:
        state.consecutive_failures += 1
        self.metrics.replica_failures.labels(spec.key).inc()
        backoff = min(2.0**state.consecutive_failures, 60.0)
        state.retry_after = time.time() + backoff
        log.warning(
            "%s: start failed (%d in a row, retry in %.0fs): %s",
            spec.key,
            state.consecutive_failures,
            backoff,
            why,
        )
        await self.publish(
            "replica", topics.ReplicaChanged(deployment=spec.key, replica_id="", state="failed")
        )
        if state.consecutive_failures >= MAX_START_FAILURES:
            state.failed_revision = spec.revision
            await self._mark_failed(spec, why)
        else:
            # The retry is due then, whether or not a reconcile pass or an event comes by.
            asyncio.get_running_loop().call_later(backoff + 0.05, self.kick, spec.key)

    async def _mark_failed(self, spec: DeploymentSpec, why: str) -> None:
        current = await self.store.get_deployment(spec.key)
        if current is None or current.status == "failed":
            return
        await self.store.put_deployment(replace(current, status="failed", updated_at=time.time()))
        await self.store.append_events(spec.key, [event("Failed", current.revision, why)])
        log.error("%s failed: %s", spec.key, why)

    async def _drain(self, rec: ReplicaRecord) -> None:
        """No new requests (already out of `routable`), let in-flight finish, then stop."""
        await self.publish(
            "replica",
            topics.ReplicaChanged(deployment=rec.deployment, replica_id=rec.id, state="draining"),
        )
        deadline = time.time() + self.settings.drain_timeout_s
        while time.time() < deadline:
            if await self.store.replica_in_flight(rec.deployment, rec.id) == 0:
                break
            await asyncio.sleep(0.2)
        await self._stop(
            RunningReplica(rec.id, rec.deployment, rec.revision, rec.url, rec.handle), rec
        )

    async def _stop(self, running: RunningReplica, rec: ReplicaRecord | None) -> None:
        await self.backend.stop(running, grace_s=10)
        await self.store.remove_replica(running.deployment, running.replica_id)
        await self.publish(
            "replica",
            topics.ReplicaChanged(
                deployment=running.deployment, replica_id=running.replica_id, state="stopped"
            ),
        )

    async def _delete(self, spec: DeploymentSpec, replicas: list[ReplicaRecord]) -> None:
        for rec in replicas:
            if self._busy(rec.id):
                continue  # a start finishes (then drains next pass); a drain is under way
            rec.state = "draining"
            await self.store.put_replica(rec)
            self._spawn(rec.id, self._drain(rec))
        if not replicas:
            await self.store.purge_deployment(spec.key)
            self._states.pop(spec.key, None)
            log.info("%s deleted", spec.key)
