"""Deployment health: what this gateway's requests did, added up in memory per deployment and
`BUCKET_S` bucket, and added to Redis once a second in one pipelined call for every
deployment (wakegate/store.py `add_health`). `GET /v2/deployments/{name}/health` (router/ui)
reads every gateway's sums back over a window (wakegate/health.py).

On a request's path a record is a few list increments: no I/O, no lock (one event loop).
"""

from __future__ import annotations

import asyncio
import logging
import time

from wakegate import health
from wakegate.health import bucket_of, latency_slot
from wakegate.store import Store

log = logging.getLogger(__name__)

# How often a gateway adds what it counted to Redis.
FLUSH_S = 1.0


class HealthRecorder:
    """This gateway's counts not yet in Redis: deployment -> bucket start -> row."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: dict[str, dict[int, list[int]]] = {}

    def _row(self, deployment: str) -> list[int]:
        rows = self._pending.get(deployment)
        if rows is None:
            rows = self._pending[deployment] = {}
        bucket = bucket_of(time.time())
        row = rows.get(bucket)
        if row is None:
            row = rows[bucket] = health.empty_row()
        return row

    def queue_wait(self, deployment: str, waited_s: float) -> None:
        self._row(deployment)[health.QUEUE + latency_slot(waited_s)] += 1

    def first_token(self, deployment: str, ttft_s: float, cold: bool) -> None:
        row = self._row(deployment)
        row[health.TTFT + latency_slot(ttft_s)] += 1
        if cold:
            row[health.COLD] += 1
            row[health.COLD_MS] += round(ttft_s * 1000)

    def ended(self, deployment: str, status: int, tokens: int) -> None:
        row = self._row(deployment)
        row[health.REQUESTS] += 1
        row[health.ERRORS] += status >= 400
        row[health.TOKENS] += tokens

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
