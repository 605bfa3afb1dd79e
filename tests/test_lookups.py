"""The gateway's lookup caches: concurrent misses of one key share one load (router/lookups.py)."""

from __future__ import annotations

import asyncio

import pytest

from router.lookups import LoadingCache


class Source:
    """Counts its reads; each read waits until `release` is set, so that misses pile up."""

    def __init__(self, value: str | None = "v") -> None:
        self.value = value
        self.reads = 0
        self.release = asyncio.Event()

    async def read(self) -> str | None:
        self.reads += 1
        await self.release.wait()
        return self.value


async def _gather_misses(cache: LoadingCache, source: Source, n: int) -> list[str | None]:
    tasks = [asyncio.create_task(cache.load("k", source.read)) for _ in range(n)]
    while source.reads == 0:
        await asyncio.sleep(0)
    source.release.set()
    return await asyncio.gather(*tasks)


async def test_concurrent_misses_share_one_read_and_fill_the_cache() -> None:
    cache = LoadingCache(maxsize=10, ttl=60)
    source = Source("tenant")
    assert await _gather_misses(cache, source, 200) == ["tenant"] * 200
    assert source.reads == 1
    assert cache.get("k") == "tenant"
    assert await cache.load("k", source.read) == "tenant"
    assert source.reads == 1  # served from the cache


async def test_a_missing_value_is_shared_but_not_cached() -> None:
    cache = LoadingCache(maxsize=10, ttl=60)
    source = Source(None)
    assert await _gather_misses(cache, source, 50) == [None] * 50
    assert source.reads == 1
    assert "k" not in cache
    assert await cache.load("k", source.read) is None
    assert source.reads == 2  # read again: a token may be created a moment later


async def test_a_failed_read_fails_every_waiter_and_the_next_miss_reads_again() -> None:
    cache = LoadingCache(maxsize=10, ttl=60)
    calls = 0

    async def broken() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise ConnectionError("redis went away")

    results = await asyncio.gather(
        *(cache.load("k", broken) for _ in range(20)), return_exceptions=True
    )
    assert calls == 1
    assert all(isinstance(r, ConnectionError) for r in results)
    with pytest.raises(ConnectionError):
        await cache.load("k", broken)
    assert calls == 2


async def test_a_cancelled_waiter_leaves_the_read_to_the_others() -> None:
    cache = LoadingCache(maxsize=10, ttl=60)
    source = Source("spec")
    first = asyncio.create_task(cache.load("k", source.read))
    second = asyncio.create_task(cache.load("k", source.read))
    while source.reads == 0:
        await asyncio.sleep(0)
    first.cancel()
    source.release.set()
    assert await second == "spec"
    assert first.cancelled()
    assert source.reads == 1
    assert cache.get("k") == "spec"


async def test_pop_while_a_read_is_out_keeps_its_value_out_of_the_cache() -> None:
    """A deployment changed on this gateway while a read of it was out: the read's (older)
    value must not land in the cache after the change dropped the entry."""
    cache = LoadingCache(maxsize=10, ttl=60)
    source = Source("old spec")
    waiter = asyncio.create_task(cache.load("k", source.read))
    while source.reads == 0:
        await asyncio.sleep(0)
    cache.pop("k", None)
    source.release.set()
    assert await waiter == "old spec"  # its caller read before the change
    assert "k" not in cache


async def test_flights_apart_share_the_cache_but_not_the_read() -> None:
    """Tokens: misses of one token from two addresses read apart (each its own guard), and
    either read fills the token's entry."""
    cache = LoadingCache(maxsize=10, ttl=60)
    a, b = Source("tenant"), Source("tenant")
    ta = asyncio.create_task(cache.load("tok", a.read, flight=("10.0.0.1", "tok")))
    tb = asyncio.create_task(cache.load("tok", b.read, flight=("10.0.0.2", "tok")))
    while a.reads == 0 or b.reads == 0:
        await asyncio.sleep(0)
    a.release.set()
    b.release.set()
    assert await asyncio.gather(ta, tb) == ["tenant", "tenant"]
    assert (a.reads, b.reads) == (1, 1)
    assert cache.get("tok") == "tenant"
