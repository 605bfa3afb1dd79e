"""How full Redis is, sampled, not asked per request: above `storage_bulk_limit` of its
maxmemory the gateway refuses bulk writes (async submissions answer 503 with Retry-After,
request-log entries are skipped), so the control plane and every tenant's queue keep the
rest (review 2026-12b, finding 2)."""

from __future__ import annotations

import asyncio
import logging

from wakegate.store import Store

log = logging.getLogger(__name__)

SAMPLE_EVERY_S = 1.0
# What a client refused for a nearly full Redis is told to wait.
BULK_RETRY_AFTER_S = 30


class StorageWatch:
    def __init__(self, store: Store, limit: float) -> None:
        self.store = store
        self.limit = limit  # share of maxmemory above which bulk writes are refused
        self.used = 0
        self.maxmemory = 0

    @property
    def bulk_refused(self) -> bool:
        """Whether Redis was above the bulk limit at the last sample (never without one)."""
        return self.maxmemory > 0 and self.used > self.limit * self.maxmemory

    def note(self, size: int) -> None:
        """This gateway just stored `size` bytes: counted until the next sample, so a burst
        of bulk writes between samples cannot run far past the limit."""
        self.used += size

    async def sample(self) -> None:
        self.used, self.maxmemory = await self.store.memory_use()

    async def run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception as exc:  # Redis away: keep the last sample
                log.debug("memory sample failed: %s", exc)
            await asyncio.sleep(SAMPLE_EVERY_S)
