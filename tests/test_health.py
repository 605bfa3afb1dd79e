"""Deployment health: the counts' layout and percentiles (pure), their rows in a real Redis
(two gateways add up, old rows go, a purged deployment's rows stay gone), and
`GET /v2/deployments/{name}/health` on the shared stack with a real llama.cpp replica."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from harness import Stack, run_async, wait_until

from wakegate import health
from wakegate.health import (
    BadWindow,
    bucket_of,
    empty_row,
    health_view,
    latency_slot,
    parse_window,
    quantile,
    step_of,
)
from wakegate.spec import DeploymentConfig, DeploymentSpec
from wakegate.status import HistoryPoint
from wakegate.store import Store, keys_of

# --- pure: windows, steps, percentiles, the view ------------------------------------------


def sparse(row: list[int]) -> dict[int, int]:
    """A row as stored: its counts by index, zeros left out."""
    return {i: n for i, n in enumerate(row) if n}


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [(None, 900), ("900", 900), ("60s", 60), ("15m", 900), ("1h", 3600), (" 5m ", 300)],
)
def test_a_window_reads_as_seconds_or_a_duration(raw: str | None, seconds: int) -> None:
    assert parse_window(raw) == seconds


@pytest.mark.parametrize("raw", ["", "abc", "-5", "1.5m", "59", "2h", "3601", "1d", "10 m"])
def test_a_bad_window_is_refused(raw: str) -> None:
    with pytest.raises(BadWindow):
        parse_window(raw)


def test_steps_are_whole_buckets_and_at_most_max_points() -> None:
    assert step_of(300) == 10 and step_of(900) == 10
    assert step_of(3600) == 30
    assert 3600 // step_of(3600) <= health.MAX_POINTS


def test_percentiles_interpolate_within_the_histograms_buckets() -> None:
    hist = [0] * (len(health.LATENCY_BOUNDS_MS) + 1)
    assert quantile(hist, 0.5) is None
    # 100 samples between 100 and 150 ms (bucket 5): p50 halfway, p95 near the top.
    hist[latency_slot(0.12)] += 100
    assert latency_slot(0.12) == health.LATENCY_BOUNDS_MS.index(150)
    assert quantile(hist, 0.5) == pytest.approx(0.125)
    assert quantile(hist, 0.95) == pytest.approx(0.1475)
    # One slow one past the last bound: p95 stays in the fast bucket, the max is the bound.
    hist[latency_slot(1000.0)] += 1
    assert quantile(hist, 0.95) == pytest.approx(0.147975)
    assert quantile(hist, 1.0) == health.LATENCY_BOUNDS_MS[-1] / 1000


def test_the_view_sums_buckets_into_steps_and_the_window() -> None:
    now = 10_000.0  # a step boundary: the last step has had a second
    inside, old = empty_row(), empty_row()
    inside[health.REQUESTS] = 20
    inside[health.ERRORS] = 1
    inside[health.TOKENS] = 200
    inside[health.TTFT + latency_slot(0.3)] = 20
    inside[health.QUEUE + latency_slot(0.01)] = 20
    inside[health.COLD], inside[health.COLD_MS] = 2, 3000
    old[health.REQUESTS] = 7  # before the window: in no point, not in the totals
    rows = {bucket_of(now - 20): sparse(inside), bucket_of(now - 1000): sparse(old)}
    live = HistoryPoint(at=now + 1, queued=0, in_flight=0, starting=0, ready=1, draining=0)
    view = health_view("x", rows, [live], now + 1, 300)
    assert view.step_s == 10 and len(view.points) == 30
    assert view.points[-1].at == now and view.points[-1].requests == 0
    busy = [p for p in view.points if p.requests]
    assert [p.at for p in busy] == [now - 20]
    assert busy[0].requests_per_s == 2.0 and busy[0].tokens_per_s == 20.0
    assert busy[0].ttft_p50_s is not None and 0.2 < busy[0].ttft_p50_s <= 0.3
    assert busy[0].cold_starts == 2 and busy[0].cold_start_mean_s == 1.5
    assert view.totals.requests == 20 and view.totals.errors == 1 and view.totals.tokens == 200
    assert [p.ttft_p50_s for p in view.points if not p.requests] == [None] * 29
    wire = view.model_dump(by_alias=True)
    assert {"ttftP95S", "queueWaitP50S", "coldStartMeanS", "requestsPerS"} <= set(wire["points"][0])


def test_an_hours_steps_sum_three_buckets_each() -> None:
    now = 36_000.0  # a 30 s step boundary
    rows: dict[int, dict[int, int]] = {}
    for i, bucket in enumerate((35_940, 35_950, 35_960, 35_970)):  # 3 in one step, 1 in the next
        row = empty_row()
        row[health.REQUESTS] = i + 1
        rows[bucket] = sparse(row)
    view = health_view("x", rows, [], now + 30, 3600)
    assert view.step_s == 30 and len(view.points) == 120
    by_start = {p.at: p.requests for p in view.points if p.requests}
    assert by_start == {35_940.0: 1 + 2 + 3, 35_970.0: 4}
    assert view.totals.requests == 10


# --- the rows in a real Redis ------------------------------------------------------------------


def _spec(key: str) -> DeploymentSpec:
    tenant, name = key.split("/")
    return DeploymentSpec(
        tenant, name, "u", None, DeploymentConfig(base_model="gemma-3-270m"), "ready", 1, 0, 0
    )


async def test_two_gateways_counts_add_up_and_old_rows_go(store: Store) -> None:
    key = "acme/healthy"
    assert await store.create_deployment(_spec(key), [])
    one, two = empty_row(), empty_row()
    one[health.REQUESTS], one[health.TOKENS] = 2, 10
    two[health.REQUESTS], two[health.TTFT + 3] = 3, 4
    await store.add_health({key: {1000: one}}, 0, 60)
    await store.add_health({key: {1000: two, 1010: one}}, 0, 60)
    row = await store.health_row(key)
    assert row is not None
    assert row.rows[1000][health.REQUESTS] == 5 and row.rows[1000][health.TOKENS] == 10
    assert row.rows[1000][health.TTFT + 3] == 4 and row.rows[1010][health.REQUESTS] == 2
    # Stored sparse: the zeros of a row take no room.
    assert row.rows[1000] == {health.REQUESTS: 5, health.TOKENS: 10, health.TTFT + 3: 4}
    await store.add_health({key: {1020: empty_row()}}, 0, 60)
    assert 1020 not in (await store.health_row(key) or row).rows
    # A new row drops those older than the oldest kept; the key expires with the ttl.
    await store.add_health({key: {5000: one}}, 1010, 60)
    row = await store.health_row(key)
    assert row is not None and sorted(row.rows) == [1010, 5000]
    assert 0 < await store.redis.ttl(keys_of(key).health) <= 60


async def test_a_purged_deployments_rows_go_and_a_late_flush_brings_none_back(
    store: Store,
) -> None:
    key = "acme/gone"
    assert await store.create_deployment(_spec(key), [])
    one = empty_row()
    one[health.REQUESTS] = 1
    await store.add_health({key: {1000: one}}, 0, 60)
    assert await store.redis.exists(keys_of(key).health)
    await store.purge_deployment(key)
    assert not await store.redis.exists(keys_of(key).health)
    await store.add_health({key: {1010: one}}, 0, 60)  # a gateway's last second
    assert not await store.redis.exists(keys_of(key).health)
    assert await store.health_row(key) is None


# --- the endpoint, with a real llama.cpp replica ---------------------------------------------


def _health(stack: Stack, name: str, window: str = "5m") -> httpx.Response:
    return stack.api("GET", f"/v2/deployments/{name}/health", params={"window": window})


def test_the_health_of_a_deployment_counts_its_requests_cold_start_and_replicas(
    stack: Stack, name: str
) -> None:
    stack.create(name, minReplicas=0, maxReplicas=1, cooldownTime=600)
    empty = _health(stack, name)
    assert empty.status_code == 200, empty.text
    assert empty.json()["totals"]["requests"] == 0
    assert empty.json()["totals"]["ttftP50S"] is None

    # The first request wakes it (a cold start), the second finds it warm; an async one too.
    for _ in range(2):
        r = stack.generate(name, max_new_tokens=4)
        assert r.status_code == 200, r.text
    job = httpx.post(
        stack.deploy_url(name) + "/async",
        headers=stack.headers,
        json={"inputs": "Hello", "parameters": {"max_new_tokens": 4}},
        timeout=30,
    )
    assert job.status_code == 202, job.text
    job_url = f"{stack.deploy_url(name)}/async/{job.json()['id']}"
    wait_until(
        lambda: httpx.get(job_url, headers=stack.headers).json()["status"] == "done", 60, "the job"
    )

    def counted() -> dict[str, Any] | None:
        body = _health(stack, name).json()
        return body if body["totals"]["requests"] == 3 else None

    body = wait_until(counted, 10, "the three requests in the health view")
    totals = body["totals"]
    assert totals["errors"] == 0
    assert 3 <= totals["tokens"] <= 12
    assert totals["coldStarts"] == 1
    assert totals["coldStartMeanS"] > 0.2  # it waited for llama.cpp to load the model
    assert totals["ttftP50S"] > 0 and totals["ttftP95S"] >= totals["ttftP50S"]
    assert totals["queueWaitP95S"] is not None
    assert body["windowS"] == 300 and body["stepS"] == 10 and len(body["points"]) == 30
    assert sum(p["requests"] for p in body["points"]) == 3
    assert any(p["tokensPerS"] > 0 for p in body["points"])
    assert body["replicas"][-1]["ready"] == 1

    bad = _health(stack, name, "3d")
    assert bad.status_code == 400 and bad.json()["field"] == "window", bad.text
    assert "window" in bad.json()["error"]
    assert _health(stack, "no-such-deployment").status_code == 404

    stack.delete(name)
    assert _health(stack, name).status_code == 404

    def listed() -> set[str]:
        return {d["name"] for d in stack.api("GET", "/v2/status").json()["deployments"]}

    wait_until(lambda: name not in listed(), 60, "the deployment purged")

    async def rows_left() -> int:
        s = stack.store()
        try:
            return int(await s.redis.exists(keys_of(f"{stack.tenant}/{name}").health))
        finally:
            await s.close()

    assert run_async(rows_left()) == 0
