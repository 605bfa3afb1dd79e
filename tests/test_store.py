"""Queue, dispatch and lease scripts against a real redis-server."""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest

from wakegate import store as store_module
from wakegate.spec import DeploymentConfig, DeploymentSpec
from wakegate.store import ReplicaRecord, Store, dep_key, keys_of

D = "acme/llm"


def replica(rid: str, concurrency: int = 1, state: str = "ready") -> ReplicaRecord:
    return ReplicaRecord(
        id=rid,
        deployment=D,
        revision=1,
        state=state,
        url="http://x",
        dialect="openai",
        concurrency=concurrency,
        backend="local",
    )


async def test_a_burst_of_cold_requests_wakes_once(store: Store) -> None:
    results = [await store.enqueue(D, f"r{i}", "gw", 0, 10_000) for i in range(50)]
    assert all(cold for *_, cold in results)
    wakes = [woke for _, _, woke, _ in results]
    assert wakes.count(True) == 1
    assert wakes[0] is True


async def test_enqueue_is_idempotent_on_the_request_id(store: Store) -> None:
    first = await store.enqueue(D, "same", "gw", 0, 10_000)
    again = await store.enqueue(D, "same", "gw", 0, 10_000)
    assert first[0] is True and again[0] is False
    assert (await store.load(D)).queued == 1


async def test_no_wake_when_a_replica_is_ready(store: Store) -> None:
    await store.put_replica(replica("r1"))
    _, _, woke, cold = await store.enqueue(D, "a", "gw", 0, 10_000)
    assert not woke and not cold


async def test_dispatch_serves_priority_then_arrival_and_respects_concurrency(
    store: Store,
) -> None:
    for rid, prio in [("low1", 0), ("low2", 0), ("high", 5)]:
        await store.enqueue(D, rid, "gw", prio, 10_000)
        await asyncio.sleep(0.002)
    assert await store.dispatch(D, 10_000) == []  # no replica yet
    await store.put_replica(replica("rep-a", concurrency=2))
    assert await store.dispatch(D, 10_000) == [("high", "rep-a"), ("low1", "rep-a")]
    assert await store.dispatch(D, 10_000) == []  # full
    await store.release(D, "rep-a", "high")
    assert await store.dispatch(D, 10_000) == [("low2", "rep-a")]


async def test_dispatch_prefers_the_least_loaded_replica(store: Store) -> None:
    await store.put_replica(replica("a", concurrency=4))
    await store.put_replica(replica("b", concurrency=4))
    for i in range(4):
        await store.enqueue(D, f"r{i}", "gw", 0, 10_000)
    got = await store.dispatch(D, 10_000)
    assert sorted(rid for _, rid in got) == ["a", "a", "b", "b"]


async def test_draining_replica_gets_no_new_requests(store: Store) -> None:
    await store.put_replica(replica("a", concurrency=4))
    await store.put_replica(replica("a", concurrency=4, state="draining"))
    await store.enqueue(D, "r", "gw", 0, 10_000)
    assert await store.dispatch(D, 10_000) == []


async def test_expired_queue_entries_and_slots_stop_blocking(store: Store) -> None:
    await store.put_replica(replica("a", concurrency=1))
    await store.enqueue(D, "dead-gateway", "gw-dead", 0, 1)  # lease of 1 ms
    await store.enqueue(D, "live", "gw", 0, 10_000)
    await asyncio.sleep(0.01)
    assert await store.dispatch(D, 1) == [("live", "a")]  # slot lease of 1 ms
    await asyncio.sleep(0.01)
    await store.enqueue(D, "next", "gw", 0, 10_000)
    assert await store.dispatch(D, 10_000) == [("next", "a")]


async def test_cancel_takes_a_request_out_wherever_it_is(store: Store) -> None:
    await store.enqueue(D, "q", "gw", 0, 10_000)
    assert await store.cancel(D, "q") == "queued"
    assert (await store.load(D)).queued == 0
    await store.put_replica(replica("a"))
    await store.enqueue(D, "s", "gw", 0, 10_000)
    assert await store.dispatch(D, 10_000) == [("s", "a")]
    assert await store.cancel(D, "s") == "assigned"
    assert (await store.load(D)).in_flight == 0
    assert await store.cancel(D, "s") == "none"


async def test_assignment_is_published_to_the_owning_gateway(store: Store) -> None:
    pubsub = store.redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("wg:gw:gw-7")
    await store.put_replica(replica("a"))
    await store.enqueue(D, "r", "gw-7", 0, 10_000)
    await store.dispatch(D, 10_000)
    msg = None
    for _ in range(50):
        msg = await pubsub.get_message(timeout=0.1)
        if msg:
            break
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert msg is not None and msg["data"] == f"{D} r a"


async def test_leader_lease_has_one_holder(store: Store) -> None:
    assert await store.hold_leadership("one", 5_000)
    assert not await store.hold_leadership("two", 5_000)
    assert await store.hold_leadership("one", 5_000)
    await store.resign_leadership("one")
    assert await store.hold_leadership("two", 5_000)


async def test_keys_of_one_deployment_share_a_hash_tag() -> None:
    k = keys_of(D)
    tags = {key.split("{")[1].split("}")[0] for key in (*k.all(), k.job("j"), k.claim("j"))}
    assert tags == {D}


async def test_counters_count_arrivals_and_every_way_out(store: Store) -> None:
    await store.put_replica(replica("a", concurrency=1))
    for rid in ("served", "queued-then-gone", "assigned-then-gone"):
        await store.enqueue(D, rid, "gw", 0, 10_000)
    await store.enqueue(D, "served", "gw", 0, 10_000)  # a duplicate is no new arrival
    assert await store.dispatch(D, 10_000) == [("served", "a")]
    await store.release(D, "a", "served")
    assert await store.cancel(D, "queued-then-gone") == "queued"
    assert await store.dispatch(D, 10_000) == [("assigned-then-gone", "a")]
    assert await store.cancel(D, "assigned-then-gone") == "assigned"
    load = await store.load(D)
    assert (load.arrivals_total, load.completions_total) == (3, 3)


_ids = itertools.count()


async def routed(
    store: Store,
    chain: list[str],
    n: int,
    adapter: str | None = None,
    routing: str = "prefix",
) -> list[str]:
    for _ in range(n):
        await store.enqueue(D, f"req-{next(_ids)}", "gw", 0, 10_000, prefix=chain,
                            adapter=adapter)  # fmt: skip
    return [rid for _, rid in await store.dispatch(D, 10_000, routing=routing)]


def turn(conversation: str, chunks: int) -> list[str]:
    """The prefix chain of a conversation's prompt after `chunks` chunks: a shared system
    prompt, then the conversation's own text (each key names everything up to its chunk)."""
    return ["system"] + [f"{conversation}-{i}" for i in range(1, chunks)]


async def test_prefix_routing_keeps_a_prefix_on_one_replica_within_a_load_bound(
    store: Store,
) -> None:
    for rid in ("a", "b", "c", "d"):
        await store.put_replica(replica(rid, concurrency=8))
    first = await routed(store, turn("c1", 3), 1)
    again = await routed(store, turn("c1", 3), 1)
    assert first == again, "the same prefix goes where it went"
    # A burst of one prefix is not herded onto that replica: the bounded load spreads it.
    burst = await routed(store, turn("c1", 3), 12)
    assert burst.count(first[0]) < 12 and len(set(burst)) > 1
    placed = first + again + burst
    assert max(placed.count(rid) for rid in "abcd") <= math.ceil(1.25 * 14 / 4) + 2


async def test_the_next_turn_goes_to_the_replica_that_served_the_conversation(
    store: Store,
) -> None:
    for rid in ("a", "b", "c", "d"):
        await store.put_replica(replica(rid, concurrency=8))
    assert await routed(store, turn("c1", 3), 1) == ["a"]  # new: the least loaded
    assert await routed(store, turn("c2", 3), 1) == ["b"]
    assert await routed(store, turn("c3", 3), 1) == ["c"]
    # d is idle, a busier; but a holds the first three chunks of this longer prompt.
    assert await routed(store, turn("c1", 5), 1) == ["a"]
    # When a is full the next turn goes elsewhere (d, the least loaded), and d then holds
    # the longest prefix of the conversation: the turn after follows it there.
    await store.put_replica(replica("a", concurrency=2))
    assert await routed(store, turn("c1", 7), 1) == ["d"]
    await store.put_replica(replica("a", concurrency=8))
    assert await routed(store, turn("c1", 9), 1) == ["d"]


async def test_a_shared_system_prompt_alone_is_no_reason_to_follow_a_replica(
    store: Store,
) -> None:
    for rid in ("a", "b"):
        await store.put_replica(replica(rid, concurrency=8))
    assert await routed(store, turn("c1", 4), 1) == ["a"]
    # Only the first of four chunks matches a's: the least-loaded replica gets it.
    assert await routed(store, turn("c2", 4), 1) == ["b"]
    # Half the prompt matching is enough.
    assert await routed(store, [*turn("c1", 2), "c4-x", "c4-y"], 1) == ["a"]


async def test_the_prefix_index_forgets_the_least_recently_routed_beyond_its_bound(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "PREFIX_INDEX_MAX", 10)
    for rid in ("a", "b"):
        await store.put_replica(replica(rid, concurrency=64))
    for i in range(8):
        await routed(store, turn(f"c{i}", 3), 1)
    index = await store.redis.hgetall(dep_key(D, "prefixes"))
    ages = await store.redis.zrange(dep_key(D, "prefixage"), 0, -1)
    assert len(index) == 10 and sorted(ages) == sorted(index)
    assert {"c7-1", "c7-2", "system"} <= set(index) and "c0-1" not in index


async def test_different_prefixes_spread_over_replicas(store: Store) -> None:
    for rid in ("a", "b", "c", "d"):
        await store.put_replica(replica(rid, concurrency=64))
    chosen = {(await routed(store, turn(f"user-{i}", 2), 1))[0] for i in range(40)}
    assert chosen == {"a", "b", "c", "d"}


def test_prefix_chains_share_keys_exactly_as_far_as_prompts_agree() -> None:
    from router.params import GenerateRequest
    from router.pipeline import PREFIX_CHUNK_CHARS, PREFIX_MAX_CHUNKS, prefix_chain

    earlier = "a" * (2 * PREFIX_CHUNK_CHARS + 10)
    later = earlier + "b" * PREFIX_CHUNK_CHARS
    other = "a" * PREFIX_CHUNK_CHARS + "c" * (2 * PREFIX_CHUNK_CHARS)
    one, two, three = (prefix_chain(GenerateRequest(inputs=t)) for t in (earlier, later, other))
    assert len(one) == 3 and len(two) == 4
    assert two[:2] == one[:2] and two[2] != one[2], "the third chunk differs after 10 chars"
    assert three[0] == one[0] and three[1] != one[1]
    huge = prefix_chain(GenerateRequest(inputs="x" * PREFIX_CHUNK_CHARS * (PREFIX_MAX_CHUNKS + 5)))
    assert len(huge) == PREFIX_MAX_CHUNKS and len(set(huge)) == PREFIX_MAX_CHUNKS


async def test_least_loaded_mode_ignores_prefixes(store: Store) -> None:
    for rid in ("a", "b"):
        await store.put_replica(replica(rid, concurrency=8))
    got = await routed(store, ["same-prefix"], 4, routing="least-loaded")
    assert sorted(got) == ["a", "a", "b", "b"]
    # The same requests under prefix routing follow the prefix to one replica.
    assert len(set(await routed(store, ["other-prefix"], 2))) == 1


async def test_the_routing_mode_comes_from_the_stored_spec_when_not_given(store: Store) -> None:
    assert await store.routing(D) == "prefix"  # no spec: the default
    tenant, name = D.split("/")
    config = DeploymentConfig(routing="least-loaded")
    spec = DeploymentSpec(tenant, name, "u", None, config, "ready", 1, 0, 0)
    await store.put_deployment(spec)
    assert await store.routing(D) == "least-loaded"
    for rid in ("a", "b"):
        await store.put_replica(replica(rid, concurrency=8))
    for i in range(4):
        await store.enqueue(D, f"r{i}", "gw", 0, 10_000, prefix=["same-prefix"])
    assert sorted(rid for _, rid in await store.dispatch(D, 10_000)) == ["a", "a", "b", "b"]


async def test_adapter_affinity_prefers_the_replica_that_has_it_until_overloaded(
    store: Store,
) -> None:
    await store.put_replica(replica("plain", concurrency=64))
    with_adapter = replica("lora", concurrency=64)
    with_adapter.adapters = ["acme/support-1"]
    await store.put_replica(with_adapter)
    assert await routed(store, ["p1"], 1, adapter="acme/support-1") == ["lora"]
    burst = await routed(store, ["p2"], 40, adapter="acme/support-1")
    assert burst.count("lora") > burst.count("plain") > 0, "bounded: overflow goes elsewhere"
    assert burst.count("lora") + 1 <= math.ceil(1.25 * 41 / 2) + 2


async def test_a_starting_replica_withdrawn_meanwhile_is_never_advanced(store: Store) -> None:
    starting = replica("s1", state="starting")
    await store.put_replica(starting)
    starting.url = "http://127.0.0.1:1"
    assert await store.advance_replica(starting)
    assert (await store.replica(D, "s1")).url == "http://127.0.0.1:1"  # type: ignore[union-attr]
    assert await store.ready_count(D) == 0

    draining = replica("s1", state="draining")
    await store.put_replica(draining)  # the scaler picked it for draining
    starting.state = "ready"
    assert not await store.advance_replica(starting)
    assert (await store.replica(D, "s1")).state == "draining"  # type: ignore[union-attr]
    assert await store.ready_count(D) == 0

    await store.remove_replica(D, "s1")
    assert not await store.advance_replica(starting)
    assert await store.replica(D, "s1") is None

    fresh = replica("s2", state="starting")
    await store.put_replica(fresh)
    fresh.state = "ready"
    assert await store.advance_replica(fresh)
    assert await store.ready_count(D) == 1


async def test_in_flight_is_counted_per_replica(store: Store) -> None:
    for rid in ("a", "b", "c"):
        await store.put_replica(replica(rid, concurrency=4))
    for i in range(5):
        await store.enqueue(D, f"r{i}", "gw", 0, 10_000)
    placed = [rid for _, rid in await store.dispatch(D, 10_000, routing="least-loaded")]
    await store.release(D, placed[0], "r0")
    counts = await store.in_flight_by_replica(D)
    expected = {rid: placed[1:].count(rid) for rid in set(placed[1:])}
    assert counts == expected and sum(counts.values()) == 4
    assert await store.replica_in_flight(D, placed[1]) == expected[placed[1]]


def test_scale_down_drains_starting_then_the_least_busy_replicas() -> None:
    from scaler.plan import pick_victims

    def rec(rid: str, state: str, created: float) -> ReplicaRecord:
        r = replica(rid, state=state)
        r.created_at = created
        return r

    active = [
        rec("old-busy", "ready", 1.0),
        rec("old-idle", "ready", 2.0),
        rec("new-busy", "ready", 3.0),
        rec("booting", "starting", 4.0),
    ]
    busy = {"old-busy": 3, "new-busy": 5}
    picked = [r.id for r in pick_victims(active, 3, busy)]
    assert picked == ["booting", "old-idle", "old-busy"]
    assert pick_victims(active, 0, busy) == []


async def test_the_scaler_sweep_and_status_overview_read_the_same_state(store: Store) -> None:
    tenant, name = D.split("/")
    await store.put_deployment(DeploymentSpec(tenant, name, "u", None, DeploymentConfig(),
                                              "ready", 1, 0, 0))  # fmt: skip
    await store.put_replica(replica("a", concurrency=1))
    for rid in ("r0", "r1", "r2"):
        await store.enqueue(D, rid, "gw", 0, 10_000)
    assert await store.dispatch(D, 10_000) == [("r0", "a")]
    await store.set_waiting(D, {"reason": "pool full"})
    await store.append_events(D, [{"eventType": f"e{i}"} for i in range(3)])

    gone = "acme/gone"
    [seen, nothing] = await store.observe([D, gone])
    assert (seen.key, seen.spec and seen.spec.name) == (D, name)
    assert [r.id for r in seen.replicas] == ["a"] and seen.busy == {"a": 1}
    assert (seen.load.queued, seen.load.in_flight, seen.load.arrivals_total) == (2, 1, 3)
    assert seen.load.last_activity_ms is not None
    assert seen.waiting == {"reason": "pool full"}
    assert nothing.spec is None and nothing.replicas == [] and nothing.load.queued == 0
    assert await store.load(D) == seen.load

    [row, empty] = await store.sweep([D, gone])
    assert (row.spec is not None, row.replicas, row.load) == (True, 1, 3)
    assert (empty.spec, empty.replicas, empty.load) == (None, 0, 0)

    [status] = await store.status_rows([gone, D], 2)  # a deployment without a spec is left out
    assert status.spec == seen.spec and status.replicas == seen.replicas
    assert (status.queued, status.in_flight, status.waiting) == (2, 1, {"reason": "pool full"})
    assert [e["eventType"] for e in status.events] == ["e1", "e2"]
    assert await store.observe([]) == [] and await store.status_rows([], 5) == []


async def test_a_purge_leaves_no_key_of_the_deployment(store: Store) -> None:
    """Every key the deployment's operations write is one `keys_of` names (or an async
    request's `job:`/`claim:`), and the purge deletes them all; its neighbour keeps its own."""
    tenant, name = D.split("/")
    spec = DeploymentSpec(tenant, name, "u", None, DeploymentConfig(), "deleting", 1, 0, 0)
    neighbour = DeploymentSpec(tenant, "other", "u2", None, DeploymentConfig(), "ready", 1, 0, 0)
    assert await store.create_deployment(spec, [{"eventType": "created"}])
    assert await store.create_deployment(neighbour, [{"eventType": "created"}])
    await store.put_replica(replica("a", concurrency=1))
    await store.enqueue(D, "first", "gw", 0, 10_000, prefix=["p1", "p2"], adapter="x")
    await store.put_job(D, "job-1", {"status": "queued"}, 600)
    await store.enqueue(D, "job-1", "async", 0, 10_000)
    assert await store.dispatch(D, 10_000, routing="prefix") == [("first", "a")]
    await store.put_job(D, "job-2", {"status": "queued"}, 600)
    assert await store.claim_job(D, "job-2", "runner", 10_000)
    await store.suspect(D, "b", 10_000)
    await store.log_request(D, {"status": 200}, 10, 1_000_000)
    await store.set_waiting(D, {"reason": "pool full"})
    await store.record_status([(D, {"desired": 1})], [(D, [0.0, 1, 0, 0, 1, 0])])
    await store.redis.set(keys_of(D).wake, 1)

    k = keys_of(D)
    found = {key async for key in store.redis.scan_iter(match=dep_key(D, "*"))}
    named = set(k.all()) | {k.job("job-1"), k.job("job-2"), k.claim("job-2")}
    assert found <= named, f"keys no DeploymentKeys attribute names: {found - named}"
    assert len(found) >= 20  # nearly every key was written above
    before = {key async for key in store.redis.scan_iter(match=dep_key(neighbour.key, "*"))}

    await store.purge_deployment(D)
    assert [key async for key in store.redis.scan_iter(match=dep_key(D, "*"))] == []
    assert D not in await store.deployment_keys()
    assert await store.tenant_deployment_count(tenant) == 1
    after = {key async for key in store.redis.scan_iter(match=dep_key(neighbour.key, "*"))}
    assert after == before and before
