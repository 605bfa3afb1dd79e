"""Queue admission and slot assignment for the requests this gateway holds.

Every request goes through the deployment's Redis queue. Any gateway may run dispatch, which
hands queue heads to free replica slots in global order. A gateway's admissions and releases
of one deployment, made in one turn of its event loop (or while its last call was out), go in
one script call (store.EXCHANGE: give the slots back, queue the requests in order, dispatch):
its own requests' assignments come back in the reply with the replica's record, so a warm
request that finds a free slot shares that call with its turn's others. A retry's requeue
makes an exchange of its own (Store.admit). Requests of other gateways hear of their slot
over Redis pub/sub. Edge and level: the reply and the pub/sub message are the fast paths; a
tick that re-runs dispatch and reads assignments from Redis is the certain one. The tick also
renews the leases on this gateway's queue entries and slots, so that a gateway that dies
stops blocking the queue and holding capacity within one lease period.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wakegate.store import (
    MAX_PRIORITY,
    Admission,
    Assignment,
    Exchanged,
    QueueFull,
    ReplicaRecord,
    Store,
    gateway_channel,
)

log = logging.getLogger(__name__)

TICK_S = 0.5
# A slot given back while no request of this gateway waits for one goes to Redis this much
# later, with the next admission if one comes first (then at once): at low concurrency a
# client's next request follows its answer within a round trip, and the two share one call
# instead of making one each. Requests of other gateways wait for the slot at most this long.
RELEASE_LINGER_S = 0.005
# Parsed replica records kept, by their JSON (a changed record is a new entry).
RECORDS_KEPT = 1024


@dataclass
class Ticket:
    """One request's place in a deployment's queue, then its replica slot."""

    deployment: str
    request_id: str
    assigned: asyncio.Future[str]
    woke: bool = False
    cold: bool = False  # no replica was ready when it was queued
    queued_depth: int = 0
    # Set when the slot is handed over (the slot is then this gateway's to give back).
    replica_id: str | None = None
    replica: ReplicaRecord | None = None  # its record, when the assignment brought it


@dataclass
class _Turn:
    """A deployment's releases and admissions gathered for its next `Store.exchange` call."""

    releases: list[tuple[str, str]] = field(default_factory=list)
    released: list[asyncio.Future[None]] = field(default_factory=list)  # of those that wait
    admissions: list[Admission] = field(default_factory=list)
    admitted: list[asyncio.Future[tuple[bool, bool, bool, int]]] = field(default_factory=list)
    submitted: list[float] = field(default_factory=list)  # loop time of each admission


# Told at once when an admission woke its deployment: (deployment, queue depth, seconds since
# the request was queued). The wake goes out before the waking request's handler runs again,
# which in a burst waits behind every other arrival.
OnWake = Callable[[str, int, float], None]


async def listen_forever(
    store: Store,
    channel: str,
    on_message: Callable[[str], None],
    what: str,
    listening: asyncio.Event | None = None,
) -> None:
    """Hear a Redis pub/sub channel for good, each message's data to `on_message`: a lost
    subscription is made again (`listening` is set while it holds)."""
    while True:
        pubsub = store.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            if listening is not None:
                listening.set()
            async for message in pubsub.listen():
                on_message(str(message["data"]))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s channel lost (%s); resubscribing", what, exc)
            await asyncio.sleep(0.5)
        finally:
            if listening is not None:
                listening.clear()
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]


class Dispatcher:
    def __init__(
        self,
        store: Store,
        lease_ms: int,
        on_wake: OnWake | None = None,
        release_linger_s: float = RELEASE_LINGER_S,
    ) -> None:
        self.store = store
        self.lease_ms = lease_ms
        self.on_wake = on_wake
        self.release_linger_s = release_linger_s
        self.gateway_id = uuid.uuid4().hex[:12]
        self._ids = itertools.count()
        self._waiting: dict[str, dict[str, Ticket]] = defaultdict(dict)
        self._running: dict[str, set[str]] = defaultdict(set)  # deployment -> "rid|req"
        # Slots handed over since the last tick, whose `assigned` entries the tick clears in
        # one call (they matter only until the gateway has the assignment).
        self._unacked: dict[str, set[str]] = defaultdict(set)
        self._dirty: set[str] = set()
        self._dispatching: set[str] = set()
        self._records: dict[str, ReplicaRecord] = {}
        # Each deployment's routing mode, from the spec its last request came with: the queue
        # scripts take it as an argument (a deployment not seen yet has it read once).
        self._routing: dict[str, str] = {}
        # Releases and admissions wait here for their deployment's exchange call: one call in
        # flight per deployment, and what arrives meanwhile goes in the next (group commit).
        self._turns: dict[str, _Turn] = {}
        self._exchanging: dict[str, asyncio.Task[None]] = {}
        # Turns of releases alone, waiting a moment for an admission to go with (their calls
        # are due then).
        self._lingering: dict[str, asyncio.TimerHandle] = {}
        self._cleanups: set[asyncio.Task[None]] = set()
        self.listening = asyncio.Event()

    # --- the request's view -----------------------------------------------------------------

    async def enqueue(
        self,
        deployment: str,
        priority: int = 0,
        max_queue: int = 2**31,
        adapter: str | None = None,
        prefix: Sequence[str] = (),
        routing: str | None = None,
    ) -> Ticket:
        """Queue a request. `routing` is the deployment's routing mode (store.routing_of of
        its spec), remembered for the deployment's dispatches."""
        if routing is not None:
            self._routing[deployment] = routing
        # Unique without a system call per request: this gateway's random id and a count.
        request_id = f"{self.gateway_id}{next(self._ids):x}"
        loop = asyncio.get_running_loop()
        ticket = Ticket(deployment, request_id, loop.create_future())
        self._waiting[deployment][request_id] = ticket
        turn = self._turn(deployment)
        admitted: asyncio.Future[tuple[bool, bool, bool, int]] = loop.create_future()
        turn.admissions.append(Admission(request_id, priority, max_queue, adapter, prefix))
        turn.admitted.append(admitted)
        turn.submitted.append(loop.time())
        try:
            added, woke, cold, depth = await asyncio.shield(admitted)
        except asyncio.CancelledError:
            self._waiting[deployment].pop(request_id, None)
            # It may be queued, or even hold a slot, once the exchange returns: take it out.
            admitted.add_done_callback(lambda _: self._abandon(deployment, request_id))
            raise
        except BaseException:
            self._waiting[deployment].pop(request_id, None)
            raise
        if not added:
            self._waiting[deployment].pop(request_id, None)
            raise QueueFull(depth)
        ticket.woke, ticket.cold, ticket.queued_depth = woke, cold, depth
        return ticket

    async def wait(self, ticket: Ticket) -> str:
        """Wait for a replica slot; cancellation (timeout, disconnect) is the caller's job."""
        return await asyncio.shield(ticket.assigned)

    async def requeue(self, ticket: Ticket, suspect_ms: int) -> None:
        """Give the slot back and queue the request again, at the front, away from the
        replica that failed it before sending anything (so the retry goes elsewhere)."""
        assert ticket.replica_id is not None
        failed = ticket.replica_id
        await self.store.suspect(ticket.deployment, failed, suspect_ms)
        self._running[ticket.deployment].discard(f"{failed}|{ticket.request_id}")
        # The retry's own assignment must keep its entry until it is handed over.
        self._unacked[ticket.deployment].discard(ticket.request_id)
        ticket.replica_id, ticket.replica = None, None
        await self._release(ticket.deployment, failed, ticket.request_id)
        ticket.assigned = asyncio.get_running_loop().create_future()
        self._waiting[ticket.deployment][ticket.request_id] = ticket
        admitted = await self.store.admit(
            ticket.deployment,
            ticket.request_id,
            self.gateway_id,
            MAX_PRIORITY,
            self.lease_ms,
            routing=await self._routing_of(ticket.deployment),
        )
        self._deliver_all(ticket.deployment, admitted.assignments)

    async def finish(self, ticket: Ticket) -> None:
        """Leave the queue or give the slot back, whichever applies. Safe to call twice."""
        replica_id = self._let_go(ticket)
        if replica_id is not None:
            await self._release(ticket.deployment, replica_id, ticket.request_id)
        else:
            outcome = await self.store.cancel(ticket.deployment, ticket.request_id)
            if outcome == "assigned" and ticket.assigned.done() is False:
                ticket.assigned.cancel()
            if outcome == "assigned":
                await self.assign_free_slots(ticket.deployment)  # a slot came free

    def finish_soon(self, ticket: Ticket) -> None:
        """`finish` without waiting for it: what the request path calls, so that a response
        never waits for Redis to take its slot back. The slot goes back in the deployment's
        next exchange call (with that turn's admissions: at low concurrency the next request
        shares the call); a queue entry is taken out in a task of its own. Should the call
        fail, the slot is no longer renewed and its lease frees it."""
        replica_id = self._let_go(ticket)
        if replica_id is not None:
            # At once when a request of ours waits for a slot (this one may be its).
            linger = not self._waiting.get(ticket.deployment)
            turn = self._turn(ticket.deployment, linger)
            turn.releases.append((replica_id, ticket.request_id))
            return
        task = asyncio.get_running_loop().create_task(self.finish(ticket))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    def _let_go(self, ticket: Ticket) -> str | None:
        """Stop waiting for and renewing the ticket here; the slot it held (its replica id),
        now the caller's to give back, or None when it held none."""
        self._waiting[ticket.deployment].pop(ticket.request_id, None)
        if ticket.replica_id is None:
            return None
        self._running[ticket.deployment].discard(f"{ticket.replica_id}|{ticket.request_id}")
        replica_id, ticket.replica_id = ticket.replica_id, None
        return replica_id

    async def _release(self, deployment: str, replica_id: str, request_id: str) -> None:
        """Give a slot back; the same call hands it (and any other free one) on."""
        released: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        turn = self._turn(deployment)
        turn.releases.append((replica_id, request_id))
        turn.released.append(released)
        await asyncio.shield(released)

    # --- one Redis call per deployment and turn of the loop ----------------------------------

    def _turn(self, deployment: str, linger: bool = False) -> _Turn:
        """The deployment's next exchange, started unless one is in flight (its end starts
        the next): requests of one turn of the event loop, and those that arrive while a
        call is out, share one call. With `linger` (a release alone) a new turn's call waits
        `release_linger_s`, and anything else added to it starts the call at once."""
        turn = self._turns.get(deployment)
        if turn is None:
            turn = self._turns[deployment] = _Turn()
            if deployment not in self._exchanging and deployment not in self._lingering:
                if linger and self.release_linger_s > 0:
                    loop = asyncio.get_running_loop()
                    self._lingering[deployment] = loop.call_later(
                        self.release_linger_s, self._start_exchange, deployment
                    )
                else:
                    self._start_exchange(deployment)
        elif not linger and deployment in self._lingering:
            self._lingering.pop(deployment).cancel()
            self._start_exchange(deployment)
        return turn

    def _start_exchange(self, deployment: str) -> None:
        self._lingering.pop(deployment, None)
        task = asyncio.get_running_loop().create_task(self._exchange(deployment))
        self._exchanging[deployment] = task

    async def _routing_of(self, deployment: str) -> str:
        routing = self._routing.get(deployment)
        if routing is None:
            routing = self._routing[deployment] = await self.store.routing(deployment)
        return routing

    async def _exchange(self, deployment: str) -> None:
        try:
            while (turn := self._turns.pop(deployment, None)) is not None:
                try:
                    done = await self.store.exchange(
                        deployment,
                        turn.releases,
                        turn.admissions,
                        self.lease_ms,
                        self.gateway_id,
                        await self._routing_of(deployment),
                    )
                except BaseException as exc:
                    if len(turn.releases) > len(turn.released):
                        log.warning("giving back %d slots of %s failed (%s); their leases free "
                                    "them", len(turn.releases), deployment, exc)  # fmt: skip
                    failure = exc if isinstance(exc, Exception) else ConnectionError(str(exc))
                    waiters: list[asyncio.Future[Any]] = [*turn.released, *turn.admitted]
                    for fut in waiters:
                        if not fut.done():
                            fut.set_exception(failure)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                self._settle(deployment, turn, done)
        finally:
            self._exchanging.pop(deployment, None)
            if deployment in self._turns:  # arrived while the last call was being torn down
                self._start_exchange(deployment)

    def _settle(self, deployment: str, turn: _Turn, done: Exchanged) -> None:
        # Assignments first: a request that got its slot in this call finds it on return.
        self._deliver_all(deployment, done.assignments)
        for released in turn.released:
            if not released.done():
                released.set_result(None)
        if self.on_wake is not None:
            now = asyncio.get_running_loop().time()
            for (_, woke, _), at in zip(done.admitted, turn.submitted, strict=True):
                if woke:
                    self.on_wake(deployment, done.depth, now - at)
        for admitted, (added, woke, cold) in zip(turn.admitted, done.admitted, strict=True):
            if not admitted.done():
                admitted.set_result((added, woke, cold, done.depth))

    def _abandon(self, deployment: str, request_id: str) -> None:
        """A request whose client left while its admission was out: out of the queue, or its
        slot given back (and handed on)."""

        async def cancel() -> None:
            try:
                if await self.store.cancel(deployment, request_id) == "assigned":
                    await self.assign_free_slots(deployment)
            except Exception as exc:  # its lease expires in time
                log.warning("could not take abandoned %s out of %s: %s", request_id,
                            deployment, exc)  # fmt: skip

        task = asyncio.get_running_loop().create_task(cancel())
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    def waiting_count(self, deployment: str) -> int:
        return len(self._waiting.get(deployment, ()))

    def running_count(self, deployment: str) -> int:
        return len(self._running.get(deployment, ()))

    # --- matching queue heads to slots ------------------------------------------------------

    async def assign_free_slots(self, deployment: str) -> None:
        """Run dispatch for a deployment now: hand its free replica slots to the heads of its
        queue. Calls made while one runs coalesce into one more run."""
        if deployment in self._dispatching:
            self._dirty.add(deployment)
            return
        self._dispatching.add(deployment)
        try:
            while True:
                self._dirty.discard(deployment)
                assignments = await self.store.dispatch_for(
                    deployment,
                    self.lease_ms,
                    self.gateway_id,
                    routing=await self._routing_of(deployment),
                )
                self._deliver_all(deployment, assignments)
                if deployment not in self._dirty:
                    break
        except Exception as exc:
            log.warning("dispatch for %s failed: %s", deployment, exc)
        finally:
            self._dispatching.discard(deployment)

    def _deliver_all(self, deployment: str, assignments: Sequence[Assignment]) -> None:
        for a in assignments:
            self._deliver(deployment, a.request_id, a.replica_id, a.record)

    def _deliver(self, deployment: str, request_id: str, replica_id: str, record: str = "") -> None:
        ticket = self._waiting.get(deployment, {}).pop(request_id, None)
        if ticket is None or ticket.assigned.done():
            return  # another gateway's request, or this one is gone (cancel frees its slot)
        # From here the slot is this ticket's: finish() gives it back, the tick renews it.
        ticket.replica_id = replica_id
        ticket.replica = self._record(record) if record else None
        self._running[deployment].add(f"{replica_id}|{request_id}")
        self._unacked[deployment].add(request_id)
        ticket.assigned.set_result(replica_id)

    def _record(self, raw: str) -> ReplicaRecord:
        rec = self._records.get(raw)
        if rec is None:
            if len(self._records) >= RECORDS_KEPT:
                self._records.clear()
            rec = self._records[raw] = ReplicaRecord.from_json(raw)
        return rec

    async def listen(self) -> None:
        """Hear assignments of this gateway's requests made by any gateway (fast path)."""
        channel = gateway_channel(self.gateway_id)
        await listen_forever(self.store, channel, self._heard, "assignment", self.listening)

    def _heard(self, data: str) -> None:
        deployment, request_id, replica_id = data.split(" ")
        if request_id in self._waiting.get(deployment, {}):
            self._deliver(deployment, request_id, replica_id)

    async def tick_forever(self) -> None:
        """Level-triggered path: re-dispatch, pick up missed assignments, renew leases."""
        renew_every = max(1, int(self.lease_ms / 3000 / TICK_S))
        n = 0
        while True:
            await asyncio.sleep(TICK_S)
            n += 1
            try:
                for deployment in [d for d, w in self._waiting.items() if w]:
                    await self.assign_free_slots(deployment)
                    waiting = list(self._waiting.get(deployment, {}))
                    found = await self.store.take_assignments(deployment, waiting)
                    for request_id, replica_id in found.items():
                        self._deliver(deployment, request_id, replica_id)
                unacked, self._unacked = self._unacked, defaultdict(set)
                await self.store.ack_assignments({d: list(ids) for d, ids in unacked.items()})
                if n % renew_every == 0:
                    await self.store.renew_leases(
                        {d: list(w) for d, w in self._waiting.items() if w},
                        {d: list(r) for d, r in self._running.items() if r},
                        self.lease_ms,
                    )
                for d in [d for d, w in self._waiting.items() if not w and not self._running[d]]:
                    self._waiting.pop(d, None)
                    self._running.pop(d, None)
                    self._routing.pop(d, None)
            except Exception as exc:
                log.warning("dispatch tick failed: %s", exc)
