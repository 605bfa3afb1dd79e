"""Who gets the next GPU when the pool is short: a pure function, like the policies.

The policies say how many replicas each deployment wants; the allocator says how many of
the wanted starts the pool can give now, which idle replicas to reclaim for whom, and why a
deployment waits. No I/O, no clock: the control loop passes in what the backend reports free
and what every active deployment holds and needs.

The rule of the `fair` mode (README "Sharing a finite pool"), per SKU:

1. Reserved capacity first: `usesGuaranteedCapacity` deployments get the replicas they need
   within their tenant's grant (`guaranteedGpusPerTenant`, an operator's; none by default),
   and the replicas they run within it are never taken (by any rule below). Beyond the grant
   a guaranteed deployment is an ordinary one.
2. Then deployments with queued requests and no replica (cold): one replica each, the tenant
   holding the least of the SKU (per weight) first. Queued work at zero is the most urgent
   demand: those requests wait for a whole start-up already.
3. Then the rest by weighted max-min fairness (progressive filling): one replica at a time to
   the tenant holding the least of the SKU per weight, within it to the deployment holding
   the fewest replicas.
4. Reclaim: a deployment the pool left short takes idle replicas (their deployment has had
   no request for a grace time; above its `min_replicas`; not reserved capacity:
   scaler/plan.py `reclaimable`) of the SKU, from the tenant holding the most first:
   reserved capacity for every replica the grant covers, a cold one for its first, and one
   with requests queued for the rest of its need, but only from its own tenant or a tenant
   holding more than its own (never from a poorer one). Replicas already draining count as
   room on the way, so nothing is reclaimed twice for one need.
5. Fair share by cancelling or draining: a cold deployment of a tenant below its fair share
   of the SKU that free units and idle replicas cannot serve takes a replica from a tenant
   that stays at or above its own fair share without it. A *starting* replica goes first,
   the newest first: it is cancelled (stopped before it serves), so nothing runs on it,
   only its load time is lost and its units free with no request to wait for. Only then
   is a *serving* one drained (new requests go to its deployment's other replicas, those
   in flight finish, and its units free only when they have). Last, a replica that only
   its deployment's `min_replicas` keeps, beyond its tenant's grant (what guaranteed
   deployments leave of the grant keeps `min_replicas` floors): a floor holds while its
   tenant is within its fair share, so `minReplicas` cannot pin a shared pool. Never
   reserved capacity; a starting replica is never its deployment's only one while that
   deployment has requests queued, a serving one never the last of a deployment with
   load. Without this, one tenant's load (sustained, or a start-up in lock-step with the
   others) would hold the pool for as long as it lasts. Nothing is ever preempted: no
   request in flight is cut.

Operator limits apply in every mode: a tenant's GPU quota (cpu replicas count no GPU), its
replica quota (cpu replicas count) and a per-deployment cap in replicas (the `static`
mode's share of the pool). `fcfs` grants in the order the deployments began to wait, with
no priority and no reclaim (a baseline).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["fair", "fcfs", "static"]
MODES: tuple[Mode, ...] = ("fair", "fcfs", "static")
UNLIMITED = -1  # a backend's free count for a SKU it does not limit (cpu on some backends)
CPU = "cpu"


@dataclass(frozen=True)
class Demand:
    """One deployment as the allocator sees it."""

    key: str  # "tenant/name"
    tenant: str
    sku: str
    units: int  # pool units one replica takes (GPUs of the SKU; cpu: one slot)
    holding: int  # replicas holding pool units now: starting, ready and draining
    need: int = 0  # more replicas it wants started now
    cold: bool = False  # requests queued and no replica starting or ready
    queued: int = 0  # requests waiting
    draining: int = 0  # of `holding`, replicas on their way out (their units free soon)
    guaranteed: bool = False  # it asks for reserved capacity (honoured within its grant)
    # Idle replicas that may be drained for others, the first to go first.
    reclaimable: tuple[str, ...] = ()
    # Starting (not yet ready) replicas beyond its min_replicas, and beyond its only one while
    # requests are queued, newest first: cancelled (nothing runs on them yet) for a cold
    # deployment of a tenant below its fair share when this tenant stays at or above its
    # own, before any serving replica is drained.
    cancellable: tuple[str, ...] = ()
    # Serving replicas beyond its first and its min_replicas, fewest requests in flight
    # first: drained (gracefully) only for a cold deployment of a tenant below its fair share
    # when this tenant is above its own.
    drainable: tuple[str, ...] = ()
    # Replicas only its min_replicas keeps from the lists above (idle, starting, then
    # serving): within its tenant's grant they stay; beyond it they go, last, to a cold
    # deployment of a tenant below its fair share when this tenant stays at or above its own.
    floor: tuple[str, ...] = ()
    since: float = 0.0  # when it began to want `need` more (first come, first served)
    weight: float = 1.0  # its tenant's share weight

    @property
    def gpus_per_replica(self) -> int:
        return 0 if self.sku == CPU else self.units


@dataclass(frozen=True)
class Allocation:
    starts: Mapping[str, int] = field(default_factory=dict)  # key -> replicas to start now
    reclaims: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # victim -> replicas
    # key -> why it gets fewer replicas than it needs
    waiting: Mapping[str, str] = field(default_factory=dict)


def static_caps(total: Mapping[str, int], demands: Sequence[Demand]) -> dict[str, int]:
    """Each deployment's equal share of its SKU, in replicas (the `static` mode): the SKU's
    units split evenly over the deployments on it, the remainder to the first by name."""
    by_sku: dict[str, list[Demand]] = {}
    for d in sorted(demands, key=lambda d: d.key):
        by_sku.setdefault(d.sku, []).append(d)
    caps: dict[str, int] = {}
    for sku, group in by_sku.items():
        units = total.get(sku, 0)
        if units == UNLIMITED:
            continue
        share, extra = divmod(units, len(group))
        for i, d in enumerate(group):
            caps[d.key] = (share + (1 if i < extra else 0)) // d.units
    return caps


def allocate(
    free: Mapping[str, int],
    demands: Sequence[Demand],
    *,
    mode: Mode = "fair",
    gpu_quota: Mapping[str, int | None] | None = None,
    caps: Mapping[str, int] | None = None,
    replica_quota: Mapping[str, int | None] | None = None,
    grants: Mapping[str, int | None] | None = None,
) -> Allocation:
    """Starts, reclaims and waiting reasons for this pass.

    `free`: units the backend can still start per SKU (UNLIMITED: no limit; absent: none),
    net of starts already under way. `gpu_quota`: GPUs each tenant may hold (None or absent:
    unlimited). `caps`: the most replicas a deployment may hold (absent: no cap).
    `replica_quota`: replicas each tenant may hold, CPU ones included (None or absent:
    unlimited). `grants`: GPUs of reserved capacity each tenant was granted (absent: none;
    None: every GPU it holds), what `guaranteed` deployments get (fair mode only).
    """
    return _Pass(free, demands, gpu_quota or {}, caps or {}, replica_quota or {}, grants or {}).run(
        mode
    )


class _Pass:
    def __init__(
        self,
        free: Mapping[str, int],
        demands: Sequence[Demand],
        gpu_quota: Mapping[str, int | None],
        caps: Mapping[str, int],
        replica_quota: Mapping[str, int | None],
        grants: Mapping[str, int | None],
    ) -> None:
        self.room = dict(free)
        self.demands = sorted(demands, key=lambda d: d.key)
        self.gpu_quota = gpu_quota
        self.caps = caps
        self.replica_quota = replica_quota
        self.starts: Counter[str] = Counter()
        self.held = {d.key: d.holding for d in self.demands}
        self.usage: Counter[tuple[str, str]] = Counter()  # (sku, tenant) -> units held
        self.tenant_gpus: Counter[str] = Counter()
        self.tenant_replicas: Counter[str] = Counter()
        for d in self.demands:
            self.usage[(d.sku, d.tenant)] += d.holding * d.units
            self.tenant_gpus[d.tenant] += d.holding * d.gpus_per_replica
            self.tenant_replicas[d.tenant] += d.holding
        # Reserved capacity within each tenant's grant: replicas held that no rule takes
        # (`pinned`), and of each deployment's need, replicas served first (`covered`).
        self.pinned: Counter[str] = Counter()
        self.covered: Counter[str] = Counter()
        self.taken: Counter[str] = Counter()  # replicas this pass takes from each deployment
        self._reserve(grants)

    def _reserve(self, grants: Mapping[str, int | None]) -> None:
        """Spread each tenant's grant over its guaranteed deployments on GPUs, one replica at
        a time in turn: first over the replicas they run (kept), then over what they need
        (served first, the most urgent first). Beyond the grant (never granted, or lowered
        since) a guaranteed deployment is an ordinary one: its further replicas take their
        fair share, and those it runs beyond the grant may be reclaimed like any other."""
        by_tenant: dict[str, list[Demand]] = {}
        for d in self.demands:
            if d.guaranteed and d.gpus_per_replica > 0:
                by_tenant.setdefault(d.tenant, []).append(d)
        floors: dict[str, list[Demand]] = {}
        for d in self.demands:
            if d.floor and not d.guaranteed and d.gpus_per_replica > 0:
                floors.setdefault(d.tenant, []).append(d)
        for tenant in {*by_tenant, *floors}:
            grant = grants.get(tenant, 0)
            budget = float("inf") if grant is None else float(grant)
            group = by_tenant.get(tenant, [])
            budget = _spread(group, lambda d: d.holding - d.draining, budget, self.pinned)
            urgent = sorted(group, key=self._urgency)
            budget = _spread(urgent, lambda d: d.need, budget, self.covered)
            # What is left of the grant keeps the tenant's minReplicas floors.
            _spread(floors.get(tenant, []), lambda d: len(d.floor), budget, self.pinned)

    # --- the modes --------------------------------------------------------------------------

    def run(self, mode: Mode) -> Allocation:
        wanting = [d for d in self.demands if d.need > 0]
        reclaims: dict[str, tuple[str, ...]] = {}
        reclaiming: set[str] = set()
        if mode == "fair":
            for d in sorted((d for d in wanting if self.covered[d.key]), key=self._urgency):
                self._grant(d, self.covered[d.key])
            self._cold_first([d for d in wanting if d.cold and self.starts[d.key] == 0])
            self._fill(wanting)
            reclaims, reclaiming = self._reclaim(wanting)
        else:
            for d in sorted(wanting, key=lambda d: (d.since, d.key)):
                self._grant(d, d.need)
        waiting = {
            d.key: self._why_waiting(d, d.key in reclaiming)
            for d in wanting
            if self.starts[d.key] < d.need
        }
        return Allocation(dict(+self.starts), reclaims, waiting)

    def _cold_first(self, cold: list[Demand]) -> None:
        """One replica to each cold deployment, the least served tenant first."""
        pending = list(cold)
        while pending:
            d = min(pending, key=lambda d: (self._share(d), d.since, d.key))
            pending.remove(d)
            self._grant(d, 1)

    def _fill(self, candidates: list[Demand]) -> None:
        """Weighted max-min fairness by progressive filling, one replica at a time."""
        open_ = [d for d in candidates if self._remaining(d) > 0]
        while open_:
            d = min(open_, key=lambda d: (self._share(d), self.held[d.key], d.since, d.key))
            if not self._grant(d, 1):
                open_.remove(d)
                continue
            if self._remaining(d) <= 0:
                open_.remove(d)

    def _reclaim(self, wanting: list[Demand]) -> tuple[dict[str, tuple[str, ...]], set[str]]:
        """Idle replicas to drain for cold and guaranteed deployments the pool left out."""
        # Units that replicas already draining will give back, per SKU.
        on_the_way: Counter[str] = Counter()
        for d in self.demands:
            on_the_way[d.sku] += d.draining * d.units
        victims: dict[str, list[str]] = {}
        taken: set[str] = set()
        reclaiming: set[str] = set()
        beneficiaries = sorted(
            (
                d
                for d in wanting
                if (self._reserved_left(d) or d.cold or d.queued > 0)
                and self.starts[d.key] < d.need
            ),
            key=lambda d: (self._reserved_left(d) <= 0, not d.cold, self._share(d), d.since, d.key),
        )
        for d in beneficiaries:
            if self._limit(d) is not None:
                continue  # a quota or cap holds it back, not the pool
            reserved = self._reserved_left(d)
            # A cold deployment's first replica is what its queue waits for; the rest of its
            # need, like a warm one's, only shortens a queue that moves. Reserved capacity
            # reclaims for every replica its grant covers.
            first_only = d.cold and not reserved and self.starts[d.key] == 0
            if reserved:
                replicas = reserved
            elif first_only:
                replicas = 1 - self.starts[d.key]
            else:
                replicas = d.need - self.starts[d.key]
            if replicas <= 0:
                continue
            short = replicas * d.units - max(self.room.get(d.sku, 0), 0)
            covered = min(short, on_the_way[d.sku])
            on_the_way[d.sku] -= covered
            short -= covered
            freed = 0
            for victim in self._victims(d, urgent=bool(reserved) or d.cold):
                if freed >= short:
                    break
                for rid in victim.reclaimable:
                    if freed >= short or self._takeable(victim) <= 0:
                        break
                    if rid in taken:
                        continue
                    taken.add(rid)
                    self.taken[victim.key] += 1
                    victims.setdefault(victim.key, []).append(rid)
                    freed += victim.units
            if freed < short and d.cold and not reserved:
                for victim, rid in self._over_share(d, taken):
                    if freed >= short:
                        break
                    taken.add(rid)
                    self.taken[victim.key] += 1
                    victims.setdefault(victim.key, []).append(rid)
                    freed += victim.units
                    self.usage[(victim.sku, victim.tenant)] -= victim.units
            if freed > 0 or covered > 0:
                reclaiming.add(d.key)
            # What is freed beyond this need is room on the way for the next one.
            on_the_way[d.sku] += max(0, freed - short)
        return {k: tuple(v) for k, v in victims.items()}, reclaiming

    def _victims(self, beneficiary: Demand, *, urgent: bool) -> list[Demand]:
        """Deployments whose idle replicas may go, the tenant holding the most first. For a
        deployment that already serves (and is not reclaiming for reserved capacity), only
        its own tenant's or a richer tenant's."""
        pool = [
            v
            for v in self.demands
            if v.sku == beneficiary.sku
            and v.key != beneficiary.key
            and v.reclaimable
            and self._takeable(v) > 0
            and self.starts[v.key] == 0
            and (
                urgent
                or v.tenant == beneficiary.tenant
                or self._share(v) > self._share(beneficiary)
            )
        ]
        return sorted(pool, key=lambda v: (-self._share(v), -self.held[v.key], v.key))

    def _over_share(self, cold: Demand, taken: set[str]) -> list[tuple[Demand, str]]:
        """Starting replicas a cold deployment may have cancelled, then serving ones it may
        have drained: of tenants that stay at or above their fair share of the SKU without
        them, while the cold one's tenant is below its own. Every such starting replica
        comes before any serving one (a cancel loses only load time, cuts nothing and frees
        its units without waiting for requests), and those before any replica that only its
        deployment's min_replicas keeps (beyond its tenant's grant: the owner's floor goes
        last); within each, the tenant furthest above first, then the deployment's own order
        (newest start, least busy)."""
        fair = self._fair_shares(cold.sku)
        if self.usage[(cold.sku, cold.tenant)] + cold.units > fair.get(cold.tenant, 0.0):
            return []
        out: list[tuple[Demand, str]] = []
        givers = sorted(
            (
                v
                for v in self.demands
                if v.sku == cold.sku and v.tenant != cold.tenant
                and (v.cancellable or v.drainable or v.floor)
                and self._takeable(v) > 0 and self.starts[v.key] == 0
            ),
            key=lambda v: (-(self.usage[(v.sku, v.tenant)] - fair.get(v.tenant, 0.0)), v.key),
        )  # fmt: skip
        spare: Counter[str] = Counter()
        given: Counter[str] = Counter()  # replicas of each giver listed here
        for phase in range(3):
            for v in givers:
                for rid in (v.cancellable, v.drainable, v.floor)[phase]:
                    above = self.usage[(v.sku, v.tenant)] - spare[v.tenant] - v.units
                    if rid in taken or above < fair.get(v.tenant, 0.0):
                        continue
                    if self._takeable(v) - given[v.key] <= 0:
                        break  # the rest of it is reserved capacity
                    spare[v.tenant] += v.units
                    given[v.key] += 1
                    out.append((v, rid))
        return out

    def _fair_shares(self, sku: str) -> dict[str, float]:
        """Each tenant's weighted share of the SKU's units, among tenants that hold or want
        some."""
        room = self.room.get(sku, 0)
        if room == UNLIMITED:
            return {}
        members = [d for d in self.demands if d.sku == sku and (d.holding or d.need)]
        weights = {d.tenant: d.weight for d in members}
        total = max(room, 0) + sum(self.usage[(sku, t)] for t in weights)
        scale = total / sum(weights.values()) if weights else 0.0
        return {t: w * scale for t, w in weights.items()}

    # --- one grant --------------------------------------------------------------------------

    def _grant(self, d: Demand, count: int) -> bool:
        """Start up to `count` more replicas of `d` where pool, quota and cap allow; whether
        at least one was granted."""
        granted = 0
        while granted < count and self._remaining(d) > 0 and self._fits(d):
            if self._limit(d) is not None:
                break
            room = self.room.get(d.sku, 0)
            if room != UNLIMITED:
                self.room[d.sku] = room - d.units
            self.starts[d.key] += 1
            self.held[d.key] += 1
            self.usage[(d.sku, d.tenant)] += d.units
            self.tenant_gpus[d.tenant] += d.gpus_per_replica
            self.tenant_replicas[d.tenant] += 1
            granted += 1
        return granted > 0

    def _remaining(self, d: Demand) -> int:
        return d.need - self.starts[d.key]

    def _reserved_left(self, d: Demand) -> int:
        """Replicas of its need that its tenant's grant covers and it has not got yet."""
        return max(0, self.covered[d.key] - self.starts[d.key])

    def _takeable(self, v: Demand) -> int:
        """How many more of its replicas any rule may take: those beyond its reserved ones."""
        return v.holding - v.draining - self.pinned[v.key] - self.taken[v.key]

    def _fits(self, d: Demand) -> bool:
        room = self.room.get(d.sku, 0)
        return room == UNLIMITED or room >= d.units

    def _limit(self, d: Demand) -> str | None:
        """The operator limit that stops `d` from taking one more replica, if any."""
        cap = self.caps.get(d.key)
        if cap is not None and self.held[d.key] + 1 > cap:
            return f"at its share of the pool ({cap} replica(s))"
        replicas = self.replica_quota.get(d.tenant)
        if replicas is not None and self.tenant_replicas[d.tenant] + 1 > replicas:
            return f"tenant replica quota reached (maxReplicasPerTenant={replicas})"
        quota = self.gpu_quota.get(d.tenant)
        if quota is not None and d.gpus_per_replica:
            if self.tenant_gpus[d.tenant] + d.gpus_per_replica > quota:
                return f"tenant GPU quota reached (maxGpusPerTenant={quota})"
        return None

    def _share(self, d: Demand) -> float:
        return self.usage[(d.sku, d.tenant)] / max(d.weight, 1e-9)

    def _urgency(self, d: Demand) -> tuple[bool, float, str]:
        return (not d.cold, d.since, d.key)

    def _why_waiting(self, d: Demand, reclaiming: bool) -> str:
        limit = self._limit(d)
        if limit is not None:
            return limit
        if reclaiming:
            return f"waiting for a reclaimed {_unit(d.sku)}"
        return f"waiting for a free {_unit(d.sku)}"


def _spread(
    group: Sequence[Demand], limit: Callable[[Demand], int], budget: float, out: Counter[str]
) -> float:
    """Deal `budget` GPUs to the deployments of `group`, one replica each in turn, up to
    `limit` replicas each; counts go to `out`. Returns what is left of the budget."""
    progress = True
    while progress:
        progress = False
        for d in group:
            if out[d.key] < limit(d) and d.gpus_per_replica <= budget:
                out[d.key] += 1
                budget -= d.gpus_per_replica
                progress = True
    return budget


def _unit(sku: str) -> str:
    return "CPU replica slot" if sku == CPU else f"{sku} GPU"
