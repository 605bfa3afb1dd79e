"""Async requests: submitted, queued and run by whichever gateway claims them.

An async request is a job in Redis (its request, status and result) and an entry in the
deployment's ordinary queue that no gateway owns (its queue lease never runs out). When the
dispatch script gives it a slot, every gateway hears it on the shared async channel and one
claims it with a lease it renews while it runs. A sweep on every gateway makes this certain:
assignments nobody claimed are claimed, and jobs whose runner stopped renewing (a gateway
killed with -9) go back to the queue. A replica failing a job sends it back to the queue too,
away from that replica, up to `ATTEMPTS` (router/retries.py). Results stay in Redis for
`result_ttl_s`.
A job's outcome (done or given up) goes to the request log of deployments that keep one.

Every job expires, counted from its creation (`job_ttl_s`): the queue timeout, plus
`ATTEMPTS` runs of at most `ATTEMPT_S` each, plus the result TTL. So neither a job that
never gets a replica nor one whose gateway died between storing and queueing it stays in Redis
for good; a finished one keeps its result for `result_ttl_s` from when it finished. A job
never stores the request's `parameters.api_token` (a secret the gateway does not use).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from router.dialects import Generation, UpstreamError, get_dialect
from router.dispatch import OnWake, listen_forever
from router.health import HealthRecorder
from router.lorax_json import lorax_response
from router.params import GenerateRequest
from router.request_log import RequestLogEntry, write_entry
from router.retries import ATTEMPTS, SUSPECT_MS
from router.storage import StorageWatch
from wakegate.quotas import Quotas
from wakegate.spec import DeploymentSpec
from wakegate.store import (
    ASYNC_OWNER,
    FOREVER_MS,
    MAX_PRIORITY,
    Store,
    gateway_channel,
    routing_of,
)

log = logging.getLogger(__name__)

# Longest one run of a job may go without a byte from its replica: the gateway's upstream
# read timeout (router/app.py).
ATTEMPT_S = 600
SWEEP_EVERY_S = 2.0


def job_bytes(fields: dict[str, Any]) -> int:
    """What a job's fields take in Redis, as stored (each value as JSON), as its tenant's
    async-bytes quota counts it."""
    return sum(len(k) + len(json.dumps(v).encode()) for k, v in fields.items())


def job_ttl_s(queue_timeout_s: float, result_ttl_s: int) -> int:
    """How long a job may live from its creation: waiting, every attempt, then its result."""
    return int(queue_timeout_s) + ATTEMPTS * ATTEMPT_S + result_ttl_s


class JobRunner:
    def __init__(
        self,
        store: Store,
        upstream: aiohttp.ClientSession,
        on_wake: OnWake | None,
        lease_ms: int,
        result_ttl_s: int,
        queue_timeout_s: float,
        log_max_bytes: int,
        storage: StorageWatch,
        quotas_of: Callable[[str], Awaitable[Quotas]],
        health: HealthRecorder | None = None,
    ) -> None:
        self.store = store
        self.health = health
        self.upstream = upstream
        self.on_wake = on_wake
        self.lease_ms = lease_ms
        self.result_ttl_s = result_ttl_s
        self.job_ttl_s = job_ttl_s(queue_timeout_s, result_ttl_s)
        self.log_max_bytes = log_max_bytes
        self.storage = storage
        self.quotas_of = quotas_of  # a tenant's quotas
        self.runner_id = uuid.uuid4().hex[:12]
        self._tasks: set[asyncio.Task[None]] = set()

    # --- the API's view -----------------------------------------------------------------------

    async def submit(
        self,
        spec: DeploymentSpec,
        req: GenerateRequest,
        priority: int,
        max_queue: int,
        quotas: Quotas,
    ) -> str:
        """Store the job and queue it; returns its id at once (QueueFull when full, JobsFull
        when its tenant is at an async quota: then nothing is stored)."""
        job_id = uuid.uuid4().hex
        fields = {
            "request": req.model_dump(mode="json", exclude={"parameters": {"api_token"}}),
            "base_model": spec.base_model,
            "status": "queued",
            "attempts": 0,
            "priority": priority,
            "created": time.time(),
        }
        # Counted in the tenant's ledger first; given back when it cannot be stored.
        size = job_bytes(fields)
        await self.store.reserve_job(
            spec.key, job_id, size, self.job_ttl_s, quotas.max_async_jobs, quotas.max_async_bytes
        )
        self.storage.note(size)
        try:
            await self.store.put_job(spec.key, job_id, fields, self.job_ttl_s)
        except BaseException:
            await self.store.settle_job(spec.key, job_id, None, 0)
            raise
        queued_at = time.monotonic()
        try:
            _, depth, woke, _ = await self.store.enqueue(
                spec.key, job_id, ASYNC_OWNER, priority, FOREVER_MS, max_queue
            )
        except BaseException:
            # Not queued (full, or Redis out of memory): the client gets no id, and no job
            # is left behind.
            await self.store.drop_job(spec.key, job_id)
            raise
        if woke and self.on_wake is not None:
            self.on_wake(spec.key, depth, time.monotonic() - queued_at)
        await self._dispatch(spec.key, routing_of(spec))
        return job_id

    async def status(self, key: str, job_id: str) -> dict[str, Any] | None:
        job = await self.store.job(key, job_id)
        if job is None:
            return None
        job.pop("request", None)
        job.pop("base_model", None)
        return {"id": job_id, **job}

    # --- running ------------------------------------------------------------------------------

    async def listen(self) -> None:
        """Hear every async assignment; the claim decides which gateway runs it."""
        await listen_forever(self.store, gateway_channel(ASYNC_OWNER), self._heard, "async")

    def _heard(self, data: str) -> None:
        key, job_id, replica_id = data.split(" ")
        self._spawn(self._run(key, job_id, replica_id))

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("async sweep failed: %s", exc)

    async def sweep(self) -> None:
        for key in await self.store.job_deployments():
            for job_id, replica_id in (await self.store.unclaimed_assignments(key)).items():
                self._spawn(self._run(key, job_id, replica_id))
            for job_id in await self.store.orphaned_jobs(key):
                log.warning("async request %s of %s lost its runner; queueing it again",
                            job_id, key)  # fmt: skip
                await self._retry_or_fail(key, job_id, "its gateway stopped")
            await self._dispatch(key)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _dispatch(self, key: str, routing: str | None = None) -> None:
        # Lease length only matters for the slots handed out; dispatch publishes the rest.
        # Without the spec at hand (the sweep) the store reads the routing mode.
        await self.store.dispatch(key, self.lease_ms, routing=routing)

    async def _run(self, key: str, job_id: str, replica_id: str) -> None:
        if not await self.store.claim_job(key, job_id, self.runner_id, self.lease_ms):
            return  # another gateway runs it
        await self.store.ack_assignment(key, job_id)
        job = await self.store.job(key, job_id)
        replica = await self.store.replica(key, replica_id)
        slot = f"{replica_id}|{job_id}"
        if job is None:
            await self.store.release(key, replica_id, job_id)
            return
        if replica is None or not await self.store.holds_slot(key, replica_id, job_id):
            await self.store.release(key, replica_id, job_id)
            await self._retry_or_fail(key, job_id, "its slot was lost")
            return
        renew = asyncio.create_task(self._renew(key, job_id, slot))
        try:
            req = GenerateRequest.model_validate(job["request"])
            gen = await get_dialect(replica.dialect).generate(
                self.upstream, replica, str(job["base_model"]), req
            )
        except UpstreamError as exc:
            renew.cancel()
            await self.store.release(key, replica_id, job_id)
            if not exc.retryable:  # the request itself was refused: no replica would take it
                await self._log(key, job, status=exc.status, replica_id=replica_id, error=str(exc))
                await self.store.finish_job(
                    key, job_id,
                    {"status": "failed", "error": str(exc), "finished": time.time()},
                    self.result_ttl_s,
                )  # fmt: skip
                await self._dispatch(key)
                return
            await self.store.suspect(key, replica_id, SUSPECT_MS)
            await self._retry_or_fail(key, job_id, str(exc))
            return
        except BaseException:
            renew.cancel()
            raise
        renew.cancel()
        await self._log(key, job, status=200, replica_id=replica_id, gen=gen)
        await self.store.finish_job(
            key,
            job_id,
            {"status": "done", "result": lorax_response(gen, req), "finished": time.time(),
             "replica": replica_id},
            self.result_ttl_s,
        )  # fmt: skip
        await self.store.release(key, replica_id, job_id)
        await self._dispatch(key)

    async def _renew(self, key: str, job_id: str, slot: str) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            await self.store.renew_job(key, job_id, self.lease_ms)
            await self.store.renew_leases({}, {key: [slot]}, self.lease_ms)

    async def _retry_or_fail(self, key: str, job_id: str, why: str) -> None:
        job = await self.store.job(key, job_id)
        if job is None:
            return
        if int(job.get("attempts", 0)) >= ATTEMPTS:
            await self._log(key, job, status=502, error=why)
            await self.store.finish_job(
                key, job_id,
                {"status": "failed", "error": f"gave up after {ATTEMPTS} attempts: {why}",
                 "finished": time.time()},
                self.result_ttl_s,
            )  # fmt: skip
            return
        await self.store.requeue_job(key, job_id, MAX_PRIORITY)
        await self._dispatch(key)

    async def _log(
        self,
        key: str,
        job: dict[str, Any],
        status: int,
        replica_id: str | None = None,
        gen: Generation | None = None,
        error: str | None = None,
    ) -> None:
        """The job's end in the deployment's health counts, and its entry in the request
        log, when the deployment keeps one."""
        if self.health is not None:
            self.health.ended(key, status, gen.finish.generated_tokens if gen else 0)
        spec = await self.store.get_deployment(key)
        if spec is None or not spec.config.request_logging_enabled:
            return
        created = float(job.get("created", time.time()))
        req = GenerateRequest.model_validate(job["request"])
        trail = RequestLogEntry("async", False, req, arrived=time.monotonic(), at=created)
        trail.replica, trail.status, trail.error = replica_id, status, error
        if gen is not None:
            trail.output, trail.finish = [gen.text], gen.finish
        entry = {**trail.record(self.log_max_bytes), "duration_s": round(time.time() - created, 4),
                 "attempts": int(job.get("attempts", 0))}  # fmt: skip
        try:
            limit = (await self.quotas_of(spec.tenant)).max_request_log_bytes
        except Exception:
            log.exception("request log of %s failed", key)
            return
        await write_entry(self.store, self.storage, key, entry, limit)
