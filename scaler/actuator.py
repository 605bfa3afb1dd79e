"""The actuator: owns every replica's lifecycle on the backend.

Start (register, launch, probe until ready), drain (no new requests, in-flight ones finish),
stop, and adoption of what the backend runs after a leader change. Each replica's lifecycle
runs as a task, so one slow replica never stalls the control loop. The actuator decides
nothing: it reports each outcome (ready, failed, no room, refused, stopped) to the loop,
which keeps the backoff and the deployment's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, Literal

import aiohttp
from redis.exceptions import RedisError

from scaler.backends import Backend, NoCapacity, RunningReplica
from scaler.engines import Engine, get_engine
from scaler.metrics import ScalerMetrics
from wakegate import topics
from wakegate.catalog import MODELS
from wakegate.engines import EngineRefused
from wakegate.sealing import SecretBox, SecretKeyError, box_from_settings, open_secrets
from wakegate.settings import Settings
from wakegate.spec import DeploymentSpec
from wakegate.store import ReplicaRecord, Store

log = logging.getLogger(__name__)

PROBE_EVERY_S = 0.25


@dataclass(frozen=True)
class Outcome:
    """What became of a replica the actuator started or stopped."""

    kind: Literal["ready", "failed", "no_room", "refused", "stopped"]
    reason: str = ""
    startup_s: float | None = None  # launch to ready, when measured


OutcomeHandler = Callable[[str, DeploymentSpec | None, Outcome], Awaitable[None]]
Publisher = Callable[[topics.Kind, topics.Event], Awaitable[None]]


def launch_spec(spec: DeploymentSpec, box: SecretBox | None) -> DeploymentSpec:
    """The spec a backend launches: its secrets in clear. Refused (the deployment fails at
    once, with this reason) when they cannot be opened: never a replica without its token."""
    try:
        return replace(spec, config=open_secrets(spec.config, box))
    except SecretKeyError as exc:
        raise EngineRefused("config.hfToken", str(exc)) from None


class Actuator:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        backend: Backend,
        metrics: ScalerMetrics,
        publish: Publisher,
        on_outcome: OutcomeHandler,
    ) -> None:
        self.settings = settings
        self.store = store
        self.backend = backend
        # Opens the secrets gateways sealed (hfToken) for the backend, and only for it.
        self._box = box_from_settings(settings.secret_key_file)
        self.metrics = metrics
        self._publish = publish
        self._on_outcome = on_outcome
        self._tasks: dict[str, asyncio.Task[None]] = {}  # replica id -> its lifecycle task
        self._reserved: set[str] = set()  # replica ids registered, task not yet spawned
        # Pool units of launches the backend has not returned from: not yet in what it
        # reports free.
        self._launching: dict[str, tuple[str, int]] = {}
        # Launches of deleted deployments: stopped as soon as the backend returns them.
        self._recalled: set[str] = set()
        self._http: aiohttp.ClientSession | None = None  # made on first use, in the loop

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._http is not None:
            await self._http.close()

    async def _healthy(self, url: str, headers: dict[str, str]) -> bool:
        """Whether the engine answers its health path with 200 within 5 s."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0))
        try:
            async with self._http.get(url, headers=headers) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def busy(self, replica_id: str) -> bool:
        """A task of this instance is starting, probing, draining or stopping the replica."""
        return replica_id in self._tasks or replica_id in self._reserved

    # --- capacity -------------------------------------------------------------------------

    def takes(self, spec: DeploymentSpec) -> tuple[str, int]:
        """The pool units one replica of the deployment takes on this backend."""
        return self.backend.takes(spec, MODELS[spec.base_model].engine)

    async def free_units(self) -> dict[str, int]:
        """What the backend can still start, net of launches it has not answered yet."""
        free = dict(await self.backend.free_accelerators())
        for sku, units in self._launching.values():
            if free.get(sku, 0) != -1:
                free[sku] = max(0, free.get(sku, 0) - units)
        return free

    # --- starting ---------------------------------------------------------------------------

    async def start(self, spec: DeploymentSpec) -> None:
        """Register a replica of the spec's engine revision and launch it in a task."""
        try:
            engine = get_engine(
                MODELS[spec.base_model].engine, self.settings.replica_concurrency, spec=spec
            )
        except EngineRefused as exc:
            await self._on_outcome(spec.key, spec, Outcome("refused", str(exc)))
            return
        # 64 random bits: ids name Ray actors, Pods and manifest files, which two tenants'
        # deployments of the same name share.
        replica_id = f"{spec.name}-{secrets.token_hex(8)}"
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
            adapters=list(spec.config.preloaded_adapters or ()),
            created_at=time.time(),
            key=secrets.token_urlsafe(32),
        )
        # Registered before launching, so a concurrent pass counts it and never doubles it.
        self._reserved.add(replica_id)
        self._launching[replica_id] = self.takes(spec)
        try:
            await self.store.put_replica(rec)
            self._spawn(replica_id, self._launch(spec, rec, engine))
        except BaseException:
            self._launching.pop(replica_id, None)
            raise
        finally:
            self._reserved.discard(replica_id)

    async def _launch(self, spec: DeploymentSpec, rec: ReplicaRecord, engine: Engine) -> None:
        started = time.time()
        try:
            running = await self.backend.start(
                launch_spec(spec, self._box), rec.id, engine, rec.key
            )
        except EngineRefused as exc:
            await self.store.remove_replica(spec.key, rec.id)
            await self._on_outcome(spec.key, spec, Outcome("refused", str(exc)))
            return
        except NoCapacity as exc:
            # Someone took the room between the allocation and the launch (another tenant's
            # start, a process outside wakegate): the deployment waits, nothing failed.
            log.info("%s: no room for %s: %s", spec.key, rec.id, exc)
            await self.store.remove_replica(spec.key, rec.id)
            await self._on_outcome(spec.key, spec, Outcome("no_room", str(exc)))
            return
        except Exception as exc:
            log.exception("backend failed to start %s", rec.id)
            await self.store.remove_replica(spec.key, rec.id)
            await self._on_outcome(
                spec.key, spec, Outcome("failed", f"backend start failed: {exc}")
            )
            return
        finally:
            self._launching.pop(rec.id, None)
        rec.url = running.url
        rec.handle = running.handle
        if rec.id in self._recalled or not await self.store.advance_replica(rec):
            # Scaled down while the backend was starting it: the drain may not have known its
            # handle, so nothing else would stop it.
            await self.backend.stop(running, 0)
            await self.store.remove_replica(spec.key, rec.id)
            await self._on_outcome(spec.key, spec, Outcome("stopped"))
            return
        await self._publish(
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
        while time.time() < deadline:
            try:
                if await self._withdrawn(rec):
                    return  # scaled down or deleted while starting: the drain stops it
                alive = await self._alive(running)
                if not alive and await self._withdrawn(rec):
                    return  # stopped by a drain between the two checks: not a failure
            except RedisError as exc:
                # A Redis blip must not end the probe: a replica nobody probes would be
                # adopted again later, with its clock started over.
                log.warning("probing %s: Redis unavailable (%s); retrying", rec.id, exc)
                await asyncio.sleep(PROBE_EVERY_S)
                continue
            if not alive:
                await self.backend.stop(running, 0)
                await self.store.remove_replica(spec.key, rec.id)
                await self._on_outcome(spec.key, spec, Outcome("failed", self._exit_reason(rec)))
                return
            # llama.cpp guards its health path (/v1/models) with the key too.
            if await self._healthy(rec.url + engine.health_path, rec.auth_headers()):
                break
            await asyncio.sleep(PROBE_EVERY_S)
        else:
            await self.backend.stop(running, 5)
            await self.store.remove_replica(spec.key, rec.id)
            await self._on_outcome(
                spec.key, spec, Outcome("failed", "replica was not ready before the start timeout")
            )
            return
        rec.state = "ready"
        rec.ready_at = time.time()
        if not await self.store.advance_replica(rec):
            return  # picked for draining while it became ready: the drain stops it
        await self.store.clear_wake(spec.key)
        startup_s = rec.ready_at - started
        if measured:
            self.metrics.replica_start_seconds.labels(spec.key).observe(startup_s)
        log.info("replica %s of %s ready after %.1fs", rec.id, spec.key, startup_s)
        await self._publish(
            "replica",
            topics.ReplicaChanged(
                deployment=spec.key, replica_id=rec.id, state="ready", url=rec.url
            ),
        )
        await self._on_outcome(
            spec.key, spec, Outcome("ready", startup_s=startup_s if measured else None)
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

    # --- draining and stopping ----------------------------------------------------------------

    async def drain(self, rec: ReplicaRecord) -> None:
        """Take the replica out of routing now; its task waits for in-flight requests, then
        stops it. A starting replica the backend has already launched is drained the same
        way (its probe sees the withdrawal). One the backend has not returned yet is
        recalled, like a deleted deployment's: its launch stops it as soon as the backend
        answers, and its units count as launching until then (a drain's task would end at
        once and give them out twice)."""
        launching = rec.id in self._launching
        if launching:
            self._recalled.add(rec.id)
        rec.state = "draining"
        await self.store.put_replica(rec)
        if not launching:
            self._spawn(rec.id, self._drain(rec))

    async def _drain(self, rec: ReplicaRecord) -> None:
        await self._publish(
            "replica",
            topics.ReplicaChanged(deployment=rec.deployment, replica_id=rec.id, state="draining"),
        )
        deadline = time.time() + self.settings.drain_timeout_s
        while time.time() < deadline:
            try:
                if await self.store.replica_in_flight(rec.deployment, rec.id) == 0:
                    break
            except RedisError as exc:
                log.warning("draining %s: Redis unavailable (%s); retrying", rec.id, exc)
            await asyncio.sleep(0.2)
        running = RunningReplica(rec.id, rec.deployment, rec.revision, rec.url, rec.handle)
        while True:
            try:
                await self._stop(running)
                return
            except RedisError as exc:
                # Stopped on the backend, maybe not yet removed from the registry: again (the
                # backend's stop is idempotent) rather than leave the record behind.
                log.warning("stopping %s: Redis unavailable (%s); retrying", rec.id, exc)
                await asyncio.sleep(1.0)

    async def _stop(self, running: RunningReplica) -> None:
        await self.backend.stop(running, grace_s=10)
        await self.store.remove_replica(running.deployment, running.replica_id)
        await self._publish(
            "replica",
            topics.ReplicaChanged(
                deployment=running.deployment, replica_id=running.replica_id, state="stopped"
            ),
        )
        await self._on_outcome(running.deployment, None, Outcome("stopped"))

    async def retire_all(self, replicas: list[ReplicaRecord]) -> bool:
        """Drain every replica of a deleted deployment, starting ones included (their probe
        sees the withdrawal and lets the drain stop them); True when none is left."""
        for rec in replicas:
            if rec.state == "draining" and self.busy(rec.id):
                continue  # its drain is under way
            if rec.id in self._launching:
                # The backend has not answered yet: the launch stops the replica as soon as
                # it does, instead of probing it.
                self._recalled.add(rec.id)
                continue
            await self.drain(rec)
        return not replicas

    # --- adoption and liveness ----------------------------------------------------------------

    async def sync_with_backend(self, registries: dict[str, list[ReplicaRecord]] | None) -> None:
        """Make the replica registry and what the backend runs agree.

        A live replica nobody watches is adopted (probed, then routable) or stopped when its
        deployment is gone; a registry entry without a live process is removed. `registries`
        are the records to check against the backend (None: every deployment with a record
        of a replica the backend does not list is not looked for).
        """
        running = await self.backend.list()
        known = {r.id for recs in (registries or {}).values() for r in recs if r.state == "ready"}
        for rep in running:
            if self.busy(rep.replica_id) or (rep.alive and rep.replica_id in known):
                continue
            if not rep.alive:
                await self.backend.stop(rep, 0)
                continue
            await self._adopt(rep)
        alive = {r.replica_id for r in running if r.alive}
        for key, records in (registries or {}).items():
            for rec in records:
                if rec.id in alive or self.busy(rec.id):
                    continue
                if await self.store.replica(key, rec.id) is None:
                    continue  # stopped and removed since `registries` was read
                log.warning("replica %s of %s is gone; removing it", rec.id, key)
                self.metrics.replica_failures.labels(key).inc()
                await self.store.remove_replica(key, rec.id)
                await self._publish(
                    "replica",
                    topics.ReplicaChanged(deployment=key, replica_id=rec.id, state="failed"),
                )
                await self._on_outcome(key, None, Outcome("stopped"))

    async def _adopt(self, rep: RunningReplica) -> None:
        spec = await self.store.get_deployment(rep.deployment)
        rec = await self.store.replica(rep.deployment, rep.replica_id)
        if spec is None or (spec.status == "deleting" and rec is None):
            log.info("stopping replica %s of missing deployment %s", rep.replica_id, rep.deployment)
            self._spawn(rep.replica_id, self._stop(rep))
            return
        if rec is None:
            # Its key lived only in the record: no gateway could call it. A new one starts
            # where the deployment needs it.
            log.info("stopping replica %s of %s: it has no record", rep.replica_id, rep.deployment)
            self._spawn(rep.replica_id, self._stop(rep))
            return
        if rec.state == "ready":
            return
        if rec.state == "starting" and not rec.url:
            # The last leader stopped between the backend's launch and the record of its
            # address: the backend knows where the replica listens.
            rec.url, rec.handle = rep.url, rep.handle
            if not await self.store.advance_replica(rec):
                return  # withdrawn meanwhile: the drain stops it
        log.info("adopted replica %s of %s (%s)", rep.replica_id, rep.deployment, rec.state)
        if rec.state == "starting":
            # The start timeout counts from when it was registered (just before its launch),
            # not from now: a scaler restart must not grant a stuck start another full timeout.
            # Not measured: a start-up that spans a leader change says little.
            launched = rec.created_at or time.time()
            self._spawn(rec.id, self._probe(spec, rec, launched, measured=False))
        elif rec.state == "draining":
            self._spawn(rec.id, self._drain(rec))

    # --- tasks ------------------------------------------------------------------------------

    def _spawn(self, replica_id: str, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks[replica_id] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._tasks.get(replica_id) is t:
                del self._tasks[replica_id]
            self._launching.pop(replica_id, None)
            self._recalled.discard(replica_id)
            if not t.cancelled() and t.exception() is not None:
                log.error("task for replica %s failed", replica_id, exc_info=t.exception())

        task.add_done_callback(done)
