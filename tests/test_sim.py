"""The simulator: the sim host and its replicas as real processes, then the whole stack on it.

The sim host is a real process serving real HTTP; these tests drive it through the `sim`
backend (as the scaler does) and talk to the simulated engines directly or through the real
gateway. Timing assertions are lower bounds only: a busy machine may be slower, never faster.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from harness import Stack, wait_until

from scaler.backends import NoCapacity, RunningReplica, create_backend
from scaler.backends.sim import PoolExhausted, SimBackend, host_alive
from scaler.engines import get_engine
from scaler.sim.pool import Pool, PoolError
from wakegate.catalog import ACCELERATORS, pool_units
from wakegate.engines import EngineRefused
from wakegate.engines.sim import SimProfile
from wakegate.settings import Settings
from wakegate.spec import DeploymentConfig, DeploymentSpec


def sim_spec(name: str = "d1", args: list[str] | None = None, **config: Any) -> DeploymentSpec:
    cfg = {"base_model": "sim-llm", "custom_args": args or [], **config}
    return DeploymentSpec(
        "acme", name, "uuid-" + name, None, DeploymentConfig.from_dict(cfg), "ready", 1, 0.0, 0.0
    )


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mib(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def host_pid(backend: SimBackend) -> int:
    return int(json.loads(backend.state_file.read_text())["pid"])


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Callable[..., SimBackend]]:
    """SimBackends on a state dir of this test; their host is stopped afterwards."""
    made: list[SimBackend] = []

    def make(**settings: Any) -> SimBackend:
        backend = SimBackend(Settings(state_dir=tmp_path / "state", **settings))
        made.append(backend)
        return backend

    yield make
    if made:
        await made[0].stop_all(grace_s=1)
    for backend in made:
        await backend.close()


async def sse_completion(
    client: httpx.AsyncClient, url: str, body: dict[str, Any]
) -> tuple[list[dict[str, Any]], float, float]:
    """The chunks of a streamed completion, the time to the first one and the total time."""
    chunks: list[dict[str, Any]] = []
    t0 = time.monotonic()
    first = 0.0
    done = False
    async with client.stream("POST", url + "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                done = True
                break
            if not chunks:
                first = time.monotonic() - t0
            chunks.append(json.loads(data))
    assert done, "stream did not end with [DONE]"
    return chunks, first, time.monotonic() - t0


# --- the engine profile ---------------------------------------------------------------------


def test_sim_profile_reads_custom_args_and_refuses_bad_ones() -> None:
    args = ["--load-s", "2", "--tps", "25", "--batch", "3", "--batch-slowdown=0.1"]
    engine = get_engine("sim", 1, spec=sim_spec(args=args))
    assert isinstance(engine, SimProfile)
    assert (engine.name, engine.dialect, engine.health_path) == ("sim", "openai", "/health")
    assert engine.concurrency == 3 and not engine.cheap_logprobs
    params = engine.sim_params(sim_spec(args=args))
    assert params["load_s"] == 2.0 and params["tps"] == 25.0 and params["batch"] == 3
    assert params["batch_slowdown"] == 0.1 and params["model"] == "sim-llm"
    assert get_engine("sim").concurrency == SimProfile().batch
    for bad in (["--speed", "9"], ["--tps", "fast"], ["--batch", "0"], ["--tps"]):
        with pytest.raises(EngineRefused) as err:
            get_engine("sim", spec=sim_spec(args=bad))
        assert err.value.field == "config.customArgs"
    # llama.cpp specs keep their own customArgs: the sim parser never sees them.
    llama = sim_spec(args=["--n_threads", "2"], base_model="gemma-3-270m")
    assert get_engine("llamacpp", 1, spec=llama).name == "llamacpp"


def test_sim_backend_is_registered(tmp_path: Path) -> None:
    backend = create_backend(Settings(state_dir=tmp_path, backend="sim"))
    assert isinstance(backend, SimBackend) and backend.name == "sim"


@pytest.mark.parametrize(
    ("accelerator", "demand"),
    [
        ("cpu", ("cpu", 1, 0)),
        ("a10_24gb_100", ("a10_24gb", 1, 1)),
        ("a10_24gb_400", ("a10_24gb", 4, 4)),
        ("a100_80gb_200", ("a100_80gb", 2, 2)),
    ],
    ids=[
        "cpu-replica-takes-one-slot-and-no-gpu",
        "one-gpu-accelerator-takes-one",
        "four-gpu-accelerator-takes-four-of-its-sku",
        "two-gpu-accelerator-takes-two-of-its-sku",
    ],
)
def test_what_a_replica_takes_from_the_sim_pool(
    accelerator: str, demand: tuple[str, int, int]
) -> None:
    assert Pool.demand(accelerator) == demand


@pytest.mark.parametrize("accelerator", list(ACCELERATORS), ids=list(ACCELERATORS))
def test_the_sim_pool_and_backend_follow_the_catalogues_rule(
    accelerator: str, tmp_path: Path
) -> None:
    sku, units, _ = Pool.demand(accelerator)
    assert (sku, units) == pool_units(accelerator)
    spec = sim_spec(accelerator=accelerator)
    assert create_backend(Settings(state_dir=tmp_path, backend="sim")).takes(spec, "sim") == (
        sku,
        units,
    )


def test_an_unknown_accelerator_is_a_pool_error() -> None:
    with pytest.raises(PoolError, match="unknown accelerator 'tpu_v5'"):
        Pool.demand("tpu_v5")


# --- (a) the sim host alone -----------------------------------------------------------------


async def test_replica_lifecycle_timing_pool_and_usage(sim: Callable[..., SimBackend]) -> None:
    backend = sim(sim_pool="a10_24gb=2,cpu=4", sim_acquire_s=0.3)
    args = ["--load-s", "0.6", "--ttft-s", "0.1", "--prefill-tps", "50", "--tps", "50"]
    spec = sim_spec("lc", args, accelerator="a10_24gb_100")
    engine = get_engine("sim", spec=spec)

    # A non-sim model is refused, naming the field to fix.
    gemma = sim_spec("g", base_model="gemma-3-270m")
    with pytest.raises(EngineRefused) as err:
        await backend.start(gemma, "g-1", get_engine("llamacpp"))
    assert err.value.field == "config.baseModel" and "sim" in str(err.value)

    t0 = time.monotonic()
    asked_at = time.time()
    rep = await backend.start(spec, "lc-1", engine)
    assert time.monotonic() - t0 >= 0.3  # the acquisition delay
    assert rep.deployment == "acme/lc" and rep.url.startswith("http://127.0.0.1:")

    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.get(rep.url + "/health")).status_code == 503  # loading
        while (await client.get(rep.url + "/health")).status_code != 200:
            await asyncio.sleep(0.02)
        assert time.monotonic() - t0 >= 0.3 + 0.6

        # Non-stream: ttft 0.1 + 5 words / 50 tok/s = 0.2 s, then 9 more tokens at 50/s.
        body = {"model": "sim-llm", "prompt": "one two three four five", "max_tokens": 10}
        t1 = time.monotonic()
        r = await client.post(rep.url + "/v1/completions", json=body)
        elapsed = time.monotonic() - t1
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["object"] == "text_completion" and data["model"] == "sim-llm"
        assert data["id"] and isinstance(data["created"], int)
        choice = data["choices"][0]
        assert choice == {
            "text": " tok" * 10,
            "index": 0,
            "logprobs": None,
            "finish_reason": "length",
        }
        assert data["usage"] == {
            "prompt_tokens": 5,
            "completion_tokens": 10,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 0},
        }
        assert elapsed >= 0.2 + 9 / 50

        # Stream: one chunk per token, the finish reason on the last, then [DONE].
        chunks, ttft, total = await sse_completion(client, rep.url, {**body, "max_tokens": 6})
        assert len(chunks) == 6
        assert all(c["choices"][0]["text"] == " tok" for c in chunks)
        assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 5 + ["length"]
        assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
        assert ttft >= 0.2 and total >= 0.2 + 5 / 50

        # What the gateway asks for (cheap log-probabilities): one logprob per token.
        r = await client.post(rep.url + "/v1/completions", json={**body, "logprobs": 1})
        lp = r.json()["choices"][0]["logprobs"]
        assert lp["tokens"] == [" tok"] * 10 and len(lp["token_logprobs"]) == 10
        chunks, _, _ = await sse_completion(client, rep.url, {**body, "logprobs": 1})
        assert [c["choices"][0]["logprobs"]["text_offset"][0] for c in chunks[:2]] == [23, 27]
        bad = await client.post(rep.url + "/v1/completions", json={"prompt": "x", "max_tokens": 0})
        assert bad.status_code == 422

        stats = (await client.get(rep.url + "/stats")).json()
        assert stats["requests"] == 4 and stats["tokens_generated"] == 10 + 6 + 10 + 10
        assert stats["prompt_tokens"] == 20

    # The pool: 2 A10s. A second replica fits, a third does not, nor a 4-GPU one.
    rep2 = await backend.start(spec, "lc-2", engine)
    assert backend.takes(spec, "sim") == ("a10_24gb", 1)
    # No room is its own exception: the scaler waits for capacity instead of backing off.
    with pytest.raises(NoCapacity, match=r"exhausted.*a10_24gb.*0 of 2 free"):
        await backend.start(spec, "lc-3", engine)
    big = sim_spec("big", args, accelerator="a10_24gb_400")
    with pytest.raises(PoolExhausted, match="needs 4"):
        await backend.start(big, "big-1", get_engine("sim", spec=big))
    assert (await backend.free_accelerators())["a10_24gb"] == 0
    assert {r.replica_id for r in await backend.list()} == {"lc-1", "lc-2"}

    usage = await backend.usage()
    leases = usage["usage"]["acme/lc"]
    assert [(u["replica_id"], u["gpus"], u["released_at"]) for u in leases] == [
        ("lc-1", 1, None),
        ("lc-2", 1, None),
    ]
    assert "acme/big" not in usage["usage"]  # a refused start holds nothing
    assert usage["intervals"] == leases
    # When the host received each create request: before the acquisition delay.
    first = leases[0]
    assert asked_at <= first["requested_at"] <= first["acquired_at"] - 0.3 + 1e-3
    auth = {"Authorization": f"Bearer {(backend._record() or {})['token']}"}
    async with httpx.AsyncClient(headers=auth) as client:
        host = await backend.host_url()
        described = (await client.get(f"{host}/replicas/lc-1")).json()
        listed = (await client.get(f"{host}/replicas")).json()
    assert described["requested_at"] == first["requested_at"]
    assert described["acquired_at"] == first["acquired_at"]
    assert {r["replica_id"]: r["requested_at"] for r in listed}["lc-1"] == first["requested_at"]

    # Stopping releases the GPUs and closes the lease interval.
    await backend.stop(rep, grace_s=1)
    await backend.stop(rep, grace_s=1)  # idempotent
    assert (await backend.free_accelerators())["a10_24gb"] == 1
    assert [r.replica_id for r in await backend.list()] == ["lc-2"]
    leases = (await backend.usage())["usage"]["acme/lc"]
    closed = next(u for u in leases if u["replica_id"] == "lc-1")
    assert closed["released_at"] >= closed["acquired_at"] + 0.6
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(rep.url + "/health")
    await backend.stop(rep2, grace_s=1)
    assert (await backend.free_accelerators())["a10_24gb"] == 2


async def test_batch_limit_queues_fifo_and_graceful_stop_finishes_in_flight(
    sim: Callable[..., SimBackend],
) -> None:
    backend = sim(sim_pool="cpu=4")
    args = ["--load-s", "0", "--ttft-s", "0", "--tps", "20", "--batch", "2"]
    spec = sim_spec("b", args, accelerator="cpu")
    rep = await backend.start(spec, "b-1", get_engine("sim", spec=spec))
    body = {"prompt": "hi", "max_tokens": 10}  # about 0.45 s each
    async with httpx.AsyncClient(timeout=30) as client:
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(client.post(rep.url + "/v1/completions", json=body) for _ in range(4))
        )
        elapsed = time.monotonic() - t0
        assert [r.status_code for r in results] == [200] * 4
        stats = (await client.get(rep.url + "/stats")).json()
        assert stats["max_concurrent"] == 2 and stats["requests"] == 4
        assert elapsed >= 2 * 9 / 20  # two waves of two

        # A replica stopped with a grace period finishes what it has, refuses the rest.
        slow = asyncio.create_task(
            client.post(rep.url + "/v1/completions", json={**body, "max_tokens": 20})
        )
        while (await client.get(rep.url + "/stats")).json()["active"] != 1:
            await asyncio.sleep(0.02)
        stopping = asyncio.create_task(backend.stop(rep, grace_s=10))
        while (await client.get(rep.url + "/health")).status_code == 200:
            await asyncio.sleep(0.02)
        late = await client.post(rep.url + "/v1/completions", json=body)
        assert late.status_code == 503
        r = await slow
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 20
        await stopping
        assert await backend.list() == []


async def test_crashed_replica_resets_its_streams_mid_way(
    sim: Callable[..., SimBackend],
) -> None:
    """DELETE ?crash=1 kills a replica as kill -9 kills an engine: a stream in flight is cut
    (no last event), and the replica and its lease are gone."""
    backend = sim(sim_pool="cpu=2")
    spec = sim_spec("cr", ["--load-s", "0", "--tps", "20"], accelerator="cpu")
    rep = await backend.start(spec, "cr-1", get_engine("sim", spec=spec))
    body = {"inputs": "hi", "parameters": {"max_new_tokens": 200}}  # 10 s of tokens
    events: list[bytes] = []
    async with httpx.AsyncClient(timeout=30) as client:

        async def stream() -> None:
            async with client.stream("POST", rep.url + "/generate_stream", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        events.append(line.encode())

        reading = asyncio.create_task(stream())
        while not events:
            await asyncio.sleep(0.02)
        host = await backend.host_url()
        token = (backend._record() or {})["token"]
        r = await client.delete(f"{host}/replicas/cr-1", params={"crash": "1"},
                                headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert r.status_code == 200 and r.json()["state"] == "stopped"
        with pytest.raises(httpx.HTTPError):
            await reading
    assert 0 < len(events) < 200
    assert json.loads(events[-1][5:])["generated_text"] is None  # not the last event
    assert await backend.list() == []
    assert (await backend.free_accelerators())["cpu"] == 2


async def test_host_outlives_its_backend_and_is_adopted(sim: Callable[..., SimBackend]) -> None:
    first = sim(sim_pool="cpu=2")
    spec = sim_spec("ad", ["--load-s", "0"], accelerator="cpu")
    rep = await first.start(spec, "ad-1", get_engine("sim", spec=spec))
    await first.close()  # the scaler goes away; the host does not
    second = sim(sim_pool="cpu=2")
    listed = await second.list()
    assert [(r.replica_id, r.url, r.alive) for r in listed] == [("ad-1", rep.url, True)]
    # A start through the second backend uses the same host (and pool), not a new one.
    pid = host_pid(second)
    await second.start(spec, "ad-2", get_engine("sim", spec=spec))
    assert host_pid(second) == pid
    with pytest.raises(PoolExhausted):
        await second.start(spec, "ad-3", get_engine("sim", spec=spec))
    assert await second.stop_all(grace_s=1) == 2
    assert not host_alive(pid, second.state_file.parent)
    assert not second.state_file.exists()
    assert await second.list() == []


async def test_time_scale_divides_every_duration(sim: Callable[..., SimBackend]) -> None:
    backend = sim(sim_pool="l4_24gb=1", sim_acquire_s=3, sim_time_scale=10)
    args = ["--load-s", "5", "--ttft-s", "1", "--prefill-tps", "1000", "--tps", "10"]
    spec = sim_spec("ts", args, accelerator="l4_24gb_100")
    t0 = time.monotonic()
    rep = await backend.start(spec, "ts-1", get_engine("sim", spec=spec))
    assert 0.3 <= time.monotonic() - t0 < 2.5  # 3 s of acquisition at 10x
    async with httpx.AsyncClient(timeout=30) as client:
        while (await client.get(rep.url + "/health")).status_code != 200:
            await asyncio.sleep(0.02)
        assert 0.3 + 0.5 <= time.monotonic() - t0 < 4  # plus 5 s of loading at 10x
        t1 = time.monotonic()
        r = await client.post(rep.url + "/v1/completions", json={"prompt": "x", "max_tokens": 20})
        assert r.status_code == 200
        assert (1 + 19 / 10) / 10 <= time.monotonic() - t1 < 2.5  # 2.9 s of decoding at 10x
    usage = await backend.usage()
    assert usage["time_scale"] == 10 and usage["gpu_seconds"]["acme/ts"] > 0


async def test_prefix_cache_serves_repeated_prefixes_faster(
    sim: Callable[..., SimBackend],
) -> None:
    backend = sim()
    args = ["--prefill-tps", "2000", "--cache-blocks", "4", "--ttft-s", "0", "--load-s", "0"]
    spec = sim_spec("pc", args)
    rep = await backend.start(spec, "pc-1", get_engine("sim", spec=spec))
    shared = "h1 " * 512 + "h2 " * 512
    async with httpx.AsyncClient(timeout=30) as client:
        while (await client.get(rep.url + "/health")).status_code != 200:
            await asyncio.sleep(0.02)

        async def complete(prompt: str) -> tuple[int, float]:
            t0 = time.monotonic()
            r = await client.post(rep.url + "/v1/completions",
                                  json={"prompt": prompt, "max_tokens": 1})  # fmt: skip
            usage = r.json()["usage"]
            return usage["prompt_tokens_details"]["cached_tokens"], time.monotonic() - t0

        cold, cold_s = await complete(shared + "question one")
        warm, warm_s = await complete(shared + "question two")
        other, _ = await complete("h9 " * 1024)
    assert (cold, warm, other) == (0, 1024, 0)
    assert cold_s >= 1024 / 2000 and warm_s < cold_s
    usage = await backend.usage()
    assert usage["tokens"]["acme/pc"] == {"prompt_tokens": 3076, "cached_tokens": 1024}


async def test_a_dead_host_means_no_replicas_and_a_new_host_starts(
    sim: Callable[..., SimBackend],
) -> None:
    backend = sim(sim_pool="cpu=2")
    spec = sim_spec("dh", ["--load-s", "0"], accelerator="cpu")
    await backend.start(spec, "dh-1", get_engine("sim", spec=spec))
    pid = host_pid(backend)
    os.kill(pid, 9)
    wait_until(lambda: not host_alive(pid, backend.state_file.parent), 10, "host gone")
    assert await backend.list() == []  # its replicas died with it
    await backend.stop(RunningReplica("dh-1", "acme/dh", 1, "http://x"), grace_s=1)  # no error
    rep = await backend.start(spec, "dh-2", get_engine("sim", spec=spec))
    assert host_pid(backend) != pid
    assert [r.replica_id for r in await backend.list()] == [rep.replica_id]


async def test_eight_concurrent_streams_cost_almost_no_cpu(
    sim: Callable[..., SimBackend],
) -> None:
    backend = sim(sim_pool="cpu=1")
    args = ["--load-s", "0", "--ttft-s", "0.05", "--tps", "40", "--batch", "8"]
    spec = sim_spec("cpu8", args, accelerator="cpu")
    rep = await backend.start(spec, "cpu8-1", get_engine("sim", spec=spec))
    pid = host_pid(backend)
    async with httpx.AsyncClient(timeout=30) as client:
        body = {"prompt": "a b c", "max_tokens": 80}  # 2 s each
        cpu0, t0 = proc_cpu_s(pid), time.monotonic()
        results = await asyncio.gather(*(sse_completion(client, rep.url, body) for _ in range(8)))
        wall, cpu = time.monotonic() - t0, proc_cpu_s(pid) - cpu0
        assert all(len(chunks) == 80 for chunks, _, _ in results)
        stats = (await client.get(rep.url + "/stats")).json()
    assert stats["max_concurrent"] == 8
    assert wall >= 0.05 + 79 / 40
    print(f"\n8 streams x 80 tokens: wall {wall:.2f}s, host cpu {cpu:.3f}s")
    assert cpu < 0.5, f"8 streams cost {cpu:.2f} CPU seconds in {wall:.1f}s"


# --- (b) hundreds of replicas on one host ---------------------------------------------------


async def test_two_hundred_replicas_on_a_small_machine(sim: Callable[..., SimBackend]) -> None:
    n = 200
    backend = sim(sim_pool="a10_24gb=256")
    args = ["--load-s", "0.5", "--ttft-s", "0.05", "--tps", "100", "--batch", "4"]
    spec = sim_spec("many", args, accelerator="a10_24gb_100")
    engine = get_engine("sim", spec=spec)
    await backend.host_url(start=True)
    pid = host_pid(backend)
    cpu0, t0 = proc_cpu_s(pid), time.monotonic()

    replicas = await asyncio.gather(
        *(backend.start(spec, f"many-{i:03d}", engine) for i in range(n))
    )
    created_s = time.monotonic() - t0
    assert len({r.url for r in replicas}) == n
    assert len(await backend.list()) == n
    assert (await backend.free_accelerators())["a10_24gb"] == 256 - n

    # The client side uses aiohttp: with hundreds of connections httpx's pool costs this
    # 2-core machine more CPU than the host it measures.
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
    ) as client:

        async def ready(url: str) -> None:
            while True:
                async with client.get(url + "/health") as r:
                    if r.status == 200:
                        return
                await asyncio.sleep(0.1)

        await asyncio.wait_for(asyncio.gather(*(ready(r.url) for r in replicas)), 30)
        ready_s = time.monotonic() - t0

        async def one(i: int, url: str) -> int:
            body = {"prompt": f"request number {i}", "max_tokens": 16, "stream": bool(i % 2)}
            async with client.post(url + "/v1/completions", json=body) as r:
                assert r.status == 200, await r.text()
                if not body["stream"]:
                    return int((await r.json())["usage"]["completion_tokens"])
                events = [ln async for ln in r.content if ln.startswith(b"data: ")]
                assert events[-1] == b"data: [DONE]\n"
                return len(events) - 1

        t1 = time.monotonic()
        tokens = await asyncio.gather(*(one(i, r.url) for i, r in enumerate(replicas)))
        served_s = time.monotonic() - t1
        assert tokens == [16] * n

        async def served(url: str) -> int:
            async with client.get(url + "/stats") as r:
                return int((await r.json())["requests"])

        assert await asyncio.gather(*(served(r.url) for r in replicas)) == [1] * n
    busy_cpu = proc_cpu_s(pid) - cpu0
    rss = proc_rss_mib(pid)

    # Idle replicas cost nothing: no polling, no timers.
    cpu1 = proc_cpu_s(pid)
    await asyncio.sleep(2)
    idle_cpu = proc_cpu_s(pid) - cpu1

    t2 = time.monotonic()
    assert await backend.stop_all(grace_s=1) == n
    stop_s = time.monotonic() - t2
    total_s = time.monotonic() - t0
    print(
        f"\n{n} replicas: created in {created_s:.2f}s, all ready at {ready_s:.2f}s, "
        f"one request each in {served_s:.2f}s, stopped in {stop_s:.2f}s, total {total_s:.1f}s; "
        f"host cpu {busy_cpu:.2f}s busy, {idle_cpu:.3f}s over 2s idle; rss {rss:.0f} MiB"
    )
    assert busy_cpu < 5, f"host used {busy_cpu:.1f} CPU seconds for {n} replicas"
    assert idle_cpu < 0.2
    assert rss < 200


# --- (c) end to end: gateway and scaler on the sim backend ----------------------------------


def sim_leases(stack: Stack, name: str) -> list[dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        backend = SimBackend(Settings(state_dir=stack.state_dir))
        try:
            usage = await backend.usage()
        finally:
            await backend.close()
        return list(usage["usage"].get(f"{stack.tenant}/{name}", []))

    return asyncio.run(fetch())


def test_gateway_and_scaler_on_the_sim_backend(make_stack: Callable[..., Stack], name: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    stack = make_stack(backend="sim", sim_pool="a10_24gb=4,cpu=4", sim_acquire_s=0.2)
    args = ["--load-s", "1", "--ttft-s", "0.05", "--tps", "50", "--batch", "1"]
    stack.create(
        name,
        baseModel="sim-llm",
        customArgs=args,
        minReplicas=0,
        maxReplicas=2,
        scaleUpRequestThreshold=1,
        cooldownTime=120,
    )
    time.sleep(1.5)
    assert stack.sim_replicas(name) == {}  # nothing starts without a request

    # Wake: the first request starts exactly one replica and gets simulated text back.
    t0 = time.monotonic()
    r = stack.generate(name, "The capital of France is", 8)
    assert r.status_code == 200, r.text + stack.logs()
    assert r.json()["generated_text"] == " tok" * 8
    assert time.monotonic() - t0 >= 0.2 + 1  # acquisition and load time
    assert len(stack.sim_replicas(name)) == 1
    leases = sim_leases(stack, name)
    assert len(leases) == 1 and leases[0]["gpus"] == 1
    assert leases[0]["accelerator"] == "a10_24gb_100"  # sim-llm's default accelerator

    # Concurrent load (batch 1, threshold 1) scales out to max_replicas and never beyond.
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(stack.generate, name, f"load {i}", 40) for i in range(16)]
        wait_until(lambda: stack.ready_replicas(name) == 2, 60, "scale-out to 2 replicas")
        codes = [f.result().status_code for f in futures]
    assert codes == [200] * 16
    running = stack.sim_replicas(name)
    assert len(running) == 2 and set(running.values()) == {"ready"}
    assert len(sim_leases(stack, name)) == 2
    assert set(stack.registry(name)) == set(running)

    # A restarted scaler adopts the simulated replicas: same ones, no new start.
    stack.scalers[0].kill9()
    stack.scalers.clear()
    # While no scaler runs, the replicas keep serving.
    assert stack.generate(name, "no scaler", 4).status_code == 200
    stack.start_scaler()
    wait_until(
        lambda: httpx.get(f"http://127.0.0.1:{stack.scaler_port}/healthz").json()["leader"],
        30,
        "the new scaler to lead",
    )
    time.sleep(3)  # a few reconcile passes
    r = stack.generate(name, "after the restart", 4)
    assert r.status_code == 200 and r.json()["generated_text"] == " tok" * 4
    assert stack.sim_replicas(name) == running
    assert len(sim_leases(stack, name)) == 2
    assert set(stack.registry(name)) == set(running)
    stack.delete(name)
    wait_until(lambda: stack.sim_replicas(name) == {}, 60, "replicas stopped on delete")
    assert all(lease["released_at"] for lease in sim_leases(stack, name))
