"""Deployment health: what this gateway's requests did, added up in memory per deployment and
`BUCKET_S` bucket, and added to Redis once a second in one pipelined call for every
deployment (wakegate/store.py `add_health`). `GET /v2/deployments/{name}/health` (router/ui)
reads every gateway's sums back over a window (wakegate/health.py).

On a request's path a record is one call of a few list increments as it ends: no I/O, no lock
(one event loop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left

from wakegate import health
from wakegate.health import (
    BUCKET_S,
    COLD,
    COLD_MS,
    ERRORS,
    LATENCY_BOUNDS_MS,
    QUEUE,
    REQUESTS,
    TOKENS,
    TTFT,
    bucket_of,
)
from wakegate.store import Store

log = logging.getLogger(__name__)

# How often a gateway adds what it counted to Redis.
FLUSH_S = 1.0


class HealthRecorder:
    """This gateway's counts not yet in Redis: deployment -> bucket start -> row."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: dict[str, dict[int, list[int]]] = {}

    def ended(
        self,
        deployment: str,
        status: int,
        tokens: int,
        queue_wait_s: float | None = None,
        ttft_s: float | None = None,
        cold: bool = False,
    ) -> None:
        """A request ended: its outcome, tokens, queue wait and time to first token (None:
        it never waited or never had one), whether it met a cold start. One call a request."""
        rows = self._pending.get(deployment)
        if rows is None:
            rows = self._pending[deployment] = {}
        bucket = int(time.time() // BUCKET_S) * BUCKET_S
        row = rows.get(bucket)
        if row is None:
            row = rows[bucket] = health.empty_row()
        row[REQUESTS] += 1
        if status >= 400:
            row[ERRORS] += 1
        row[TOKENS] += tokens
        if queue_wait_s is not None:
            row[QUEUE + bisect_left(LATENCY_BOUNDS_MS, queue_wait_s * 1000.0)] += 1
        if ttft_s is not None:
            row[TTFT + bisect_left(LATENCY_BOUNDS_MS, ttft_s * 1000.0)] += 1
            if cold:  # a cold start's latency: its time to first token
                row[COLD] += 1
                row[COLD_MS] += round(ttft_s * 1000)

    def forget(self, deployment: str) -> None:
        """A deleted deployment: what was not written yet is not."""
        self._pending.pop(deployment, None)

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        if not pending:
            return
        oldest = bucket_of(time.time() - health.RETENTION_S)
        try:
            await self._store.add_health(pending, oldest, health.RETENTION_S)
        except Exception:
            # Counts are for people; a Redis hiccup loses a second of them, never a request.
            log.warning("health counts of %d deployment(s) not written", len(pending))

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            await self.flush()

    async def close(self) -> None:
        """What is still counted goes to Redis (at shutdown)."""
        await self.flush()
