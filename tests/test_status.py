"""The status overview: what the scaler records, `GET /v2/status`, and `wakegate status`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from conftest import unused_database
from harness import Stack, run_async, wait_until

from wakegate.status import (
    HistoryPoint,
    Overview,
    decision_due,
    history_window,
    sample,
    sample_due,
)
from wakegate.store import DECISIONS_MAX, HISTORY_MAX, Store, dep_key
from wakegate.tools.cli import main

# --- what the scaler records: pure rules ------------------------------------------------------


def test_a_sample_counts_replicas_by_state() -> None:
    states = ["ready", "starting", "ready", "draining", "ready"]
    assert sample(100.04, 3, 2, states) == [100.0, 3, 2, 1, 3, 1]
    assert sample(5.0, 0, 0, []) == [5.0, 0, 0, 0, 0, 0]


@pytest.mark.parametrize(
    ("last", "new", "due"),
    [
        (None, [0, 0, 0, 0, 0, 0], True),
        ([0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0], False),
        ([0, 0, 0, 0, 0, 0], [60, 0, 0, 0, 0, 0], False),
        ([0, 0, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0], True),
        ([0, 0, 0, 1, 0, 0], [2, 0, 0, 0, 1, 0], True),
        ([0, 0, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1], True),
        ([0, 1, 0, 0, 1, 0], [3, 5, 0, 0, 1, 0], False),
        ([0, 1, 0, 0, 1, 0], [10, 5, 0, 0, 1, 0], True),
        ([0, 1, 2, 0, 1, 0], [11, 1, 3, 0, 1, 0], True),
    ],
    ids=[
        "first-sample-is-stored",
        "no-change-soon-is-not",
        "no-change-ever-is-not",
        "a-replica-starting-is-stored-at-once",
        "starting-to-ready-is-stored-at-once",
        "a-replica-draining-is-stored-at-once",
        "a-load-change-within-the-interval-waits",
        "a-load-change-after-the-interval-is-stored",
        "in-flight-change-after-the-interval-is-stored",
    ],
)
def test_when_a_load_sample_is_stored(
    last: list[float] | None, new: list[float], due: bool
) -> None:
    assert sample_due(last, new, 10.0) is due


@pytest.mark.parametrize(
    ("last", "current", "desired", "reason", "due"),
    [
        (None, 0, 1, "wake: 1 request(s) waiting at zero replicas", True),
        ((0, 1, "wake"), 0, 1, "wake: 3 request(s) waiting at zero replicas", False),
        ((0, 1, "wake"), 1, 2, "scale up: load 4 needs 2 replica(s)", True),
        ((1, 2, "scale up"), 1, 2, "bounds: min_replicas=2", True),
        (None, 1, 1, "steady", False),
        ((1, 0, "idle"), 1, 1, "steady", False),
    ],
    ids=[
        "a-wake-is-news",
        "the-same-wake-repeated-by-the-next-pass-is-not",
        "a-new-target-is-news",
        "the-same-target-for-another-reason-is-news",
        "holding-steady-is-no-decision",
        "holding-steady-after-a-decision-is-no-decision",
    ],
)
def test_when_a_scaling_decision_is_recorded(
    last: tuple[int, int, str] | None, current: int, desired: int, reason: str, due: bool
) -> None:
    assert decision_due(last, current, desired, reason) is due


def _live(at: float, ready: int = 0, queued: int = 0) -> HistoryPoint:
    return HistoryPoint(at=at, queued=queued, in_flight=0, starting=0, ready=ready, draining=0)


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([], [(10_000, 1, 2)]),
        ([[9_990, 0, 0, 0, 0, 0]], [(9_990, 0, 0), (10_000, 1, 2)]),
        (
            [[1_000, 4, 0, 0, 3, 0], [6_500, 0, 0, 0, 0, 0], [9_000, 7, 0, 1, 0, 0]],
            [(6_400, 3, 4), (6_500, 0, 0), (9_000, 1, 7), (10_000, 1, 2)],
        ),
        ([[100, 4, 0, 0, 3, 0]], [(6_400, 3, 4), (10_000, 1, 2)]),
        (
            [[9_000, 1, 0, 0, 1, 0], "junk", [1, 2], [9_500, True, 0, 0, 0, 0]],
            [(9_000, 1, 1), (10_000, 1, 2)],
        ),
        ([[10_050, 9, 0, 0, 9, 0]], [(10_000, 1, 2)]),
    ],
    ids=[
        "nothing-stored-is-the-live-point-alone",
        "a-sample-inside-the-window-then-now",
        "the-sample-in-force-at-the-window-start-opens-it",
        "an-old-sample-alone-carries-into-the-window",
        "malformed-samples-are-skipped",
        "a-sample-from-the-future-is-ignored",
    ],
)
def test_the_history_window(samples: list[Any], expected: list[tuple[float, int, int]]) -> None:
    points = history_window(samples, _live(10_000, ready=1, queued=2), 3600)
    assert [(p.at, p.starting + p.ready, p.queued) for p in points] == expected


# --- the store --------------------------------------------------------------------------------


async def test_decisions_and_samples_are_capped_and_purged_with_the_deployment(
    store: Store,
) -> None:
    key = "acme/capped"
    decisions = [(key, {"at": i, "current": 0, "desired": 1, "reason": f"r{i}"}) for i in range(60)]
    samples = [(key, [float(i), 0, 0, 0, 1, 0]) for i in range(HISTORY_MAX + 20)]
    await store.record_status(decisions, samples)
    await store.record_status([], [])  # nothing to write: no round trip, no error
    stored = await store.redis.lrange(dep_key(key, "decisions"), 0, -1)
    assert len(stored) == DECISIONS_MAX
    assert json.loads(stored[-1])["reason"] == "r59"  # the newest kept, the oldest dropped
    history = await store.redis.lrange(dep_key(key, "history"), 0, -1)
    assert len(history) == HISTORY_MAX and json.loads(history[0])[0] == 20.0
    await store.purge_deployment(key)
    assert not await store.redis.exists(dep_key(key, "decisions"), dep_key(key, "history"))


# --- the gateway's overview and the CLI, on a real stack --------------------------------------

OTHER_TENANT = "globex"
SIM_ARGS = ["--load-s", "1", "--ttft-s", "0.05", "--tps", "200"]


@pytest.fixture(scope="module")
def status_stack(
    infra: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = Stack(
        tmp_path_factory.mktemp("status"),
        unused_database(infra),
        infra["mqtt_url"],
        backend="sim",
        sim_pool="a10_24gb=4,cpu=4",
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def other_tenant_token(stack: Stack) -> str:
    token = "pb_other_" + stack.tmp.name.replace("_", "-")

    async def seed() -> None:
        store = stack.store()
        try:
            await store.ensure_tenant(OTHER_TENANT, "Globex")
            await store.add_token(token, OTHER_TENANT)
        finally:
            await store.close()

    run_async(seed())
    return token


def overview(stack: Stack, token: str | None = None) -> Overview:
    headers = {"Authorization": f"Bearer {token or stack.token}"}
    r = httpx.get(f"{stack.base}/v2/status", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return Overview.model_validate(r.json())


def test_the_overview_shows_the_tenants_deployments_and_a_wakes_decision(
    status_stack: Stack,
) -> None:
    stack = status_stack
    mine, theirs = "status-mine", "status-theirs"
    stack.create(mine, baseModel="sim-llm", customArgs=SIM_ARGS, minReplicas=0, maxReplicas=1)
    other = other_tenant_token(stack)
    r = httpx.post(
        f"{stack.base}/v2/deployments",
        headers={"Authorization": f"Bearer {other}"},
        json={"name": theirs, "config": {"baseModel": "sim-llm", "customArgs": SIM_ARGS}},
    )
    assert r.status_code == 200, r.text

    # Without a token: 401 in the control plane's shape, nothing shown.
    r = httpx.get(f"{stack.base}/v2/status")
    assert r.status_code == 401 and "token" in r.json()["error"]
    # The page's files need none; a tenant "ui"'s data-plane paths do all the same.
    for path in ("/ui", "/ui/app.js", "/ui/style.css", "/ui/favicon.svg"):
        page = httpx.get(stack.base + path)
        assert page.status_code == 200
        # Review 2026-12b, finding 9: the page holds a bearer token; it runs nothing but its
        # own files, is never framed and sends no referrer.
        csp = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp and page.headers["X-Frame-Options"] == "DENY"
        assert page.headers["Referrer-Policy"] == "no-referrer"
    for response in (page, r, httpx.get(f"{stack.base}/openapi.json")):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "Server" not in response.headers, "no banner naming the software"
    r = httpx.get(f"{stack.base}/ui/secrets.txt")
    assert r.status_code == 404 and r.json()["field"] == "asset"
    r = httpx.get(f"{stack.base}/ui/deployments/v2/llms/{mine}/v1/models")
    assert r.status_code == 401, r.text

    view = overview(stack)
    assert view.tenant == stack.tenant
    assert [d.name for d in view.deployments] == [mine]  # never another tenant's
    dep = view.deployments[0]
    assert dep.status == "ready" and dep.base_model == "sim-llm"
    assert (dep.replicas.ready, dep.replicas.starting, dep.queued, dep.in_flight) == (0, 0, 0, 0)
    assert dep.last_decision is None and dep.events[-1].type == "Created"  # newest first
    assert dep.history[-1].at == view.at  # the live point closes the history
    theirs_view = overview(stack, other)
    assert [d.name for d in theirs_view.deployments] == [theirs]

    # A wake: the decision and its reason appear, and the history shows the replica.
    r = stack.generate(mine, max_new_tokens=4)
    assert r.status_code == 200, r.text + stack.logs()
    view = wait_until(
        lambda: (v := overview(stack)).deployments[0].replicas.ready == 1 and v,
        30,
        "the woken replica in the overview",
    )
    dep = view.deployments[0]
    decision = dep.last_decision
    assert decision is not None, dep
    assert (decision.current, decision.desired) == (0, 1)
    assert decision.reason.startswith("wake: ") and "waiting at zero replicas" in decision.reason
    assert dep.decisions[0] == decision
    assert view.at - 60 < decision.at <= view.at
    stored = wait_until(
        lambda: [p for p in overview(stack).deployments[0].history[:-1] if p.ready == 1],
        30,
        "a stored sample with the ready replica",
    )
    assert stored[0].at >= decision.at
    assert any(p.starting == 1 for p in overview(stack).deployments[0].history)
    # The other tenant's view did not change.
    assert [d.replicas.ready for d in overview(stack, other).deployments] == [0]

    # Deleted: its decisions and samples go with it (the scaler's purge).
    stack.delete(mine)
    wait_until(lambda: not leftover_keys(stack, f"{stack.tenant}/{mine}"), 60, "the purge")
    assert mine not in [d.name for d in overview(stack).deployments]


def leftover_keys(stack: Stack, key: str) -> list[str]:
    async def scan() -> list[str]:
        store = stack.store()
        try:
            return [k async for k in store.redis.scan_iter(match=dep_key(key, "*"))]
        finally:
            await store.close()

    return list(run_async(scan()))


def test_wakegate_status_once_json_and_table(status_stack: Stack) -> None:
    stack = status_stack
    name = "status-cli"
    stack.create(name, baseModel="sim-llm", customArgs=SIM_ARGS, minReplicas=0, maxReplicas=1)
    runner = CliRunner()
    args = ["status", "--once", "--json", "--url", stack.base, "--token", stack.token]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    view = Overview.model_validate_json(result.output)
    assert view.tenant == stack.tenant
    assert name in [d.name for d in view.deployments]
    raw = json.loads(result.output)
    assert {"inFlight", "lastDecision", "history"} <= set(raw["deployments"][0])  # camelCase

    # The gateway and token from the environment, as a table.
    env = {"WAKEGATE_URL": stack.base, "WAKEGATE_TOKEN": stack.token, "COLUMNS": "140"}
    result = runner.invoke(main, ["status", "--once"], env=env)
    assert result.exit_code == 0, result.output
    assert name in result.output and "last scaling decision" in result.output
    # The Predibase SDK's variables are the fallback.
    env = {
        "WAKEGATE_URL": None,
        "WAKEGATE_TOKEN": None,
        "PREDIBASE_GATEWAY": stack.base,
        "PREDIBASE_API_TOKEN": stack.token,
    }
    result = runner.invoke(main, ["status", "--once"], env=env)
    assert result.exit_code == 0 and name in result.output, result.output

    # A wrong token: the gateway's reason, a non-zero exit.
    result = runner.invoke(main, ["status", "--once", "--url", stack.base, "--token", "nope"])
    assert result.exit_code == 1
    assert "401" in result.output and "invalid API token" in result.output
