"""Session infrastructure: a real redis-server and mosquitto, and wakegate stacks on them."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from harness import REDIS_DATABASES, Proc, Stack, start_mosquitto, start_redis
from hypothesis import settings as hypothesis_settings
from lora import ADAPTER, make_lora

from scaler.engines.llamacpp import resolve_weights
from wakegate.catalog import MODELS
from wakegate.store import Store

# The property tests share the CPUs with whole stacks started by other tests: a stalled
# example is not a failure, so no per-example deadline.
hypothesis_settings.register_profile("wakegate", deadline=None)
hypothesis_settings.load_profile("wakegate")

# Database 0 serves the shared stack; each isolated stack gets its own database so that its
# scaler never sees another stack's deployments. The last database is for store-level tests.
_databases = itertools.count(1)
DATABASES = REDIS_DATABASES  # the test redis-server is started with this many
STORE_TEST_DB = DATABASES - 1


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("infra")
    redis_proc, redis_url = start_redis(tmp)
    mqtt_proc, mqtt_url = start_mosquitto(tmp)
    procs: dict[str, Proc] = {"redis": redis_proc, "mqtt": mqtt_proc}
    yield {"redis_url": redis_url, "mqtt_url": mqtt_url, "procs": procs, "tmp": tmp}
    mqtt_proc.stop()
    redis_proc.stop()


def unused_database(infra: dict[str, Any]) -> str:
    """The URL of a Redis database no other test has used."""
    db = next(_databases)
    assert db < STORE_TEST_DB, "too many isolated stacks for one Redis"
    return f"{infra['redis_url']}/{db}"


@pytest.fixture
def fresh_redis_url(infra: dict[str, Any]) -> str:
    return unused_database(infra)


@pytest.fixture(scope="session")
def stack(infra: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The shared stack: for tests that do not restart or reconfigure processes."""
    s = Stack(tmp_path_factory.mktemp("shared"), infra["redis_url"] + "/0", infra["mqtt_url"])
    s.start()
    yield s
    s.stop()


@pytest.fixture
def make_stack(
    infra: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Stack]]:
    """Isolated stacks, for tests that kill, restart or reconfigure processes."""
    made: list[Stack] = []

    def make(mqtt: bool | str = True, **settings: Any) -> Stack:
        """`mqtt`: use the session broker (True), none (False), or this broker URL."""
        s = Stack(
            tmp_path_factory.mktemp("stack"),
            unused_database(infra),
            mqtt if isinstance(mqtt, str) else (infra["mqtt_url"] if mqtt else None),
            **settings,
        )
        made.append(s)
        return s.start()

    yield make
    for s in made:
        s.stop()


def use_predibase(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the Predibase SDK at `stack`."""
    monkeypatch.setenv("PREDIBASE_GATEWAY", stack.base)
    monkeypatch.setenv("PREDIBASE_API_TOKEN", stack.token)
    # The SDK's settings file lookup must not find anything of the developer's.
    monkeypatch.chdir(stack.tmp)


@pytest.fixture
def predibase_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    use_predibase(stack, monkeypatch)


@pytest.fixture
def name() -> str:
    """A deployment name of its own for each test."""
    return "t-" + uuid.uuid4().hex[:8]


@pytest.fixture
async def store(infra: dict[str, Any]) -> Any:
    client = aioredis.from_url(f"{infra['redis_url']}/{STORE_TEST_DB}", decode_responses=True)
    await client.flushdb()
    s = Store(client)
    yield s
    await s.close()


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder (`adapter_dir` setting) holding a LoRA adapter for Gemma 3 270M, as ADAPTER."""
    root = tmp_path_factory.mktemp("adapters")
    base = resolve_weights(MODELS["gemma-3-270m"].weights, root / "models")
    make_lora(base, root / "lib" / f"{ADAPTER}.gguf")
    return root / "lib"
