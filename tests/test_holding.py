"""Holding waiting requests: deployment re-checks and keep-alives shared by all that wait,
gateway workers on one port, and replicas that accept what the gateway accepts.

Real stacks on the sim backend (real gateway, scaler, sim host, Redis, broker). A deployment
whose replica loads for a long time keeps its requests waiting as long as a test needs.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
import psutil
import pytest
from harness import Stack, wait_until
from prometheus_client.parser import text_string_to_metric_families

SLOW_LOAD = ["--load-s", "600", "--ttft-s", "0", "--tps", "1000", "--batch", "64"]
QUICK_LOAD = ["--load-s", "1", "--ttft-s", "0", "--tps", "1000", "--batch", "64"]


def sim_stack(make_stack: Callable[..., Stack], **settings: Any) -> Stack:
    return make_stack(backend="sim", sim_pool="a10_24gb=8,cpu=8", **settings)


def create(stack: Stack, name: str, args: list[str], **config: Any) -> None:
    stack.create(
        name, baseModel="sim-llm", customArgs=args, minReplicas=0, maxReplicas=1,
        cooldownTime=300, **config,
    )  # fmt: skip


async def read_stream(
    client: aiohttp.ClientSession,
    stack: Stack,
    name: str,
    tokens: int = 4,
    lines: list[str] | None = None,
) -> tuple[int, list[str]]:
    """(status, the stream's lines without blank ones) of one streaming LoRAX request;
    `lines` fills as they arrive."""
    body = {"inputs": "hello", "parameters": {"max_new_tokens": tokens}}
    url = stack.deploy_url(name) + "/generate_stream"
    got = [] if lines is None else lines
    async with client.post(url, json=body, headers=stack.headers) as r:
        async for raw in r.content:
            line = raw.decode().rstrip("\r\n")
            if line:
                got.append(line)
        return r.status, got


async def until(check: Callable[[], bool], what: str) -> None:
    await asyncio.to_thread(wait_until, check, 60, what)


def data_events(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line[len("data:") :]) for line in lines if line.startswith("data:")]


def test_waiting_streams_get_keepalives_and_hear_at_once_that_their_deployment_went(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = sim_stack(make_stack)
    create(stack, name, SLOW_LOAD)
    n = 40
    seen: list[list[str]] = [[] for _ in range(n)]

    async def scenario() -> list[tuple[int, list[str]]]:
        async with aiohttp.ClientSession() as client:
            streams = [
                asyncio.create_task(read_stream(client, stack, name, lines=seen[i]))
                for i in range(n)
            ]
            await until(lambda: stack.queued(name) == n, "all queued")
            # The gateway's one keep-alive timer reaches every waiting stream, again and again.
            await until(lambda: all(s.count(": ping") >= 2 for s in seen), "keep-alives")
            stack.delete(name)
            return await asyncio.gather(*streams)

    for status, lines in asyncio.run(scenario()):
        assert status == 200
        (event,) = data_events(lines)
        assert "not found" in event["error"], event
    wait_until(lambda: stack.queued(name) == 0, 30, "the queue emptied")


def test_a_request_that_waits_past_the_queue_timeout_gets_504(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = sim_stack(make_stack, queue_timeout_s=3)
    create(stack, name, SLOW_LOAD)
    r = stack.generate(name, max_new_tokens=4)
    assert r.status_code == 504, r.text
    assert r.json()["error_type"] == "timeout"

    async def stream() -> tuple[int, list[str]]:
        async with aiohttp.ClientSession() as client:
            return await read_stream(client, stack, name)

    status, lines = asyncio.run(stream())
    assert status == 200
    (event,) = data_events(lines)
    assert event["error_type"] == "timeout", event
    wait_until(lambda: stack.queued(name) == 0, 30, "the queue emptied")


def test_a_replica_accepts_the_largest_body_its_gateway_accepts(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = sim_stack(make_stack)
    create(stack, name, QUICK_LOAD)
    # Just under the gateway's 8 MiB limit (the JSON around the prompt takes the rest).
    prompt = "a" * (8 * 1024 * 1024 - 4096)
    r = stack.generate(name, prompt, max_new_tokens=2, timeout=120)
    assert r.status_code == 200, r.text + stack.logs()
    assert r.json()["generated_text"] == " tok" * 2
    too_big = stack.generate(name, prompt + "a" * 8192, max_new_tokens=2)
    assert too_big.status_code == 413, too_big.text


def worker_pids(stack: Stack) -> list[int]:
    assert stack.gateway.p is not None
    return [c.pid for c in psutil.Process(stack.gateway.p.pid).children()]


def listening_workers(stack: Stack) -> int:
    """Workers that have bound the gateway port (until then the kernel sends them nothing)."""

    def listens(pid: int) -> bool:
        conns = psutil.Process(pid).net_connections(kind="tcp")
        return any(c.laddr and c.laddr.port == stack.port and c.status == "LISTEN" for c in conns)

    return sum(1 for pid in worker_pids(stack) if listens(pid))


def clients_of(pid: int, port: int) -> int:
    """Established client connections a worker holds on the gateway port."""
    conns = psutil.Process(pid).net_connections(kind="tcp")
    return sum(1 for c in conns if c.laddr and c.laddr.port == port and c.status == "ESTABLISHED")


@pytest.mark.timeout(240)
def test_two_workers_serve_and_a_killed_one_loses_nothing_queued_on_the_other(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = sim_stack(make_stack, gateway_workers=2)
    wait_until(lambda: listening_workers(stack) == 2, 30, "two workers listening")
    create(stack, name, ["--load-s", "8", "--ttft-s", "0", "--tps", "1000", "--batch", "64"])
    n = 32

    async def scenario() -> tuple[list[Any], int, int]:
        conn = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=conn) as client:
            streams = [
                asyncio.create_task(read_stream(client, stack, name, tokens=8)) for _ in range(n)
            ]
            await until(lambda: stack.queued(name) == n, "all queued")
            victim, survivor = worker_pids(stack)
            held = clients_of(victim, stack.port), clients_of(survivor, stack.port)
            assert sum(held) == n and min(held) > 0, held  # the kernel spread them
            psutil.Process(victim).send_signal(signal.SIGKILL)
            results = await asyncio.gather(*streams, return_exceptions=True)
            return results, held[0], held[1]

    results, on_victim, on_survivor = asyncio.run(scenario())
    served = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(e, aiohttp.ClientError) for e in lost), lost
    assert len(served) == on_survivor and len(lost) == on_victim
    for status, lines in served:
        assert status == 200
        assert data_events(lines)[-1]["generated_text"] == " tok" * 8
    # The dead worker's queue entries are freed by their leases; the supervisor restarts it.
    wait_until(lambda: stack.queued(name) == 0 and stack.in_flight(name) == 0, 60, "freed")
    wait_until(lambda: len(worker_pids(stack)) == 2, 30, "the worker restarted")
    assert stack.generate(name, max_new_tokens=2).status_code == 200


def test_any_worker_answers_metrics_for_all_of_them(
    make_stack: Callable[..., Stack], name: str
) -> None:
    """Counters of two workers add up on /metrics whichever worker answers the scrape."""
    stack = sim_stack(make_stack, gateway_workers=2)
    wait_until(lambda: listening_workers(stack) == 2, 30, "two workers listening")
    create(stack, name, QUICK_LOAD)
    n = 12

    def requests_counted(text: str) -> float:
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "wakegate_requests_total"
            and sample.labels == {"deployment": f"{stack.tenant}/{name}", "code": "200"}
        )

    async def scenario() -> tuple[list[int], list[float]]:
        # A new connection per request and per scrape: the kernel spreads them over both.
        conn = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=conn) as client:
            statuses = []
            for _ in range(n):
                body = {"inputs": "hello", "parameters": {"max_new_tokens": 2}}
                async with client.post(
                    stack.deploy_url(name) + "/generate", json=body, headers=stack.headers
                ) as r:
                    statuses.append(r.status)
            seen = []
            for _ in range(8):
                async with client.get(stack.base + "/metrics", headers=stack.metrics_headers) as r:
                    seen.append(requests_counted(await r.text()))
            return statuses, seen

    statuses, seen = asyncio.run(scenario())
    assert statuses == [200] * n
    assert seen == [n] * 8, seen

    # Review 2026-12b, finding 8: the workers' files keep a deleted deployment's values (its
    # queue depth gauge stuck at its last value); /metrics leaves them out, on every worker.
    stack.delete(name)
    key = f"{stack.tenant}/{name}"

    def series_of_deleted() -> list[str]:
        with httpx.Client() as fresh:  # a new connection: either worker may answer
            text = fresh.get(stack.base + "/metrics", headers=stack.metrics_headers).text
        return [
            sample.name
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.labels.get("deployment") == key
        ]

    wait_until(lambda: stack.api("GET", f"/v2/deployments/{name}").status_code == 404, 30, "gone")
    for _ in range(8):
        assert series_of_deleted() == []
