"""What holding waiting requests costs: nothing per request per second.

A burst on a deployment at zero waits in the gateway for the whole cold start, thousands of
requests at once. Two things used to cost each of them a timer and a Redis read every second:
the re-check that answers a waiting request as soon as its deployment is deleted or failed
(or turns out to need an accelerator the pool does not have),
and the SSE keep-alive comment. Here both are done once per gateway: one task re-reads each
deployment that has requests waiting (one GET per deployment, not per request) and fails the
waiting requests of one that is gone; one task writes the keep-alive comment to every open
stream. A request registers on the way in and leaves in `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from aiohttp import web

from router.errors import ApiError
from router.pool import missing_accelerator
from wakegate.pool import PoolReport
from wakegate.spec import DeploymentSpec
from wakegate.store import Store

if TYPE_CHECKING:
    from router.dispatch import Ticket

log = logging.getLogger(__name__)

KEEPALIVE_COMMENT = b": ping\n\n"


async def deployment_problem(
    store: Store, key: str, spec: DeploymentSpec | None, pool: PoolReport | None = None
) -> ApiError | None:
    """Why requests to `key` cannot be served (404 gone, 424 failed, 424 its accelerator is
    one the pool does not have at all), or None."""
    name = key.split("/", 1)[-1]
    if spec is None or spec.status == "deleting":
        return ApiError(404, f"deployment {name} not found")
    if spec.status == "failed":
        events = await store.events(spec.key)
        why = next((e["message"] for e in reversed(events) if e["eventType"] == "Failed"), "")
        return ApiError(424, f"deployment {name} failed: {why}", error_type="generation")
    missing = missing_accelerator(pool, spec)
    if missing is not None:
        # Queued, it would wait for the queue timeout for hardware that is not there.
        return ApiError(424, f"deployment {name} cannot run: {missing}", error_type="generation")
    return None


class Holding:
    """The waiting requests and open streams of one gateway, checked and pinged in bulk.

    `recheck_s`: how often each deployment with waiting requests is re-read; `keepalive_s`:
    how often every open stream gets a comment (so a cold start never trips a client's read
    timeout). `on_spec` sees each spec read, so the data plane's cache stays warm for free.
    """

    def __init__(
        self,
        store: Store,
        recheck_s: float,
        keepalive_s: float,
        on_spec: Callable[[str, DeploymentSpec], None] = lambda key, spec: None,
        pool: Callable[[], Awaitable[PoolReport | None]] | None = None,
    ) -> None:
        self.store = store
        self.recheck_s = recheck_s
        self.keepalive_s = keepalive_s
        self._on_spec = on_spec
        self._pool = pool
        self._waiting: dict[str, dict[str, Ticket]] = defaultdict(dict)
        self._streams: dict[web.StreamResponse, web.Request] = {}

    # --- the request's view -----------------------------------------------------------------

    @contextlib.contextmanager
    def waiting(self, ticket: Ticket) -> Iterator[None]:
        """While inside, the ticket's wait fails with the deployment's problem, if it gets one."""
        self._waiting[ticket.deployment][ticket.request_id] = ticket
        try:
            yield
        finally:
            tickets = self._waiting.get(ticket.deployment)
            if tickets is not None:
                tickets.pop(ticket.request_id, None)
                if not tickets:
                    del self._waiting[ticket.deployment]

    @contextlib.asynccontextmanager
    async def stream(self, request: web.Request, resp: web.StreamResponse) -> AsyncIterator[None]:
        """While inside, `resp` (once prepared) gets the keep-alive comment every
        `keepalive_s`."""
        self._streams[resp] = request
        try:
            yield
        finally:
            self._streams.pop(resp, None)

    def waiting_count(self) -> int:
        return sum(len(t) for t in self._waiting.values())

    def stream_count(self) -> int:
        return len(self._streams)

    # --- the gateway's tasks ----------------------------------------------------------------

    async def recheck_forever(self) -> None:
        await _every(self.recheck_s, self.recheck, "deployment re-check")

    async def recheck(self) -> None:
        """Re-read every deployment that has waiting requests; fail those of a gone one."""
        keys = list(self._waiting)
        if not keys:
            return
        specs = await self.store.list_specs(keys)
        pool = None if self._pool is None else await self._pool()
        by_key = {spec.key: spec for spec in specs}
        for key in keys:
            spec = by_key.get(key)
            if spec is not None:
                self._on_spec(key, spec)
            problem = await deployment_problem(self.store, key, spec, pool)
            if problem is not None:
                self.fail(key, problem)

    def fail(self, key: str, problem: ApiError) -> None:
        for ticket in self._waiting.pop(key, {}).values():
            if not ticket.assigned.done():
                # One exception each: raising a shared one in thousands of tasks would chain
                # all their tracebacks onto it.
                ticket.assigned.set_exception(
                    ApiError(problem.status, problem.message, error_type=problem.error_type)
                )

    async def keepalive_forever(self) -> None:
        await _every(self.keepalive_s, self._ping_all, "keep-alive")

    async def _ping_all(self) -> None:
        for resp, request in list(self._streams.items()):
            transport = request.transport
            if not resp.prepared:
                continue
            # Bytes still unsent mean the client is not reading: the comment would only queue
            # behind them (and waiting on such a client would hold up all the others).
            if transport is None or transport.is_closing() or transport.get_write_buffer_size():
                continue
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.write(KEEPALIVE_COMMENT)


async def _every(period_s: float, work: Callable[[], Awaitable[None]], what: str) -> None:
    while True:
        await asyncio.sleep(period_s)
        try:
            await work()
        except Exception as exc:
            log.warning("%s failed: %s", what, exc)
