"""Short-lived caches of what every request looks up, whose misses share one load.

A burst that lands on a gateway with cold caches (after a start, or when an entry expires)
would otherwise send one Redis read per request for the same token, deployment or quota, all
through one connection pool: thousands of reads queue there, and the burst's first request,
whose admission wakes the deployment, waits behind them. Here the first miss of a key starts
its load, and the misses that come while it is out wait for that same load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

from cachetools import TTLCache

V = TypeVar("V")


class LoadingCache(TTLCache[Hashable, Any]):
    """A TTL cache with `load`: a value found is returned; a missing one is fetched once for
    all who ask while the fetch is out. A fetch that returns None (not found, refused) is not
    cached; one that raises raises for everyone who waited on it. `pop` also forgets a load
    in flight for that key, so that a value read before a change does not land after it."""

    def __init__(self, maxsize: int, ttl: float) -> None:
        super().__init__(maxsize=maxsize, ttl=ttl)
        self._loading: dict[Hashable, asyncio.Future[Any]] = {}

    def pop(self, key: Hashable, *default: Any) -> Any:
        self._loading.pop(key, None)
        return super().pop(key, *default)

    async def load(
        self,
        key: Hashable,
        fetch: Callable[[], Awaitable[V | None]],
        flight: Hashable | None = None,
    ) -> V | None:
        """The cached value of `key`, else `fetch()`'s, shared with every caller that asks
        for the same `flight` (default: the key) while it is out. A caller cancelled while it
        waits leaves the load running for the others."""
        value: V | None = self.get(key)
        if value is not None:
            return value
        flight = key if flight is None else flight
        task = self._loading.get(flight)
        if task is None:
            task = asyncio.ensure_future(fetch())
            self._loading[flight] = task
            task.add_done_callback(lambda done: self._landed(key, flight, done))
        result: V | None = await asyncio.shield(task)
        return result

    def _landed(self, key: Hashable, flight: Hashable, task: asyncio.Future[Any]) -> None:
        if self._loading.get(flight) is not task:
            return  # popped meanwhile: the value may predate a change
        del self._loading[flight]
        if task.cancelled() or task.exception() is not None:
            return
        value = task.result()
        if value is not None:
            self[key] = value
