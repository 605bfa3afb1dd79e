"""The warm fast path: a request queues and takes a free slot in one call (store.EXCHANGE, as
`Store.admit`), and a slot given back goes to the queue's head in the same call, while the
queue keeps its guarantees: global order across gateways, leases, the queue limit."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from harness import Proc, Stack, free_port, wait_until

from router.dispatch import Dispatcher
from wakegate.store import (
    Admission,
    Assignment,
    Exchanged,
    QueueFull,
    ReplicaRecord,
    Store,
    dep_key,
)

D = "acme/llm"


def replica(rid: str, concurrency: int = 1) -> ReplicaRecord:
    return ReplicaRecord(
        id=rid, deployment=D, revision=1, state="ready", url=f"http://{rid}", dialect="openai",
        concurrency=concurrency, backend="sim", key=f"key-of-{rid}",
    )  # fmt: skip


# --- the script -------------------------------------------------------------------------------


async def release_and_dispatch(
    store: Store, replica_id: str, request_id: str, gateway_id: str
) -> list[Assignment]:
    """Give a slot back and hand out what is free then, in one call."""
    done = await store.exchange(D, [(replica_id, request_id)], [], 10_000, gateway_id, "prefix")
    return done.assignments


async def test_a_request_that_finds_a_free_slot_gets_it_and_the_replica_record_at_once(
    store: Store,
) -> None:
    await store.put_replica(replica("a"))
    admitted = await store.admit(D, "r", "gw-1", 0, 10_000)
    assert admitted.added and not admitted.cold and admitted.depth == 0
    [got] = admitted.assignments
    assert (got.request_id, got.replica_id) == ("r", "a")
    record = ReplicaRecord.from_json(got.record)
    assert record.url == "http://a" and record.key == "key-of-a"
    assert (await store.load(D)).in_flight == 1


async def test_a_newer_request_never_overtakes_an_older_queued_one(store: Store) -> None:
    """A waits (the only slot is busy); the slot comes free without a dispatch (released by
    a path that does not hand it on); B arrives at another gateway that very moment: B's own
    call hands the slot to A, and B queues behind it."""
    await store.put_replica(replica("a"))
    assert (await store.admit(D, "busy", "gw-1", 0, 10_000)).assignments
    older = await store.admit(D, "A", "gw-2", 0, 10_000)
    assert older.assignments == [] and older.depth == 1
    await store.release(D, "a", "busy")

    newer = await store.admit(D, "B", "gw-1", 0, 10_000)
    # A is gw-2's: published to it, so it comes back without a record.
    assert newer.assignments == [Assignment("A", "a", "")]
    assert newer.depth == 1
    assert await store.take_assignments(D, ["A", "B"]) == {"A": "a"}


async def test_a_newer_request_of_higher_priority_goes_first(store: Store) -> None:
    await store.put_replica(replica("a"))
    await store.admit(D, "busy", "gw-1", 0, 10_000)
    await store.admit(D, "low", "gw-1", 0, 10_000)
    await store.admit(D, "high", "gw-2", 5, 10_000)
    freed = await release_and_dispatch(store, "a", "busy", "gw-2")
    assert [(x.request_id, x.replica_id) for x in freed] == [("high", "a")]
    assert ReplicaRecord.from_json(freed[0].record).id == "a"


async def test_a_released_slot_goes_to_the_queue_head_in_the_same_call(store: Store) -> None:
    pubsub = store.redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("wg:gw:gw-2")
    await store.put_replica(replica("a"))
    await store.admit(D, "busy", "gw-1", 0, 10_000)
    await store.admit(D, "mine", "gw-1", 0, 10_000)
    await store.admit(D, "theirs", "gw-2", 0, 10_000)

    [mine] = await release_and_dispatch(store, "a", "busy", "gw-1")
    assert (mine.request_id, mine.replica_id) == ("mine", "a") and mine.record
    [theirs] = await release_and_dispatch(store, "a", "mine", "gw-1")
    assert theirs == Assignment("theirs", "a", "")
    msg = None
    for _ in range(50):
        msg = await pubsub.get_message(timeout=0.1)
        if msg:
            break
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert msg is not None and msg["data"] == f"{D} theirs a"
    load = await store.load(D)
    assert (load.queued, load.in_flight, load.completions_total) == (0, 1, 2)


async def test_a_dead_gateways_slot_and_queue_entry_stop_blocking_after_their_lease(
    store: Store,
) -> None:
    await store.put_replica(replica("a"))
    assert (await store.admit(D, "held", "gw-dead", 0, 1)).assignments  # slot lease of 1 ms
    await store.admit(D, "queued", "gw-dead", 0, 1)  # queue lease of 1 ms
    await asyncio.sleep(0.01)
    live = await store.admit(D, "live", "gw-1", 0, 10_000)
    assert [x.request_id for x in live.assignments] == ["live"]
    assert (await store.load(D)).queued == 0


async def test_admit_at_the_queue_limit_refuses_and_changes_nothing(store: Store) -> None:
    await store.admit(D, "q1", "gw-1", 0, 10_000, max_queue=1)  # cold: stays queued
    with pytest.raises(QueueFull):
        await store.admit(D, "q2", "gw-1", 0, 10_000, max_queue=1)
    assert (await store.load(D)).queued == 1
    assert (await store.load(D)).arrivals_total == 1


async def test_admitting_a_queued_request_again_is_no_refusal(store: Store) -> None:
    await store.admit(D, "q1", "gw-1", 0, 10_000, max_queue=1)  # cold: stays queued
    again = await store.admit(D, "q1", "gw-1", 0, 10_000, max_queue=1)
    assert not again.added and again.depth == 1
    assert (await store.load(D)).arrivals_total == 1


# --- one call per deployment and turn of the gateway's loop (store.EXCHANGE, Dispatcher) ------


async def test_an_exchange_releases_then_admits_in_order_then_dispatches(store: Store) -> None:
    """Two slots; both busy, one older request queued (another gateway's). One call gives
    both slots back and admits two new requests: the older queued request gets a slot first,
    then the first new one; the second new one waits."""
    await store.put_replica(replica("a", concurrency=2))
    await store.admit(D, "busy1", "gw-1", 0, 10_000)
    await store.admit(D, "busy2", "gw-1", 0, 10_000)
    await store.admit(D, "older", "gw-2", 0, 10_000)
    done = await store.exchange(
        D,
        [("a", "busy1"), ("a", "busy2")],
        [Admission("new1"), Admission("new2")],
        10_000,
        "gw-1",
        "prefix",
    )
    assert [(x.request_id, x.replica_id) for x in done.assignments] == [
        ("older", "a"), ("new1", "a"),
    ]  # fmt: skip
    assert done.assignments[0].record == ""  # gw-2's: published to it
    assert ReplicaRecord.from_json(done.assignments[1].record).id == "a"
    assert done.admitted == [(True, False, False), (True, False, False)]
    assert done.depth == 1
    load = await store.load(D)
    assert (load.queued, load.in_flight, load.completions_total) == (1, 2, 2)


async def test_an_exchange_refuses_only_the_admissions_over_the_queue_limit(
    store: Store,
) -> None:
    done = await store.exchange(
        D, [], [Admission("q1", max_queue=1), Admission("q2", max_queue=1)], 10_000, "gw-1",
        "prefix",
    )  # fmt: skip
    # Cold (no replica): the first queues and wakes the deployment, the second is refused.
    assert done.admitted == [(True, True, True), (False, False, False)]
    assert done.full == [False, True]
    assert (await store.load(D)).queued == 1
    assert (await store.load(D)).arrivals_total == 1


async def test_a_refused_admission_does_not_hold_back_the_request_that_waits(
    store: Store,
) -> None:
    """The queue is at its limit with a cold request when a replica becomes ready (nothing
    dispatched yet). The next arrival is refused, and its call hands the slot to the one
    that waits."""
    await store.admit(D, "q1", "gw-1", 0, 10_000, max_queue=1)
    await store.put_replica(replica("a"))
    done = await store.exchange(D, [], [Admission("q2", max_queue=1)], 10_000, "gw-1", "prefix")
    assert done.full == [True] and done.admitted == [(False, False, False)]
    [got] = done.assignments
    assert (got.request_id, got.replica_id) == ("q1", "a") and got.record
    assert done.depth == 0


def counting(store: Store) -> list[tuple[int, int]]:
    """(releases, admissions) of each of the store's exchange calls from now on."""
    calls: list[tuple[int, int]] = []
    real = store.exchange

    async def counted(*args: Any, **kwargs: Any) -> Exchanged:
        calls.append((len(args[1]), len(args[2])))
        return await real(*args, **kwargs)

    store.exchange = counted  # type: ignore[method-assign]
    return calls


async def test_requests_of_one_turn_share_one_call_and_keep_their_order(store: Store) -> None:
    """Ten requests queued in the same turn of the gateway's loop go to Redis in one call, in
    the order they arrived: with one free slot, the first gets it."""
    await store.put_replica(replica("a"))
    dispatcher = Dispatcher(store, 10_000)
    calls = counting(store)
    tickets = await asyncio.gather(*(dispatcher.enqueue(D) for _ in range(10)))
    assert calls == [(0, 10)]
    assert [t.assigned.done() for t in tickets] == [True] + [False] * 9
    assert (await store.load(D)).queued == 9
    # Giving the slot back hands it to the next in arrival order.
    await dispatcher.finish(tickets[0])
    assert tickets[1].assigned.done() and not tickets[2].assigned.done()
    for t in tickets[1:]:
        await dispatcher.finish(t)
    load = await store.load(D)
    assert (load.queued, load.in_flight) == (0, 0)


async def test_a_slot_given_back_without_waiting_goes_with_the_next_admission(
    store: Store,
) -> None:
    """The request path gives its slot back with `finish_soon` (the response does not wait for
    Redis): the release goes in the deployment's next exchange call, together with the next
    request's admission, which gets that slot; nothing is left held or queued."""
    await store.put_replica(replica("a"))
    dispatcher = Dispatcher(store, 10_000)
    calls = counting(store)
    first = await dispatcher.enqueue(D)
    assert first.assigned.result() == "a"
    dispatcher.finish_soon(first)
    assert dispatcher.running_count(D) == 0  # no longer renewed: its lease would free it
    second = await dispatcher.enqueue(D)
    assert second.assigned.result() == "a"  # the slot the first gave back
    assert calls == [(0, 1), (1, 1)]
    dispatcher.finish_soon(second)
    load = await settled(store, lambda load: load.in_flight == 0)
    assert (load.queued, load.in_flight, load.completions_total) == (0, 0, 2)
    assert calls[-1] == (1, 0)


async def test_a_slot_given_back_waits_a_moment_for_the_next_admission(store: Store) -> None:
    """At low concurrency the next request comes a round trip after the answer: the release
    lingers for it, and the admission that comes starts the shared call at once (it never
    waits out the linger). A release nobody follows still goes, once the linger is up."""
    await store.put_replica(replica("a"))
    dispatcher = Dispatcher(store, 10_000, release_linger_s=0.5)
    calls = counting(store)
    first = await dispatcher.enqueue(D)
    dispatcher.finish_soon(first)
    await asyncio.sleep(0.01)  # the client's round trip
    async with asyncio.timeout(0.4):  # less than the linger
        second = await dispatcher.enqueue(D)
    assert second.assigned.result() == "a"
    assert calls == [(0, 1), (1, 1)]
    dispatcher.finish_soon(second)
    assert calls == [(0, 1), (1, 1)]  # lingering
    load = await settled(store, lambda load: load.in_flight == 0)
    assert (load.queued, load.completions_total) == (0, 2)
    assert calls[-1] == (1, 0)


async def test_a_slot_a_request_of_ours_waits_for_is_given_back_at_once(store: Store) -> None:
    await store.put_replica(replica("a"))  # one slot
    dispatcher = Dispatcher(store, 10_000, release_linger_s=60)
    first = await dispatcher.enqueue(D)
    second = await dispatcher.enqueue(D)
    assert first.assigned.done() and not second.assigned.done()
    dispatcher.finish_soon(first)
    async with asyncio.timeout(5):  # not the 60 s linger
        assert await dispatcher.wait(second) == "a"


async def test_a_queued_request_finished_without_waiting_leaves_the_queue(store: Store) -> None:
    dispatcher = Dispatcher(store, 10_000)
    ticket = await dispatcher.enqueue(D)  # cold: queued, no slot
    assert (await store.load(D)).queued == 1
    dispatcher.finish_soon(ticket)
    assert dispatcher.waiting_count(D) == 0
    load = await settled(store, lambda load: load.queued == 0)
    assert (load.queued, load.in_flight) == (0, 0)


async def settled(store: Store, check: Callable[[Any], bool], timeout_s: float = 5.0) -> Any:
    """The deployment's load once `check` holds for it (what was not awaited lands soon)."""
    async with asyncio.timeout(timeout_s):
        while not check(load := await store.load(D)):
            await asyncio.sleep(0.01)
    return load


async def test_the_dispatcher_passes_the_routing_mode_its_requests_came_with(
    store: Store,
) -> None:
    """The exchange gets the mode given at enqueue, and reads no spec for it; a deployment
    whose requests came without one has its mode read once from the stored spec."""
    await store.put_replica(replica("a", concurrency=4))
    dispatcher = Dispatcher(store, 10_000)
    modes: list[str] = []
    reads: list[str] = []
    real_exchange, real_routing = store.exchange, store.routing

    async def exchange(*args: Any, **kwargs: Any) -> Exchanged:
        modes.append(args[5])
        return await real_exchange(*args, **kwargs)

    async def routing(key: str) -> str:
        reads.append(key)
        return await real_routing(key)

    store.exchange = exchange  # type: ignore[method-assign]
    store.routing = routing  # type: ignore[method-assign]
    first = await dispatcher.enqueue(D, routing="least-loaded")
    await dispatcher.finish(first)
    assert modes == ["least-loaded", "least-loaded"] and reads == []
    other = "acme/other"
    await dispatcher.finish(await dispatcher.enqueue(other))
    await dispatcher.finish(await dispatcher.enqueue(other))
    assert modes[2:] == ["prefix", "prefix"] and reads == [other]


async def test_a_request_abandoned_while_its_admission_is_out_gives_its_slot_back(
    store: Store,
) -> None:
    await store.put_replica(replica("a"))
    dispatcher = Dispatcher(store, 10_000)
    gone = asyncio.ensure_future(dispatcher.enqueue(D))
    await asyncio.sleep(0)  # its exchange is on its way
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    # The exchange gave it the free slot; the gateway hands it back on its own.
    for _ in range(200):
        load = await store.load(D)
        if load.in_flight == 0 and load.completions_total == 1:
            break
        await asyncio.sleep(0.01)
    assert (load.queued, load.in_flight) == (0, 0)
    after = await dispatcher.enqueue(D)
    assert after.assigned.done()


# --- real stacks ------------------------------------------------------------------------------

# One sequence at a time; 20 tokens take about a second.
ONE_AT_A_TIME = ["--load-s", "0", "--ttft-s", "0", "--tps", "20", "--batch", "1"]


def second_gateway(stack: Stack) -> tuple[Proc, str]:
    port = free_port()
    env = {**stack.env, "WAKEGATE_PORT": str(port), "WAKEGATE_PRIVATE_PORT": str(free_port())}
    proc = Proc("gateway2", [sys.executable, "-m", "router"], stack.tmp / "gateway2.log", env)
    proc.start()
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{base}/healthz").status_code == 200, 30, "gateway 2 health")
    return proc, base


def hand_overs(stack: Stack, name: str) -> int:
    r = redis.Redis.from_url(stack.redis_url)
    try:
        return int(r.hlen(dep_key(f"{stack.tenant}/{name}", "assigned")))
    finally:
        r.close()


def test_across_two_gateways_a_queued_request_is_served_before_a_newer_one(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack(backend="sim")
    stack.create(name, baseModel="sim-llm", minReplicas=1, maxReplicas=1, customArgs=ONE_AT_A_TIME)
    wait_until(lambda: stack.ready_replicas(name) == 1, 60, "replica ready")
    gw2, base2 = second_gateway(stack)
    finished: list[str] = []

    def send(base: str, label: str, tokens: int) -> None:
        r = httpx.post(
            f"{base}/{stack.tenant}/deployments/v2/llms/{name}/v1/completions",
            headers=stack.headers,
            json={"prompt": label, "max_tokens": tokens},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        finished.append(label)

    try:
        busy = threading.Thread(target=send, args=(base2, "busy", 20))
        busy.start()
        wait_until(lambda: stack.in_flight(name) == 1, 20, "the slot taken")
        older = threading.Thread(target=send, args=(stack.base, "older", 2))
        older.start()
        wait_until(lambda: stack.queued(name) == 1, 20, "the older request queued")

        def newer_when_the_slot_frees() -> None:
            busy.join(120)
            send(base2, "newer", 2)  # at once, to the gateway that just freed the slot

        newer = threading.Thread(target=newer_when_the_slot_frees)
        newer.start()
        for t in (older, newer):
            t.join(120)
        assert finished == ["busy", "older", "newer"]
    finally:
        gw2.stop()
    stack.delete(name)


def test_a_killed_gateways_slots_are_freed_after_the_lease(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack(backend="sim")
    slow = ["--load-s", "0", "--ttft-s", "0", "--tps", "20", "--batch", "1"]
    stack.create(name, baseModel="sim-llm", minReplicas=1, maxReplicas=1, customArgs=slow)
    wait_until(lambda: stack.ready_replicas(name) == 1, 60, "replica ready")

    def hold_the_slot() -> None:
        with pytest.raises(httpx.HTTPError):
            httpx.post(
                stack.deploy_url(name) + "/v1/completions",
                headers=stack.headers,
                json={"prompt": "long", "max_tokens": 200},
                timeout=120,
            )

    holder = threading.Thread(target=hold_the_slot)
    holder.start()
    wait_until(lambda: stack.in_flight(name) == 1, 20, "the slot taken")
    # The gateway clears the slot's hand-over entry on its next tick: a gateway that dies
    # leaves none behind.
    wait_until(lambda: hand_overs(stack, name) == 0, 10, "the hand-over acknowledged")
    stack.gateway.kill9()
    holder.join(30)
    stack.start_gateway()
    # The dead gateway renews nothing: its slot is handed on once its lease (4 s) runs out.
    r = httpx.post(
        stack.deploy_url(name) + "/v1/completions",
        headers=stack.headers,
        json={"prompt": "after", "max_tokens": 2},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert json.loads(r.text)["choices"][0]["text"]
    wait_until(lambda: stack.in_flight(name) == 0, 30, "no slot held")
    stack.delete(name)
