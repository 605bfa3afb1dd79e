"""Every Redis key and Lua script wakegate uses, and typed accessors over them.

Nothing else spells a key. Keys of one deployment share the hash tag `{tenant/name}` so that
each script touches one slot and runs unchanged on Redis Cluster. Time is passed into the
scripts by the caller (milliseconds), which keeps them deterministic and replicable.

Per-deployment keys (`wg:{t/n}:<part>`; `keys_of(deployment)` names each of them once, and
every operation, the purge included, takes its keys from there):
  spec       STRING  JSON DeploymentSpec record
  events     LIST    JSON events (eventType, timestamp, revision, message), oldest first
  queue      ZSET    request id -> order score (priority first, then arrival)
  qmeta      HASH    request id -> JSON (owning gateway id, enqueue time)
  qlease     ZSET    request id -> lease expiry ms; renewed by the owning gateway
  replicas   HASH    replica id -> JSON replica record (all states)
  routable   HASH    replica id -> concurrency limit (ready and not draining only)
  inflight   ZSET    "replica id|request id" -> slot lease expiry ms
  assigned   HASH    request id -> replica id, until the owning gateway picks it up
  wake       STRING  present while a wake-up was published recently (dedup window)
  activity   STRING  ms of the last enqueue or completion (scale-to-zero idleness)
  counters   HASH    arrivals / completions: monotonic request counts (rates for the scaler)
  suspects   HASH    replica id -> ms until which dispatch skips it (a gateway saw it fail)
  adapters   HASH    replica id -> " a b c " adapters loaded there (adapter affinity)
  prefixes   HASH    prompt-prefix key -> replica id that last served a prompt with it
  prefixage  ZSET    prompt-prefix key -> ms it was last routed (trims prefixes)
  reqlog     STREAM  request log entries (only with request_logging_enabled), capped in
                     entries and in bytes (LOG_REQUEST)
  logbytes   STRING  bytes of the entries `reqlog` holds (LOG_REQUEST keeps it)
  job:<id>   HASH    an async request: request, status, attempts, result, error; expires
                     (TTL from creation: router/jobs.py `job_ttl_s`, then result TTL once done)
  claim:<id> STRING  gateway running that async request; a lease it renews
  running    ZSET    async request id -> claim expiry ms (the sweep re-queues expired ones)
  capacity   STRING  JSON: why the deployment waits for capacity (present only while it does)
  decisions  LIST    JSON scaling decisions the scaler made (at, current, desired, reason),
                     oldest first, the last DECISIONS_MAX (the status overview)
  history    LIST    JSON samples [at s, queued, in flight, starting, ready, draining] the
                     scaler took while it watched the deployment, oldest first, the last
                     HISTORY_MAX (the status overview's last hour)
  health     HASH    bucket start (s) -> JSON {"index": count} of the counts its gateways
                     added for the requests that ended in that bucket, zeros left out
                     (wakegate/health.py lays the row out),
                     the last `RETENTION_S`; expires as a whole when no gateway writes
Global keys:
  wg:deployments        SET   "tenant/name" of every deployment (the scaler's reconcile index)
  wg:tenant:<code>      STRING JSON tenant record
  wg:token:<sha256>     STRING JSON TokenRecord of an API token (only the digest is stored;
                        signed with the secret key where there is one; expires with the token)
  wg:token-index        HASH  token id -> "tenant:<sha256>" or "admin:<sha256>" (list, revoke)
  wg:authfail:<addr>    STRING failed authentications from a client address in the current
                        window (expires with the window)
  wg:tenant-deployments:<code>  SET  names of the tenant's deployments, deleting ones
                        included until purged (the deployments-per-tenant quota counts them)
  wg:quotas             HASH  tenant code -> JSON quota override (wakegate/quotas.py)
  wg:admin-token:<sha256>  STRING  JSON TokenRecord of an operator token for /admin/v1
                        (digest only; never a tenant token)
  wg:scaler:leader      STRING id of the scaler instance holding the lease
  wg:jobs               SET   deployments that have async requests (what gateways sweep)
  wg:{jobs:<code>}:expiry ZSET "name/job id" of each async request the tenant has stored ->
                        ms it expires (the async quotas count these; RESERVE_JOB)
  wg:{jobs:<code>}:bytes  HASH  "name/job id" -> bytes the request takes; `#total`: their sum
  wg:dirty              SET   deployments the scaler should look at now: a cold request came,
                              or the spec changed (the level path behind MQTT's wake/config)
  wg:pool               STRING JSON PoolReport: the pool's SKUs as the leading scaler last saw
                              them (wakegate/pool.py); expires REPORT_TTL_S after its write
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, cast, overload

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wakegate.pool import REPORT_TTL_S, PoolReport
from wakegate.quotas import QuotaOverride
from wakegate.sealing import SecretBox, seal_secrets
from wakegate.spec import DeploymentConfig, DeploymentSpec

# Tries of a command beyond the first when its connection fails (see Store.from_url).
STORE_RETRIES = 3

DEPLOYMENTS = "wg:deployments"
# Affinity routing never puts more than this factor of the average load, plus a few requests,
# on one replica.
BOUNDED_LOAD_FACTOR = 1.25
BOUNDED_LOAD_SLACK = 2
# Prefix-aware routing remembers where each prompt prefix went (router/pipeline.py makes the
# keys), for at most this many prefixes per deployment, the least recently routed forgotten
# first: far more than the replicas' KV caches hold, so nothing a cache still has is lost.
PREFIX_INDEX_MAX = 65_536
# A replica's remembered prefix is worth routing to when it covers at least this share of the
# prompt (the earlier turns of a conversation); a shorter match (a system prompt every replica
# has) is not, and the request goes to the least-loaded replica.
PREFIX_MIN_SHARE = 0.5
# How dispatch picks a replica where the deployment does not say (wakegate/spec.py `routing`):
# "prefix", "least-loaded" or "random" (see `_DISPATCH_FN`).
DEFAULT_ROUTING = "prefix"


def routing_of(spec: DeploymentSpec | None) -> str:
    """The routing mode the queue script gets for a deployment (the default without a spec)."""
    routing = spec.config.routing if spec is not None else None
    return routing or DEFAULT_ROUTING


JOB_DEPLOYMENTS = "wg:jobs"
DIRTY = "wg:dirty"
# Async requests wait in the same queue as the others, owned by no gateway: their queue
# lease never runs out, and any gateway may run them (see router/jobs.py).
ASYNC_OWNER = "async"
FOREVER_MS = 10**15
SCALER_LEADER = "wg:scaler:leader"
POOL = "wg:pool"
WAKE_DEDUP_MS = 10_000  # one wake event per cold deployment per window, however many requests
EVENTS_MAX = 200  # events kept per deployment
# The status overview (wakegate/status.py): scaling decisions kept per deployment, and load
# samples: the scaler takes one every `HISTORY_SAMPLE_S` (10 s) at most while it watches a
# deployment, and one on each change of its replicas, so this many cover the last hour and
# some, at about 30 bytes each (15 KB per deployment; idle ones take no samples).
DECISIONS_MAX = 50
HISTORY_MAX = 480


def now_ms() -> int:
    return int(time.time() * 1000)


def dep_key(deployment: str, part: str) -> str:
    return f"wg:{{{deployment}}}:{part}"


class _Key:
    """One key of every deployment: `DeploymentKeys(d).<part>` is `wg:{d}:<part>`."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.part = name

    @overload
    def __get__(self, obj: None, owner: type) -> _Key: ...

    @overload
    def __get__(self, obj: DeploymentKeys, owner: type) -> str: ...

    def __get__(self, obj: DeploymentKeys | None, owner: type) -> _Key | str:
        return self if obj is None else obj.prefix + self.part


class DeploymentKeys:
    """Every Redis key of one deployment, each named once (the layout above): what every
    operation on the deployment uses, and what its purge deletes. `keys_of` gives it. A key
    is spelled when it is asked for (a sweep over many deployments reads four of them)."""

    __slots__ = ("_queue_script", "deployment", "prefix")

    spec = _Key()
    events = _Key()
    queue = _Key()
    qmeta = _Key()
    qlease = _Key()
    replicas = _Key()
    routable = _Key()
    inflight = _Key()
    assigned = _Key()
    wake = _Key()
    activity = _Key()
    counters = _Key()
    suspects = _Key()
    adapters = _Key()
    prefixes = _Key()
    prefixage = _Key()
    reqlog = _Key()
    logbytes = _Key()
    running = _Key()
    capacity = _Key()
    decisions = _Key()
    history = _Key()
    health = _Key()

    def __init__(self, deployment: str) -> None:
        self.deployment = deployment
        self.prefix = dep_key(deployment, "")
        self._queue_script: tuple[str, ...] | None = None

    @property
    def queue_script(self) -> tuple[str, ...]:
        """The queue script's KEYS, in the order `_QUEUE_KEYS` reads them (made once)."""
        if self._queue_script is None:
            self._queue_script = tuple(self.prefix + part for part in QUEUE_PARTS)
        return self._queue_script

    def job(self, job_id: str) -> str:
        return self.prefix + f"job:{job_id}"

    def claim(self, job_id: str) -> str:
        return self.prefix + f"claim:{job_id}"

    def all(self) -> tuple[str, ...]:
        """Every key above (not the async requests' `job:*` and `claim:*`), the spec last."""
        return (*(self.prefix + part for part in _PARTS if part != "spec"), self.spec)

    def per_request_patterns(self) -> tuple[str, str]:
        """SCAN patterns of the keys made per async request (`job`, `claim`)."""
        return self.job("*"), self.claim("*")


# The gateway asks for the same few deployments' keys on every request.
keys_of = functools.lru_cache(maxsize=4096)(DeploymentKeys)


def tenant_key(code: str) -> str:
    return f"wg:tenant:{code}"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_key(token: str) -> str:
    return "wg:token:" + token_digest(token)


TOKEN_INDEX = "wg:token-index"
# Ids of revoked tokens: a start-up that finds a token of its state dir here leaves it revoked.
REVOKED_TOKENS = "wg:revoked-tokens"
# One-time data migrations that ran (field: its name, value: when), so none runs twice.
MIGRATIONS = "wg:migrations"
SIGN_TOKENS_MIGRATION = "sign-unsigned-tokens"


def auth_failures_key(address: str) -> str:
    return f"wg:authfail:{address}"


def tenant_deployments_key(code: str) -> str:
    return f"wg:tenant-deployments:{code}"


def admin_token_key(token: str) -> str:
    return "wg:admin-token:" + token_digest(token)


def _token_key_of(kind: str, digest: str) -> str:
    return ("wg:admin-token:" if kind == "admin" else "wg:token:") + digest


QUOTAS = "wg:quotas"


def job_usage_keys(code: str) -> tuple[str, str]:
    """The tenant's async-request ledger: expiry ZSET and bytes HASH (one hash tag)."""
    return f"wg:{{jobs:{code}}}:expiry", f"wg:{{jobs:{code}}}:bytes"


JOB_BYTES_TOTAL = "#total"


def gateway_channel(gateway_id: str) -> str:
    """Redis pub/sub channel on which a gateway hears that its queued requests got a slot."""
    return f"wg:gw:{gateway_id}"


# Queue order: lower score first. Priority dominates; the deployment's arrival counter breaks
# ties, so requests of one priority are served strictly in arrival order (scores stay exact
# doubles for |priority| <= MAX_PRIORITY and 10**12 arrivals).
PRIORITY_WEIGHT = 10**12
MAX_PRIORITY = 1000


# Queueing requests, giving slots back and handing free slots out is one script, EXCHANGE.
# Its parts are the Lua functions below over one key layout (QUEUE_PARTS, in this order);
# `Store.enqueue`, `admit`, `dispatch`, `release` and `exchange` are its cases, so each step
# is written once, and a gateway's turn of requests of one deployment costs one call.
QUEUE_PARTS = (
    "queue", "qmeta", "qlease", "routable", "inflight", "assigned", "suspects", "adapters",
    "prefixes", "prefixage", "wake", "activity", "counters", "replicas",
)  # fmt: skip
# The parts of DeploymentKeys: every key of a deployment but those made per async request.
_PARTS = tuple(name for name, value in vars(DeploymentKeys).items() if isinstance(value, _Key))

_QUEUE_KEYS = """
local queue, qmeta, qlease, routable, inflight, assigned = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local suspects, adapters_key, prefixes, prefixage = KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local wake, activity, counters, replicas = KEYS[11], KEYS[12], KEYS[13], KEYS[14]
"""

# Queue a request (idempotent on its id): {added (1, 0 already queued, -1 full), depth, woke,
# cold}. ARGV from `at`: id, priority, meta, lease expiry, now, wake ttl, weight, max queue.
_ENQUEUE_FN = """
local function enqueue(at)
  local req_id, priority, meta = ARGV[at], tonumber(ARGV[at + 1]), ARGV[at + 2]
  local lease_expiry, now, wake_ttl = ARGV[at + 3], ARGV[at + 4], ARGV[at + 5]
  local weight, max_queue = tonumber(ARGV[at + 6]), tonumber(ARGV[at + 7])
  if redis.call('ZSCORE', queue, req_id) then
    return {0, redis.call('ZCARD', queue), 0, 0}
  end
  local depth = redis.call('ZCARD', queue)
  if depth >= max_queue then
    return {-1, depth, 0, 0}
  end
  local seq = redis.call('HINCRBY', counters, 'arrivals', 1)
  redis.call('ZADD', queue, -priority * weight + seq, req_id)
  redis.call('HSET', qmeta, req_id, meta)
  redis.call('ZADD', qlease, lease_expiry, req_id)
  redis.call('SET', activity, now)
  local woke, cold = 0, 0
  if redis.call('HLEN', routable) == 0 then
    cold = 1
    if redis.call('SET', wake, now, 'NX', 'PX', wake_ttl) then woke = 1 end
  end
  return {1, redis.call('ZCARD', queue), woke, cold}
end
"""


# Match queue heads to free replica slots. Expired queue entries (their gateway died) and
# expired slots are dropped first so they block nothing. Which free replica a request gets:
#   1. one that has its adapter loaded (adapter affinity, rendezvous hashing among them),
#   2. mode 'prefix': the replica that last served the longest prefix of its prompt, when that
#      prefix is at least `min_share` of the prompt (its KV cache most likely still holds it).
#      A request's `prefix` is a chain of keys, one per chunk of the prompt, each naming the
#      whole prompt up to its chunk; the deepest key found in `prefixes` is the longest match.
#      The chosen replica then becomes the owner of every key of the chain;
#   3. mode 'random': a pseudo-random one; otherwise (and as the fallback) the least loaded,
# where 1 and 2 only consider replicas under the bounded load
# ceil((total + 1) * factor / n) + slack, so no replica is loaded far above the average (no
# herding onto one warm replica) while a lightly loaded deployment still keeps its affinity.
# Each assignment is recorded in `assigned` (until release or cancel) and told to its gateway:
# published on its channel, except to `self_gw`, the gateway running the script, which gets
# it in the reply together with the replica's record (no pub/sub hop, no record lookup).
# Returns {request id, replica id, record or ''} per assignment, flattened.
# ARGV from `at`: now, slot lease, max assign, channel prefix, deployment, factor, slack,
# prefix index max, min share, self_gw, mode (the deployment's routing: `routing_of`).
_DISPATCH_FN = """
local function dispatch(at)
local now, slot_lease, max_assign = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
local channel_prefix, deployment, factor = ARGV[at + 3], ARGV[at + 4], tonumber(ARGV[at + 5])
local slack, index_max, min_share = tonumber(ARGV[at + 6]), tonumber(ARGV[at + 7]), tonumber(ARGV[at + 8])
local self_gw, mode = ARGV[at + 9], ARGV[at + 10]
for _, id in ipairs(redis.call('ZRANGEBYSCORE', qlease, '-inf', now)) do
  redis.call('ZREM', queue, id)
  redis.call('HDEL', qmeta, id)
  redis.call('ZREM', qlease, id)
end
redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now)
local limits, load, order = {}, {}, {}
local avoid = {}
local s = redis.call('HGETALL', suspects)
for i = 1, #s, 2 do
  if tonumber(s[i + 1]) > now then avoid[s[i]] = true else redis.call('HDEL', suspects, s[i]) end
end
local r = redis.call('HGETALL', routable)
for i = 1, #r, 2 do
  if not avoid[r[i]] then
    limits[r[i]] = tonumber(r[i + 1]); load[r[i]] = 0; table.insert(order, r[i])
  end
end
if #order == 0 then return {} end
table.sort(order)
local total = 0
for _, m in ipairs(redis.call('ZRANGE', inflight, 0, -1)) do
  local rid = string.match(m, '^([^|]+)|')
  if rid and load[rid] then load[rid] = load[rid] + 1; total = total + 1 end
end
local loaded = {}
local a = redis.call('HGETALL', adapters_key)
for i = 1, #a, 2 do loaded[a[i]] = a[i + 1] end

local function hrw(key, rid)
  return tonumber(string.sub(redis.sha1hex(key .. '|' .. rid), 1, 8), 16)
end
-- A routable replica with a free slot and under the bound.
local function open(rid, bound)
  return load[rid] ~= nil and load[rid] < limits[rid] and load[rid] < bound
end
local function pick(key, bound, accept)
  local best, best_score = nil, -1
  for _, rid in ipairs(order) do
    if open(rid, bound) and accept(rid) then
      local sc = hrw(key, rid)
      if sc > best_score then best, best_score = rid, sc end
    end
  end
  return best
end
local function any_rid() return true end

local out = {}
while #out / 3 < max_assign do
  local head = redis.call('ZRANGE', queue, 0, 0)[1]
  if not head then break end
  local meta = redis.call('HGET', qmeta, head)
  local m = {}
  if meta then m = cjson.decode(meta) end
  local bound = math.ceil((total + 1) * factor / #order) + slack
  local best = nil
  if m['adapter'] and m['adapter'] ~= '' then
    local wanted = ' ' .. m['adapter'] .. ' '
    best = pick(m['adapter'], bound, function(rid)
      return loaded[rid] ~= nil and string.find(loaded[rid], wanted, 1, true) ~= nil
    end)
  end
  local chain = nil
  if mode == 'prefix' and m['prefix'] and m['prefix'] ~= '' then
    chain = {}
    for k in string.gmatch(m['prefix'], '%S+') do table.insert(chain, k) end
  end
  if not best and chain then
    local owners = redis.call('HMGET', prefixes, unpack(chain))
    for i = #owners, math.max(1, math.ceil(#owners * min_share)), -1 do
      if owners[i] and open(owners[i], bound) then best = owners[i]; break end
    end
  end
  if not best and mode == 'random' then
    best = pick(head, math.huge, any_rid)
  end
  if not best then
    for _, rid in ipairs(order) do
      if load[rid] < limits[rid] and (best == nil or load[rid] < load[best]) then best = rid end
    end
  end
  if not best then break end
  redis.call('ZREM', queue, head)
  redis.call('HDEL', qmeta, head)
  redis.call('ZREM', qlease, head)
  redis.call('ZADD', inflight, now + slot_lease, best .. '|' .. head)
  redis.call('HSET', assigned, head, best)
  load[best] = load[best] + 1
  total = total + 1
  local record = ''
  if m['gw'] and m['gw'] == self_gw then
    record = redis.call('HGET', replicas, best) or ''
  elseif m['gw'] then
    redis.call('PUBLISH', channel_prefix .. m['gw'], deployment .. ' ' .. head .. ' ' .. best)
  end
  if chain then
    local owned, aged = {}, {}
    for _, k in ipairs(chain) do
      table.insert(owned, k); table.insert(owned, best)
      table.insert(aged, now); table.insert(aged, k)
    end
    redis.call('HSET', prefixes, unpack(owned))
    redis.call('ZADD', prefixage, unpack(aged))
  end
  table.insert(out, head); table.insert(out, best); table.insert(out, record)
end
local surplus = redis.call('ZCARD', prefixage) - index_max
while surplus > 0 do
  local old = redis.call('ZPOPMIN', prefixage, math.min(surplus, 1000))
  local gone = {}
  for i = 1, #old, 2 do table.insert(gone, old[i]) end
  redis.call('HDEL', prefixes, unpack(gone))
  surplus = surplus - #gone
end
return out
end
"""

# What one gateway has for a deployment in one turn of its event loop, in one call: give
# slots back, queue requests, then hand out what is free (dispatch serves the queue's heads in
# order, so the result is that of the same releases and admissions made one by one: nobody
# overtakes an older queued request). An admission over its queue limit is refused alone:
# nothing of it is stored, and the call's releases, other admissions and dispatch still take
# place (a refusal never holds back the requests that wait). ARGV: releases, admissions, now,
# then a (replica id, request id) pair per release, enqueue's 8 arguments per admission, then
# dispatch's. Returns {depth still waiting, then enqueue's added (1, 0, -1), woke, cold per
# admission, then the assignments}.
EXCHANGE = (
    _QUEUE_KEYS
    + _ENQUEUE_FN
    + _DISPATCH_FN
    + """
local n_release, n_admit, now = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local at = 4
for _ = 1, n_release do
  redis.call('ZREM', inflight, ARGV[at] .. '|' .. ARGV[at + 1])
  redis.call('HDEL', assigned, ARGV[at + 1])
  at = at + 2
end
if n_release > 0 then
  redis.call('SET', activity, now)
  redis.call('HINCRBY', counters, 'completions', n_release)
end
local admitted = {}
for _ = 1, n_admit do
  local queued = enqueue(at)
  table.insert(admitted, queued[1]); table.insert(admitted, queued[3]); table.insert(admitted, queued[4])
  at = at + 8
end
local out = dispatch(at)
local result = {redis.call('ZCARD', queue)}
for _, v in ipairs(admitted) do table.insert(result, v) end
for _, v in ipairs(out) do table.insert(result, v) end
return result
"""
)

# Take a request out wherever it is: still queued, or assigned but not yet released.
CANCEL = """
local queue, qmeta, qlease, assigned, inflight, counters = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local req_id = ARGV[1]
if redis.call('ZREM', queue, req_id) == 1 then
  redis.call('HDEL', qmeta, req_id)
  redis.call('ZREM', qlease, req_id)
  redis.call('HINCRBY', counters, 'completions', 1)
  return 'queued'
end
local rid = redis.call('HGET', assigned, req_id)
if rid then
  redis.call('HDEL', assigned, req_id)
  redis.call('ZREM', inflight, rid .. '|' .. req_id)
  redis.call('HINCRBY', counters, 'completions', 1)
  return 'assigned'
end
return 'none'
"""

# Renew or take the scaler leader lease; returns 1 when `me` holds it afterwards.
LEADER_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

RELEASE_LEADER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Advance a starting replica (to a URL, or to ready) unless it was withdrawn meanwhile: taken
# out (no record) or picked for draining. KEYS: replicas, routable, adapters hashes.
# ARGV: id, record JSON, state, concurrency, adapters. Returns 1 when written.
ADVANCE_REPLICA = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current or cjson.decode(current)['state'] == 'draining' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == 'ready' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[5])
end
return 1
"""


# Compare-and-set of a deployment's spec: write ARGV[1] only while the stored spec still has
# revision ARGV[2] and status ARGV[3] (what the writer read). A deleted (purged) spec is never
# written again, so a write that lost a race with DELETE cannot resurrect it, and the index
# entry exists whenever the spec does (create adds it first, purge removes it last).
# Returns 1 when written, 0 when the spec changed or is gone.
REPLACE_SPEC = """
local spec_key = KEYS[1]
local record, revision, status = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local raw = redis.call('GET', spec_key)
if not raw then return 0 end
local current = cjson.decode(raw)
if tonumber(current['revision']) ~= revision or current['status'] ~= status then return 0 end
redis.call('SET', spec_key, record)
return 1
"""


# Add counts to a deployment's health rows (wakegate/health.py): ARGV = oldest bucket kept,
# ttl ms, then (bucket, JSON object of counts) pairs, sparse ({"index": count}, the zeros left
# out: most of a row is); each is added to the stored row. Nothing is written for a deployment whose spec is gone (purged: its rows went with
# it, and a late flush must not bring them back). A new row drops the rows older than the
# oldest kept; the key expires as a whole when no gateway writes it for the ttl.
ADD_HEALTH = """
local rows, spec_key = KEYS[1], KEYS[2]
if redis.call('EXISTS', spec_key) == 0 then return 0 end
local oldest, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local added = false
for i = 3, #ARGV, 2 do
  local bucket, counts = ARGV[i], cjson.decode(ARGV[i + 1])
  local raw = redis.call('HGET', rows, bucket)
  if raw then
    local row = cjson.decode(raw)
    for j, n in pairs(counts) do row[j] = (row[j] or 0) + n end
    counts = row
  else
    added = true
  end
  redis.call('HSET', rows, bucket, cjson.encode(counts))
end
if added then
  for _, bucket in ipairs(redis.call('HKEYS', rows)) do
    if tonumber(bucket) < oldest then redis.call('HDEL', rows, bucket) end
  end
end
redis.call('PEXPIRE', rows, ttl)
return 1
"""


# Take a place in the tenant's deployment index unless it already holds `limit` (< 0: no
# limit). One key, so two creates racing for the last place cannot both get it.
# Returns 1 when reserved now, 2 when the name was there already, 0 when the tenant is full.
RESERVE_DEPLOYMENT = """
local index = KEYS[1]
local name, limit = ARGV[1], tonumber(ARGV[2])
if redis.call('SISMEMBER', index, name) == 1 then return 2 end
if limit >= 0 and redis.call('SCARD', index) >= limit then return 0 end
redis.call('SADD', index, name)
return 1
"""


# OOM and scripts: at maxmemory Redis refuses a script's first write that may grow memory
# (and only while the script has written nothing yet: a script is never refused half-way),
# as OutOfMemoryError (Redis 7) or a ResponseError carrying "-OOM" (Redis 6); the gateway
# answers either with 503 and Retry-After (router/middlewares.py). Each script below makes
# its refusable write first where it has one; tests/test_byte_budgets.py checks both cases.

# A tenant's async-request ledger (KEYS: expiry ZSET, bytes HASH). Forget what expired (at
# most 1000 per call), then take a place for a new job unless the tenant already has
# `max_jobs` or the job would take it past `max_bytes` (< 0: no limit). ARGV: now ms, member,
# bytes, expiry ms, max_jobs, max_bytes. Returns {1 reserved, 0 jobs full, -1 bytes full;
# jobs, bytes} (after it).
RESERVE_JOB = """
local expiry, sizes = KEYS[1], KEYS[2]
local now, member, size, expires = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local max_jobs, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, 1000)
local freed = 0
if #gone > 0 then
  for _, v in ipairs(redis.call('HMGET', sizes, unpack(gone))) do freed = freed + (tonumber(v) or 0) end
end
local jobs = redis.call('ZCARD', expiry) - #gone
local total = tonumber(redis.call('HGET', sizes, '#total') or '0') - freed
local verdict = 1
if max_jobs >= 0 and jobs >= max_jobs then verdict = 0
elseif max_bytes >= 0 and total + size > max_bytes then verdict = -1 end
if verdict == 1 then
  redis.call('ZADD', expiry, expires, member)
  redis.call('HSET', sizes, member, size)
  jobs, total = jobs + 1, total + size
end
if #gone > 0 then
  redis.call('ZREM', expiry, unpack(gone))
  redis.call('HDEL', sizes, unpack(gone))
end
redis.call('HSET', sizes, '#total', total)
return {verdict, jobs, total}
"""

# Change a stored job's entry in its tenant's ledger: its bytes and expiry (it finished), or
# take it out (ARGV[2] < 0: the job was dropped or purged). KEYS as RESERVE_JOB; ARGV: member,
# expiry ms, bytes. Nothing happens to a member that is not there (expired meanwhile).
SETTLE_JOB = """
local expiry, sizes = KEYS[1], KEYS[2]
local member, expires, size = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local old = redis.call('HGET', sizes, member)
if not old then return 0 end
if expires < 0 then
  redis.call('ZREM', expiry, member)
  redis.call('HDEL', sizes, member)
  redis.call('HINCRBY', sizes, '#total', -tonumber(old))
else
  redis.call('ZADD', expiry, 'XX', expires, member)
  redis.call('HSET', sizes, member, size)
  redis.call('HINCRBY', sizes, '#total', size - tonumber(old))
end
return 1
"""

# Append a request-log entry (the write that may be refused, first), then drop the oldest
# until the log holds at most `max_entries` and `max_bytes` (< 0: no byte limit; the newest
# always stays).
# KEYS: reqlog, logbytes. ARGV: entry JSON, max_entries, max_bytes. Returns the log's bytes.
LOG_REQUEST = """
local log, counted = KEYS[1], KEYS[2]
local max_entries, max_bytes = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('XADD', log, '*', 'entry', ARGV[1])
local total = redis.call('INCRBY', counted, string.len(ARGV[1]))
local n = redis.call('XLEN', log)
while n > 1 and ((max_bytes >= 0 and total > max_bytes) or n > max_entries) do
  local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1]
  redis.call('XDEL', log, first[1])
  total = redis.call('INCRBY', counted, -string.len(first[2][2]))
  n = n - 1
end
return total
"""


# Count a failed authentication from one address; the window starts with the first failure.
# Returns {failures in the window, seconds until it ends}.
COUNT_AUTH_FAILURE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('TTL', KEYS[1])}
"""


@dataclass(frozen=True)
class TokenRecord:
    """What is stored for an API token (never the token itself)."""

    id: str  # the first 16 hex digits of the digest: stable, so re-adding a token is a no-op
    kind: str  # "tenant" | "admin"
    owner: str  # the tenant code, or the operator's name
    created_at: float
    expires_at: float | None = None
    label: str | None = None
    mac: str | None = None  # signature with the secret key (wakegate/sealing.py)

    def signed_text(self, digest: str) -> str:
        # The digest is signed too: a record copied onto another token's key does not verify.
        return f"{self.kind}|{digest}|{self.owner}|{self.id}|{self.expires_at!r}"

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def to_wire(self) -> dict[str, Any]:
        """What `wakegate tokens list` shows: never the token, nor its digest."""
        return {
            "id": self.id,
            "kind": self.kind,
            ("tenant" if self.kind == "tenant" else "name"): self.owner,
            "label": self.label,
            "createdAt": _iso(self.created_at),
            "expiresAt": _iso(self.expires_at) if self.expires_at is not None else None,
        }


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class TenantFull(Exception):
    """The tenant already has as many deployments as its quota allows."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the tenant already has {limit} deployments")
        self.limit = limit


class JobsFull(Exception):
    """A tenant's async requests are at one of its quotas: `quota` is its wire name
    (maxAsyncJobsPerTenant or maxAsyncBytesPerTenant), `limit` its value, `used` what the
    tenant holds."""

    def __init__(self, quota: str, limit: int, used: int) -> None:
        super().__init__(f"{quota}: {used} of {limit} in use")
        self.quota = quota
        self.limit = limit
        self.used = used


class QueueFull(Exception):
    def __init__(self, depth: int) -> None:
        super().__init__(f"{depth} requests are already waiting")
        self.depth = depth


@dataclass
class ReplicaRecord:
    id: str
    deployment: str
    revision: int
    state: str  # starting | ready | draining
    url: str
    dialect: str  # request dialect the engine speaks, see router/dialects
    concurrency: int
    backend: str
    # Whether asking the engine for per-token log-probabilities costs little (see dialects).
    cheap_logprobs: bool = True
    adapters: list[str] = field(default_factory=list)  # loaded there (preloaded at start)
    handle: dict[str, Any] = field(default_factory=dict)  # backend-specific (pid, actor, pod)
    created_at: float = 0.0
    ready_at: float | None = None
    # The replica's own API key: the engine answers only requests that carry it, and only
    # the scaler (which made it) and gateways (which read it here) know it. Never published
    # on MQTT, never logged (kept out of repr).
    key: str = field(default="", repr=False)

    def auth_headers(self) -> dict[str, str]:
        """What a call to the replica carries: its key as a bearer token (nothing for a
        replica an earlier version started without one)."""
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> ReplicaRecord:
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class Assignment:
    """A queued request handed a replica slot; `record` is the replica's record (JSON) when
    the gateway that owns the request ran the dispatch, else ""."""

    request_id: str
    replica_id: str
    record: str = ""


@dataclass(frozen=True)
class Admission:
    """One request to queue (the arguments of `Store.admit` but the deployment, the owning
    gateway and the lease, which are the call's)."""

    request_id: str
    priority: int = 0
    max_queue: int = 2**31
    adapter: str | None = None
    prefix: Sequence[str] = ()


@dataclass(frozen=True)
class Exchanged:
    """What `Store.exchange` did: per admission (in order) whether it was added (False: the
    queue was at its limit, or it was queued already; nothing changed for it), woke the
    deployment, found it cold; and which admissions the queue limit refused."""

    depth: int  # still waiting after the call's dispatch
    admitted: list[tuple[bool, bool, bool]]
    assignments: list[Assignment]
    full: list[bool]  # per admission: refused, the queue was at its limit


@dataclass(frozen=True)
class Admitted:
    added: bool  # False: it was queued already
    depth: int  # still waiting after the call's dispatch
    woke: bool  # publish a wake-up
    cold: bool  # no replica was ready
    assignments: list[Assignment]


def _enqueue_args(
    req_id: str,
    gateway_id: str,
    priority: int,
    lease_ms: int,
    max_queue: int,
    adapter: str | None,
    prefix: Sequence[str],
    now: int,
) -> list[Any]:
    if abs(priority) > MAX_PRIORITY:
        raise ValueError(f"priority must be within ±{MAX_PRIORITY}")
    meta = orjson.dumps(
        {"gw": gateway_id, "enq": now, "priority": priority, "adapter": adapter or "",
         "prefix": " ".join(prefix)}
    )  # fmt: skip
    return [
        req_id, priority, meta, now + lease_ms, now, WAKE_DEDUP_MS, PRIORITY_WEIGHT, max_queue
    ]  # fmt: skip


def _dispatch_args(
    key: str, lease_ms: int, max_assign: int, gateway_id: str, routing: str, now: int
) -> list[Any]:
    return [
        now, lease_ms, max_assign, gateway_channel(""), key, BOUNDED_LOAD_FACTOR,
        BOUNDED_LOAD_SLACK, PREFIX_INDEX_MAX, PREFIX_MIN_SHARE, gateway_id, routing,
    ]  # fmt: skip


def _assignments(flat: Sequence[str]) -> list[Assignment]:
    return [Assignment(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]


@dataclass(frozen=True)
class Load:
    queued: int
    in_flight: int
    last_activity_ms: int | None
    arrivals_total: int = 0
    completions_total: int = 0


class Store:
    """Typed access to wakegate's Redis state. One instance per process."""

    def __init__(self, redis: aioredis.Redis, box: SecretBox | None = None) -> None:
        self.redis = redis
        # The installation's secret key: signs token records (and checks their signature),
        # seals secrets of deployments (router/control.py). None: no key configured.
        self.box = box
        self._count_auth_failure = redis.register_script(COUNT_AUTH_FAILURE)
        self._exchange = redis.register_script(EXCHANGE)
        self._cancel = redis.register_script(CANCEL)
        self._leader = redis.register_script(LEADER_LEASE)
        self._release_leader = redis.register_script(RELEASE_LEADER)
        self._advance_replica = redis.register_script(ADVANCE_REPLICA)
        self._reserve_deployment = redis.register_script(RESERVE_DEPLOYMENT)
        self._replace_spec = redis.register_script(REPLACE_SPEC)
        self._add_health = redis.register_script(ADD_HEALTH)
        self._reserve_job = redis.register_script(RESERVE_JOB)
        self._settle_job = redis.register_script(SETTLE_JOB)
        self._log_request = redis.register_script(LOG_REQUEST)

    @classmethod
    def from_url(cls, url: str, max_connections: int = 256, box: SecretBox | None = None) -> Store:
        # A burst of requests waits for a pooled connection instead of failing with
        # "Too many connections" (the default pool raises at 100).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=30,
            decode_responses=True,
            health_check_interval=10,
            # After a Redis restart every pooled connection is stale: a command on one is
            # retried on a new connection instead of failing. While Redis stays down the
            # error comes after about a second (the gateway answers 503 then).
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), STORE_RETRIES),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        return cls(aioredis.Redis(connection_pool=pool), box)

    async def close(self) -> None:
        await self.redis.aclose()

    # --- tenants and tokens -------------------------------------------------------------

    async def ensure_tenant(self, code: str, name: str | None = None) -> dict[str, Any]:
        import uuid as _uuid

        record = {
            "code": code,
            "name": name or code,
            "uuid": str(_uuid.uuid5(_uuid.NAMESPACE_URL, f"wakegate:tenant:{code}")),
            "created_at": time.time(),
        }
        await self.redis.set(tenant_key(code), json.dumps(record), nx=True)
        raw = cast(str, await self.redis.get(tenant_key(code)))
        return cast(dict[str, Any], json.loads(raw))

    async def add_token(
        self,
        token: str,
        tenant: str,
        *,
        label: str | None = None,
        expires_at: float | None = None,
    ) -> TokenRecord:
        return await self._put_token("tenant", token, tenant, label, expires_at)

    async def _put_token(
        self, kind: str, token: str, owner: str, label: str | None, expires_at: float | None
    ) -> TokenRecord:
        digest = token_digest(token)
        rec = TokenRecord(
            id=digest[:16],
            kind=kind,
            owner=owner,
            created_at=time.time(),
            expires_at=expires_at,
            label=label,
        )
        if self.box is not None:
            rec = replace(rec, mac=self.box.sign(rec.signed_text(digest)))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(
                _token_key_of(kind, digest),
                rec.to_json(),
                exat=math.ceil(expires_at) if expires_at is not None else None,
            )
            pipe.hset(TOKEN_INDEX, rec.id, f"{kind}:{digest}")
            await pipe.execute()
        return rec

    def _valid_record(self, kind: str, token: str, raw: str | None) -> TokenRecord | None:
        """The record of `token` if it opens anything now: not expired, and signed with the
        secret key where there is one (a record written into Redis without it is no token)."""
        if raw is None:
            return None
        if not raw.startswith("{"):
            # Written before token records (a bare tenant code or operator name): unsigned.
            if self.box is not None:
                return None
            return TokenRecord(id="", kind=kind, owner=raw, created_at=0.0)
        rec = TokenRecord(**json.loads(raw))
        if rec.kind != kind or rec.expired(time.time()):
            return None
        if self.box is not None and (
            rec.mac is None or not self.box.verify(rec.signed_text(token_digest(token)), rec.mac)
        ):
            return None
        return rec

    async def tenant_for_token(self, token: str) -> dict[str, Any] | None:
        raw = cast(str | None, await self.redis.get(token_key(token)))
        rec = self._valid_record("tenant", token, raw)
        if rec is None:
            return None
        tenant = await self.redis.get(tenant_key(rec.owner))
        return cast(dict[str, Any], json.loads(tenant)) if tenant else None

    async def tokens(self) -> list[TokenRecord]:
        """Every token's record (tenant and admin), oldest first; index entries of tokens
        that expired are dropped."""
        index = cast(dict[str, str], await self.redis.hgetall(TOKEN_INDEX))
        if not index:
            return []
        ids = sorted(index)
        keys = [_token_key_of(*index[i].split(":", 1)) for i in ids]
        raws = cast(list[str | None], await self.redis.mget(keys))
        gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
        if gone:
            await self.redis.hdel(TOKEN_INDEX, *gone)
        records = [TokenRecord(**json.loads(r)) for r in raws if r and r.startswith("{")]
        return sorted(records, key=lambda r: (r.created_at, r.id))

    async def revoke_token(self, token_id: str) -> TokenRecord | None:
        """Delete a token by id; None when there is no such token (any more)."""
        entry = cast(str | None, await self.redis.hget(TOKEN_INDEX, token_id))
        if entry is None:
            return None
        key = _token_key_of(*entry.split(":", 1))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(key)
            pipe.delete(key)
            pipe.hdel(TOKEN_INDEX, token_id)
            pipe.sadd(REVOKED_TOKENS, token_id)
            raw, _, _, _ = await pipe.execute()
        return TokenRecord(**json.loads(raw)) if raw and raw.startswith("{") else None

    async def ensure_token(self, kind: str, token: str, owner: str) -> str:
        """A start-up's own token (the state dir's): added when Redis has none of it, kept as
        it is when it has one, never brought back once revoked. Returns what it did:
        `added`, `kept` or `revoked`."""
        digest = token_digest(token)
        if await self.redis.sismember(REVOKED_TOKENS, digest[:16]):
            return "revoked"
        if await self.redis.exists(_token_key_of(kind, digest)):
            return "kept"
        await self._put_token(kind, token, owner, None, None)
        return "added"

    async def sign_legacy_tokens(self) -> list[str]:
        """Once per installation, when a key is first configured: sign the tokens stored
        unsigned (bare values from before token records, or records made while there was no
        key) with this store's key, as indexed records, so they keep working under the key.
        Returns the ids it signed. After it has run (recorded in MIGRATIONS), an unsigned
        record is never signed again: one written into Redis later opens nothing."""
        if self.box is None:
            return []
        if not await self.redis.hsetnx(MIGRATIONS, SIGN_TOKENS_MIGRATION, str(time.time())):
            return []
        signed: list[str] = []
        for kind, pattern in (("tenant", "wg:token:*"), ("admin", "wg:admin-token:*")):
            async for key in self.redis.scan_iter(match=pattern, count=1000):
                raw = cast(str | None, await self.redis.get(key))
                if raw is None:
                    continue
                digest = key.rsplit(":", 1)[1]
                if raw.startswith("{"):
                    rec = TokenRecord(**json.loads(raw))
                    if rec.mac is not None:
                        continue
                else:
                    rec = TokenRecord(id=digest[:16], kind=kind, owner=raw, created_at=time.time())
                rec = replace(rec, mac=self.box.sign(rec.signed_text(digest)))
                await self.redis.set(key, rec.to_json(), keepttl=True)
                await self.redis.hset(TOKEN_INDEX, rec.id, f"{kind}:{digest}")
                signed.append(rec.id)
        return signed

    async def seal_stored_secrets(self) -> int:
        """Encrypt the secrets of deployments stored in clear (before there was a key) with
        this store's key; returns how many deployments it rewrote. Each is rewritten only if
        unchanged since it was read."""
        if self.box is None:
            return 0
        sealed = 0
        for key in await self.deployment_keys():
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(keys_of(key).spec)
                    raw = cast(str | None, await pipe.get(keys_of(key).spec))
                    if raw is None:
                        continue
                    record = json.loads(raw)
                    stored = DeploymentConfig.from_dict(record["config"])
                    config = seal_secrets(stored, self.box)
                    if config == stored:
                        continue
                    pipe.multi()  # type: ignore[no-untyped-call]
                    record["config"] = config.to_dict()
                    pipe.set(keys_of(key).spec, json.dumps(record))
                    await pipe.execute()
                    sealed += 1
                except aioredis.WatchError:
                    continue  # changed meanwhile: by a gateway, which sealed it
        return sealed

    async def count_auth_failure(self, address: str, window_s: int) -> tuple[int, int]:
        """Count a failed authentication: (failures in the window, seconds left in it)."""
        count, ttl = await self._count_auth_failure(
            keys=[auth_failures_key(address)], args=[window_s]
        )
        return int(count), max(int(ttl), 0)

    # --- quotas and admin tokens ------------------------------------------------------------

    async def quota_override(self, tenant: str) -> QuotaOverride | None:
        raw = cast(str | None, await self.redis.hget(QUOTAS, tenant))
        return QuotaOverride.model_validate(json.loads(raw)) if raw else None

    async def quota_overrides(self) -> dict[str, QuotaOverride]:
        """Every tenant's override, by tenant code."""
        raw = cast(dict[str, str], await self.redis.hgetall(QUOTAS))
        return {t: QuotaOverride.model_validate(json.loads(v)) for t, v in sorted(raw.items())}

    async def set_quota_override(self, tenant: str, change: QuotaOverride) -> QuotaOverride:
        """Set the fields `change` sets in the tenant's override, keeping the others; returns
        the override now stored. Concurrent changes of one tenant are applied one by one."""
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(QUOTAS)
                    raw = cast(str | None, await pipe.hget(QUOTAS, tenant))
                    current = QuotaOverride.model_validate(json.loads(raw) if raw else {})
                    merged = current.merged(change)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(QUOTAS, tenant, json.dumps(merged.to_record()))
                    await pipe.execute()
                    return merged
                except aioredis.WatchError:
                    continue

    async def delete_quota_override(self, tenant: str) -> bool:
        """Back to the operator defaults; False when the tenant had no override."""
        return bool(await self.redis.hdel(QUOTAS, tenant))

    async def add_admin_token(
        self, token: str, name: str = "admin", *, expires_at: float | None = None
    ) -> TokenRecord:
        return await self._put_token("admin", token, name, None, expires_at)

    async def admin_for_token(self, token: str) -> str | None:
        """The operator name of an admin token; None for any other token."""
        raw = cast(str | None, await self.redis.get(admin_token_key(token)))
        rec = self._valid_record("admin", token, raw)
        return rec.owner if rec is not None else None

    async def tenant_deployment_count(self, tenant: str) -> int:
        return int(await self.redis.scard(tenant_deployments_key(tenant)))

    async def backfill_tenant_deployments(self) -> int:
        """Index existing deployments by tenant (state written before the index existed);
        idempotent, safe to run while deployments are created and purged. Returns how many
        entries it added."""
        keys = sorted(cast(set[str], await self.redis.smembers(DEPLOYMENTS)))
        added: list[str] = []
        for key in keys:
            tenant, name = key.split("/", 1)
            if await self.redis.sadd(tenant_deployments_key(tenant), name):
                added.append(key)
        # Take back what was added for a deployment purged meanwhile (its spec goes first);
        # what a create reserved is never added here (the create reserves before it shows up
        # in wg:deployments), so nothing of a create in progress is taken back.
        kept = 0
        for key in added:
            tenant, name = key.split("/", 1)
            if await self.redis.exists(keys_of(key).spec):
                kept += 1
            else:
                await self.redis.srem(tenant_deployments_key(tenant), name)
        return kept

    # --- deployments ----------------------------------------------------------------------

    async def create_deployment(
        self,
        spec: DeploymentSpec,
        events: list[dict[str, Any]],
        max_per_tenant: int | None = None,
    ) -> bool:
        """Store a new deployment; False when the name is taken (nothing is changed then).

        Raises TenantFull, changing nothing, when the tenant already has `max_per_tenant`
        deployments (None: no limit).
        """
        index = tenant_deployments_key(spec.tenant)
        limit = -1 if max_per_tenant is None else max_per_tenant
        reserved = int(await self._reserve_deployment(keys=[index], args=[spec.name, limit]))
        if reserved == 0:
            raise TenantFull(limit)
        # Index first: the reconcile pass skips index entries without a spec, so a crash
        # between the two writes leaves nothing half-visible.
        try:
            await self.redis.sadd(DEPLOYMENTS, spec.key)
            created = await self.redis.set(
                keys_of(spec.key).spec, json.dumps(spec.to_record()), nx=True
            )
        except BaseException:
            # Redis refused a write (out of memory): give the reserved place back (SREM is
            # allowed at maxmemory), so a refused create holds no quota.
            if reserved == 1:
                await self.redis.srem(index, spec.name)
            raise
        if not created:
            if reserved == 1:
                await self.redis.srem(index, spec.name)
            return False
        await self.append_events(spec.key, events)
        await self.mark_dirty(spec.key)
        return True

    async def get_deployment(self, key: str) -> DeploymentSpec | None:
        return _spec_of(await self.redis.get(keys_of(key).spec))

    async def put_deployment(self, spec: DeploymentSpec) -> None:
        """Write the spec unconditionally (tests and tools seeding state); the gateway and the
        scaler change specs only through `replace_deployment`."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(keys_of(spec.key).spec, json.dumps(spec.to_record()))
            pipe.sadd(DIRTY, spec.key)  # the scaler looks at the change
            await pipe.execute()

    async def replace_deployment(self, read: DeploymentSpec, updated: DeploymentSpec) -> bool:
        """Store `updated` in place of `read`, compare-and-set: only while the stored spec still
        has `read`'s revision and status (nobody changed, failed or deleted it since it was
        read). False, writing nothing, otherwise: read it again and decide anew."""
        assert read.key == updated.key
        written = await self._replace_spec(
            keys=[keys_of(read.key).spec],
            args=[json.dumps(updated.to_record()), read.revision, read.status],
        )
        if not written:
            return False
        await self.mark_dirty(read.key)  # the scaler looks at the change
        return True

    async def deployment_keys(self, tenant: str | None = None) -> list[str]:
        keys = sorted(cast(set[str], await self.redis.smembers(DEPLOYMENTS)))
        if tenant is not None:
            keys = [k for k in keys if k.split("/", 1)[0] == tenant]
        return keys

    async def list_deployments(self, tenant: str | None = None) -> list[DeploymentSpec]:
        return await self.list_specs(await self.deployment_keys(tenant))

    async def list_specs(self, keys: Sequence[str]) -> list[DeploymentSpec]:
        raws = await self.redis.mget([keys_of(k).spec for k in keys]) if keys else []
        return [DeploymentSpec.from_record(json.loads(r)) for r in raws if r]

    async def purge_deployment(self, key: str) -> None:
        """Forget a deleted deployment once its replicas are gone: every key `keys_of` names."""
        k = keys_of(key)
        await self.redis.delete(*(part for part in k.all() if part != k.spec))
        # Async requests and their claims, by the hash-tag prefix (each job has its own key);
        # each job leaves its tenant's ledger with it.
        job_prefix = k.job("")
        for pattern in k.per_request_patterns():
            batch: list[str] = []
            async for found in self.redis.scan_iter(match=pattern, count=1000):
                batch.append(cast(str, found))
                if len(batch) >= 1000:
                    await self._purge_jobs(key, job_prefix, batch)
                    batch = []
            if batch:
                await self._purge_jobs(key, job_prefix, batch)
        # The spec last: until it goes the name stays taken (409), so nothing deleted above
        # belongs to a new deployment of the same name.
        await self.redis.delete(k.spec)
        await self.redis.srem(JOB_DEPLOYMENTS, key)
        await self.redis.srem(DEPLOYMENTS, key)
        tenant, name = key.split("/", 1)
        await self.redis.srem(tenant_deployments_key(tenant), name)

    async def memory_use(self) -> tuple[int, int]:
        """Redis's used memory and its maxmemory (0: no limit), in bytes (INFO memory)."""
        info = await self.redis.info("memory")
        return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))

    async def _purge_jobs(self, key: str, job_prefix: str, found: list[str]) -> None:
        await self.redis.delete(*found)
        for job_key in found:
            if job_key.startswith(job_prefix):
                await self.settle_job(key, job_key[len(job_prefix) :], None, 0)

    async def append_events(self, key: str, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        ek = keys_of(key).events
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(ek, *(json.dumps(e) for e in events))
            pipe.ltrim(ek, -EVENTS_MAX, -1)
            await pipe.execute()

    async def events(self, key: str) -> list[dict[str, Any]]:
        return [json.loads(e) for e in await self.redis.lrange(keys_of(key).events, 0, -1)]

    # --- queue ----------------------------------------------------------------------------

    async def enqueue(
        self,
        key: str,
        req_id: str,
        gateway_id: str,
        priority: int,
        lease_ms: int,
        max_queue: int = 2**31,
        adapter: str | None = None,
        prefix: Sequence[str] = (),
    ) -> tuple[bool, int, bool, bool]:
        """Queue a request and hand out no slot: (added, queue depth, publish a wake, no
        replica was ready). An exchange of one admission that assigns nothing.

        `prefix` is the prompt's chain of prefix keys (router/pipeline.py `prefix_chain`),
        which prefix-aware routing matches against where earlier prompts went.

        Raises QueueFull, queueing nothing, when `max_queue` requests already wait.
        """
        admission = Admission(req_id, priority, max_queue, adapter, prefix)
        # Nothing is dispatched, so the routing mode plays no part.
        done = await self._admit_one(key, admission, lease_ms, gateway_id, DEFAULT_ROUTING, 0)
        return done.added, done.depth, done.woke, done.cold

    async def admit(
        self,
        key: str,
        req_id: str,
        gateway_id: str,
        priority: int,
        lease_ms: int,
        max_queue: int = 2**31,
        adapter: str | None = None,
        prefix: Sequence[str] = (),
        *,
        routing: str | None = None,
    ) -> Admitted:
        """Queue a request and, in the same call, hand free slots to the queue's heads in
        order (this one among them when nobody before it waits): an exchange of one
        admission. Assignments of `gateway_id`'s requests come back with their replica's
        record and are not published. `routing` is the deployment's (`routing_of`); None
        reads it from the stored spec.

        Raises QueueFull, queueing nothing, when `max_queue` requests already wait (the
        call's dispatch still hands free slots to those).
        """
        mode = routing or await self.routing(key)  # first: the leases count from the call
        admission = Admission(req_id, priority, max_queue, adapter, prefix)
        return await self._admit_one(key, admission, lease_ms, gateway_id, mode, 64)

    async def _admit_one(
        self,
        key: str,
        admission: Admission,
        lease_ms: int,
        gateway_id: str,
        routing: str,
        max_assign: int,
    ) -> Admitted:
        done = await self.exchange(
            key, (), [admission], lease_ms, gateway_id, routing, max_assign=max_assign
        )
        [(added, woke, cold)], [full] = done.admitted, done.full
        if full:
            raise QueueFull(done.depth)
        return Admitted(added, done.depth, woke, cold, done.assignments)

    async def _mark_dirty(self, key: str, queued: Sequence[str]) -> None:
        """The level path of the wake: the scaler polls the dirty set, MQTT is the fast one."""
        try:
            await self.redis.sadd(DIRTY, key)
        except BaseException:
            # Refused (Redis out of memory) or cancelled: the requests are not queued after
            # all, rather than queued with no wake recorded.
            for req_id in queued:
                await asyncio.shield(self.cancel(key, req_id))
            raise

    async def routing(self, key: str) -> str:
        """The deployment's routing mode as its stored spec says (`routing_of`), for callers
        that have no spec at hand: those that have one pass `routing_of(spec)` instead."""
        return routing_of(await self.get_deployment(key))

    async def dispatch(
        self, key: str, lease_ms: int, max_assign: int = 64, *, routing: str | None = None
    ) -> list[tuple[str, str]]:
        """Assign queue heads to free slots, telling each owning gateway on its channel;
        returns [(request id, replica id)]. `routing` as in `admit`."""
        out = await self.dispatch_for(key, lease_ms, "", max_assign, routing=routing)
        return [(a.request_id, a.replica_id) for a in out]

    async def dispatch_for(
        self,
        key: str,
        lease_ms: int,
        gateway_id: str,
        max_assign: int = 64,
        *,
        routing: str | None = None,
    ) -> list[Assignment]:
        """`dispatch` run by gateway `gateway_id`: its own requests' assignments come back
        with their replica's record instead of being published. An exchange of nothing."""
        mode = routing or await self.routing(key)
        done = await self.exchange(key, (), (), lease_ms, gateway_id, mode, max_assign=max_assign)
        return done.assignments

    async def cancel(self, key: str, req_id: str) -> str:
        """Remove a request from the queue or its slot: 'queued', 'assigned' or 'none'."""
        k = keys_of(key)
        return cast(
            str,
            await self._cancel(
                keys=[k.queue, k.qmeta, k.qlease, k.assigned, k.inflight, k.counters],
                args=[req_id],
            ),
        )

    async def take_assignments(self, key: str, req_ids: list[str]) -> dict[str, str]:
        """Which of these queued requests have been assigned a replica (level-triggered path)."""
        if not req_ids:
            return {}
        found = cast(list[str | None], await self.redis.hmget(keys_of(key).assigned, req_ids))
        return {r: rid for r, rid in zip(req_ids, found, strict=True) if rid}

    async def ack_assignment(self, key: str, req_id: str) -> None:
        await self.redis.hdel(keys_of(key).assigned, req_id)

    async def ack_assignments(self, acks: dict[str, list[str]]) -> None:
        """`ack_assignment` of many requests in one round trip."""
        if not any(acks.values()):
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, req_ids in acks.items():
                if req_ids:
                    pipe.hdel(keys_of(key).assigned, *req_ids)
            await pipe.execute()

    async def renew_leases(
        self, queued: dict[str, list[str]], running: dict[str, list[str]], lease_ms: int
    ) -> None:
        """Extend the leases of this gateway's queued requests and held slots."""
        expiry = now_ms() + lease_ms
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, ids in queued.items():
                if ids:
                    pipe.zadd(keys_of(key).qlease, dict.fromkeys(ids, expiry), xx=True)
            for key, members in running.items():
                if members:
                    pipe.zadd(keys_of(key).inflight, dict.fromkeys(members, expiry), xx=True)
            await pipe.execute()

    async def log_request(
        self, key: str, entry: dict[str, Any], max_entries: int, max_bytes: int | None
    ) -> int:
        """Append to the deployment's request log, which keeps at most `max_entries` entries
        and `max_bytes` bytes of them (None: no byte limit; the oldest go first); returns the
        bytes it holds."""
        k = keys_of(key)
        text = json.dumps(entry)
        limit = -1 if max_bytes is None else max_bytes
        return int(await self._log_request(keys=[k.reqlog, k.logbytes],
                                           args=[text, max_entries, limit]))  # fmt: skip

    async def request_log(
        self, key: str, start_ms: int, end_ms: int, count: int, after: str | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """Entries logged in [start_ms, end_ms], oldest first; page on with `after`."""
        low = f"({after}" if after else str(start_ms)
        rows = cast(
            list[tuple[str, dict[str, str]]],
            await self.redis.xrange(keys_of(key).reqlog, low, str(end_ms), count=count),
        )
        return [(entry_id, json.loads(fields["entry"])) for entry_id, fields in rows]

    # --- async requests ---------------------------------------------------------------------

    async def put_job(self, key: str, job_id: str, fields: dict[str, Any], ttl_s: int) -> None:
        """Store a new async request; it expires `ttl_s` after now whatever becomes of it (a
        gateway that dies before queueing it leaves nothing behind for long). One MULTI: Redis
        refuses all of it or none (out of memory)."""
        job = keys_of(key).job(job_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(JOB_DEPLOYMENTS, key)
            pipe.hset(job, mapping={k: json.dumps(v) for k, v in fields.items()})
            pipe.expire(job, ttl_s)
            await pipe.execute()

    async def drop_job(self, key: str, job_id: str) -> None:
        """Forget an async request that was never queued (DEL works at maxmemory), and its
        place in the tenant's ledger."""
        await self.redis.delete(keys_of(key).job(job_id))
        await self.settle_job(key, job_id, None, 0)

    async def reserve_job(
        self,
        key: str,
        job_id: str,
        size: int,
        ttl_s: int,
        max_jobs: int | None,
        max_bytes: int | None,
    ) -> None:
        """Count a new async request of `size` bytes, living `ttl_s`, in its tenant's ledger,
        or raise JobsFull when the tenant is at its jobs or bytes quota (nothing counted)."""
        tenant, name = key.split("/", 1)
        now = now_ms()
        verdict, jobs, total = cast(
            list[int],
            await self._reserve_job(
                keys=list(job_usage_keys(tenant)),
                args=[now, f"{name}/{job_id}", size, now + ttl_s * 1000,
                      -1 if max_jobs is None else max_jobs,
                      -1 if max_bytes is None else max_bytes],
            ),
        )  # fmt: skip
        if verdict == 0:
            raise JobsFull("maxAsyncJobsPerTenant", int(max_jobs or 0), int(jobs))
        if verdict == -1:
            raise JobsFull("maxAsyncBytesPerTenant", int(max_bytes or 0), int(total))

    async def settle_job(self, key: str, job_id: str, ttl_s: int | None, size: int) -> None:
        """A job's entry in its tenant's ledger now takes `size` bytes and expires `ttl_s`
        from now; None: the job is gone (dropped, purged)."""
        tenant, name = key.split("/", 1)
        expires = -1 if ttl_s is None else now_ms() + ttl_s * 1000
        await self._settle_job(
            keys=list(job_usage_keys(tenant)), args=[f"{name}/{job_id}", expires, size]
        )

    async def job_usage(self, tenant: str) -> tuple[int, int]:
        """Async requests the tenant has stored and their bytes (those not yet expired)."""
        expiry, sizes = job_usage_keys(tenant)
        now = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(expiry, f"({now}", "+inf")  # at `now` it has expired
            pipe.hget(sizes, JOB_BYTES_TOTAL)
            live, _ = await pipe.execute()
        if not live:
            return 0, 0
        sizes_of = await self.redis.hmget(sizes, live)
        return len(live), sum(int(v) for v in sizes_of if v is not None)

    async def job(self, key: str, job_id: str) -> dict[str, Any] | None:
        raw = cast(dict[str, str], await self.redis.hgetall(keys_of(key).job(job_id)))
        return {k: json.loads(v) for k, v in raw.items()} if raw else None

    async def finish_job(self, key: str, job_id: str, fields: dict[str, Any], ttl_s: int) -> None:
        """Store a job's outcome, kept `ttl_s` from now; its tenant's ledger counts what the
        job now takes until then."""
        k = keys_of(key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(k.job(job_id), mapping={f: json.dumps(v) for f, v in fields.items()})
            pipe.expire(k.job(job_id), ttl_s)
            pipe.zrem(k.running, job_id)
            pipe.delete(k.claim(job_id))
            pipe.hgetall(k.job(job_id))
            stored = cast(dict[str, str], (await pipe.execute())[-1])
        size = sum(len(f) + len(v.encode()) for f, v in stored.items())
        await self.settle_job(key, job_id, ttl_s, size)

    async def claim_job(self, key: str, job_id: str, owner: str, lease_ms: int) -> bool:
        """Take an assigned async request to run it; one gateway wins."""
        k = keys_of(key)
        if not await self.redis.set(k.claim(job_id), owner, nx=True, px=lease_ms):
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(k.running, {job_id: now_ms() + lease_ms})
            pipe.hset(k.job(job_id), "status", json.dumps("running"))
            pipe.hincrby(k.job(job_id), "attempts", 1)
            await pipe.execute()
        return True

    async def renew_job(self, key: str, job_id: str, lease_ms: int) -> None:
        k = keys_of(key)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.pexpire(k.claim(job_id), lease_ms)
            pipe.zadd(k.running, {job_id: now_ms() + lease_ms}, xx=True)
            await pipe.execute()

    async def orphaned_jobs(self, key: str) -> list[str]:
        """Async requests whose runner stopped renewing its claim (it died)."""
        return cast(
            list[str], await self.redis.zrangebyscore(keys_of(key).running, "-inf", now_ms())
        )

    async def unclaimed_assignments(self, key: str) -> dict[str, str]:
        """Async requests that got a slot but no runner yet (the message may be lost)."""
        k = keys_of(key)
        assigned = cast(dict[str, str], await self.redis.hgetall(k.assigned))
        if not assigned:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in assigned:
                pipe.exists(k.job(job_id))
                pipe.exists(k.claim(job_id))
            flags = await pipe.execute()
        return {
            job_id: rid
            for (job_id, rid), is_job, claimed in zip(
                assigned.items(), flags[0::2], flags[1::2], strict=True
            )
            if is_job and not claimed
        }

    async def holds_slot(self, key: str, replica_id: str, req_id: str) -> bool:
        score = await self.redis.zscore(keys_of(key).inflight, f"{replica_id}|{req_id}")
        return score is not None and float(score) > now_ms()

    async def requeue_job(self, key: str, job_id: str, priority: int) -> None:
        """Back to the queue (front of its priority) after its runner or replica failed."""
        k = keys_of(key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(k.running, job_id)
            pipe.delete(k.claim(job_id))
            pipe.hset(k.job(job_id), "status", json.dumps("queued"))
            await pipe.execute()
        await self.enqueue(key, job_id, ASYNC_OWNER, priority, FOREVER_MS)

    async def job_deployments(self) -> list[str]:
        return sorted(cast(set[str], await self.redis.smembers(JOB_DEPLOYMENTS)))

    async def suspect(self, key: str, replica_id: str, for_ms: int) -> None:
        """Keep dispatch away from a replica that just failed a request (until the scaler
        has looked at it)."""
        await self.redis.hset(keys_of(key).suspects, replica_id, now_ms() + for_ms)

    async def exchange(
        self,
        key: str,
        releases: Sequence[tuple[str, str]],
        admissions: Sequence[Admission],
        lease_ms: int,
        gateway_id: str,
        routing: str,
        *,
        max_assign: int = 64,
    ) -> Exchanged:
        """Give slots back ((replica id, request id) pairs), queue requests, then hand up to
        `max_assign` free slots to the queue's heads, all in one call: a gateway's releases
        and arrivals of one deployment in one turn of its event loop. The same as releasing
        and admitting them one by one; an admission over `max_queue` is not added (`full`:
        the caller raises QueueFull). Assignments of `gateway_id`'s requests come back with
        their replica's record; the others are published to their gateways. `routing` is the
        deployment's (`routing_of`): the gateway's hot path, never read here."""
        now = now_ms()
        args: list[Any] = [len(releases), len(admissions), now]
        for replica_id, req_id in releases:
            args += (replica_id, req_id)
        # One clock reading for the whole call: an entry queued in it never counts as
        # expired in its own dispatch, however long packing the arguments takes.
        for a in admissions:
            args += _enqueue_args(
                a.request_id, gateway_id, a.priority, lease_ms, a.max_queue, a.adapter,
                a.prefix, now,
            )  # fmt: skip
        args += _dispatch_args(key, lease_ms, max_assign, gateway_id, routing, now)
        out = await self._exchange(keys=keys_of(key).queue_script, args=args)
        n = len(admissions)
        flags = out[1 : 1 + 3 * n]
        admitted = [
            (flags[i] == 1, bool(flags[i + 1]), bool(flags[i + 2])) for i in range(0, 3 * n, 3)
        ]
        cold = [a.request_id for a, (added, _, c) in zip(admissions, admitted, strict=True)
                if added and c]  # fmt: skip
        if cold:
            await self._mark_dirty(key, cold)
        full = [flags[i] == -1 for i in range(0, 3 * n, 3)]
        return Exchanged(int(out[0]), admitted, _assignments(out[1 + 3 * n :]), full)

    async def release(self, key: str, replica_id: str, req_id: str) -> None:
        """Give a slot back and hand it to nobody (a dispatch later does): an exchange of one
        release that assigns nothing."""
        await self.exchange(key, [(replica_id, req_id)], (), 0, "", DEFAULT_ROUTING, max_assign=0)

    async def load(self, key: str) -> Load:
        [replies] = await self._read_each([key], _read_load)
        return _load_of(replies)[0]

    async def replica_in_flight(self, key: str, replica_id: str) -> int:
        return (await self.in_flight_by_replica(key)).get(replica_id, 0)

    async def in_flight_by_replica(self, key: str) -> dict[str, int]:
        """Requests holding a slot on each replica (replicas with none are absent)."""
        members = cast(
            list[str], await self.redis.zrangebyscore(keys_of(key).inflight, now_ms(), "+inf")
        )
        return _per_replica(members)

    # --- replicas -------------------------------------------------------------------------

    async def replicas(self, key: str) -> list[ReplicaRecord]:
        raw = await self.redis.hgetall(keys_of(key).replicas)
        return [ReplicaRecord.from_json(v) for v in raw.values()]

    async def replica(self, key: str, replica_id: str) -> ReplicaRecord | None:
        raw = await self.redis.hget(keys_of(key).replicas, replica_id)
        return ReplicaRecord.from_json(raw) if raw else None

    async def put_replica(self, rec: ReplicaRecord) -> None:
        """Record a replica; a ready one becomes routable, any other state is taken out."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys_of(rec.deployment).replicas, rec.id, rec.to_json())
            if rec.state == "ready":
                pipe.hset(keys_of(rec.deployment).routable, rec.id, rec.concurrency)
                pipe.hset(keys_of(rec.deployment).adapters, rec.id, f" {' '.join(rec.adapters)} ")
            else:
                pipe.hdel(keys_of(rec.deployment).routable, rec.id)
                pipe.hdel(keys_of(rec.deployment).adapters, rec.id)
            await pipe.execute()

    async def advance_replica(self, rec: ReplicaRecord) -> bool:
        """Record a starting replica's progress (its URL, or ready) unless it was withdrawn
        meanwhile (removed or draining); False then, and nothing is written."""
        k = keys_of(rec.deployment)
        keys = [k.replicas, k.routable, k.adapters]
        argv: list[str | int] = [
            rec.id, rec.to_json(), rec.state, rec.concurrency, f" {' '.join(rec.adapters)} "
        ]  # fmt: skip
        return bool(await self._advance_replica(keys=keys, args=argv))

    async def remove_replica(self, key: str, replica_id: str) -> None:
        k = keys_of(key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(k.replicas, replica_id)
            pipe.hdel(k.routable, replica_id)
            pipe.hdel(k.adapters, replica_id)
            await pipe.execute()

    async def ready_count(self, key: str) -> int:
        return int(await self.redis.hlen(keys_of(key).routable))

    async def clear_wake(self, key: str) -> None:
        await self.redis.delete(keys_of(key).wake)

    # --- scaler leadership ----------------------------------------------------------------

    async def hold_leadership(self, instance_id: str, ttl_ms: int) -> bool:
        return bool(await self._leader(keys=[SCALER_LEADER], args=[instance_id, ttl_ms]))

    async def resign_leadership(self, instance_id: str) -> None:
        await self._release_leader(keys=[SCALER_LEADER], args=[instance_id])

    # --- the scaler's view: dirty marks, batched observation, capacity waits ----------------

    async def mark_dirty(self, *keys: str) -> None:
        """Ask the scaler to look at these deployments now (it polls the set)."""
        if keys:
            await self.redis.sadd(DIRTY, *keys)

    async def take_dirty(self, count: int = 10_000) -> list[str]:
        """Take up to `count` deployments marked dirty; the caller reads their state after
        this, so a mark made meanwhile is either seen by that read or stays in the set."""
        taken = await self.redis.spop(DIRTY, count)
        return sorted(cast(list[str], taken or []))

    async def _read_each(self, keys: Sequence[str], reads: _Reads) -> list[list[Any]]:
        """`reads` of each deployment (its commands on a pipeline, given its keys and now),
        in one round trip; returns each deployment's replies, in the order of `keys`."""
        if not keys:
            return []
        now = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                reads(pipe, keys_of(key), now)
            raw = await pipe.execute()
        n = len(raw) // len(keys)
        return [raw[i : i + n] for i in range(0, len(raw), n)]

    async def observe(self, keys: Sequence[str]) -> list[Observed]:
        """Spec, replicas, load and capacity wait of each deployment, in one round trip."""
        rows = await self._read_each(keys, _read_observed)
        return [_observed(key, replies) for key, replies in zip(keys, rows, strict=True)]

    async def scan_deployments(self, cursor: int, count: int) -> tuple[int, list[str]]:
        """A page of every deployment's key (SSCAN: each page is small, and a deployment
        present throughout is seen at least once); cursor 0 starts and ends the walk."""
        cursor, keys = await self.redis.sscan(DEPLOYMENTS, cursor, count=count)
        return int(cursor), cast(list[str], keys)

    async def sweep(self, keys: Sequence[str]) -> list[SweepRow]:
        """What the scaler's full sweep needs to tell idle deployments from the rest, in one
        round trip: spec, replica count, queued and in-flight requests."""

        def reads(pipe: Pipeline, k: DeploymentKeys, now: int) -> None:
            pipe.get(k.spec)
            pipe.hlen(k.replicas)
            pipe.zcount(k.qlease, now, "+inf")
            pipe.zcount(k.inflight, now, "+inf")

        rows = await self._read_each(keys, reads)
        return [
            SweepRow(key, _spec_of(spec), int(replicas), int(queued) + int(in_flight))
            for key, (spec, replicas, queued, in_flight) in zip(keys, rows, strict=True)
        ]

    async def set_waiting(self, key: str, record: dict[str, Any]) -> None:
        await self.redis.set(keys_of(key).capacity, json.dumps(record))

    async def clear_waiting(self, key: str) -> None:
        await self.redis.delete(keys_of(key).capacity)

    # --- the pool's accelerators (wakegate/pool.py) ---------------------------------------

    async def put_pool(self, report: PoolReport) -> None:
        """The scaler's report; it says nothing once REPORT_TTL_S passes without another."""
        await self.redis.set(POOL, json.dumps(report.to_dict()), px=int(REPORT_TTL_S * 1000))

    async def pool(self) -> PoolReport | None:
        """The pool as last reported, or None: unknown (no scaler has reported lately)."""
        raw = cast(str | None, await self.redis.get(POOL))
        return None if raw is None else PoolReport.from_dict(json.loads(raw))

    # --- the status overview: what the scaler decided and saw, for people -----------------

    async def record_status(
        self,
        decisions: Sequence[tuple[str, dict[str, Any]]],
        samples: Sequence[tuple[str, list[float]]],
    ) -> None:
        """Append scaling decisions and load samples ((deployment, value) pairs) in one round
        trip, each list capped (a pass over many deployments costs one write, not many)."""
        if not decisions and not samples:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, decision in decisions:
                pipe.rpush(keys_of(key).decisions, json.dumps(decision))
                pipe.ltrim(keys_of(key).decisions, -DECISIONS_MAX, -1)
            for key, sample in samples:
                pipe.rpush(keys_of(key).history, json.dumps(sample))
                pipe.ltrim(keys_of(key).history, -HISTORY_MAX, -1)
            await pipe.execute()

    async def status_rows(self, keys: Sequence[str], events: int) -> list[StatusRow]:
        """What the status overview shows of each deployment, in one round trip: what the
        scaler observes (`observe`), decisions, load samples and the last `events` events."""

        def reads(pipe: Pipeline, k: DeploymentKeys, now: int) -> None:
            _read_observed(pipe, k, now)
            pipe.lrange(k.decisions, 0, -1)
            pipe.lrange(k.history, 0, -1)
            pipe.lrange(k.events, -events, -1)

        rows = []
        for key, replies in zip(keys, await self._read_each(keys, reads), strict=True):
            seen = _observed(key, replies[:-3])
            if seen.spec is None:
                continue  # purged meanwhile
            decided, history, evs = replies[-3:]
            rows.append(
                StatusRow(
                    spec=seen.spec,
                    replicas=seen.replicas,
                    queued=seen.load.queued,
                    in_flight=seen.load.in_flight,
                    waiting=seen.waiting,
                    decisions=[json.loads(d) for d in decided],
                    history=[json.loads(h) for h in history],
                    events=[json.loads(e) for e in evs],
                )
            )
        return rows

    # --- health: what gateways saw of each deployment's requests (wakegate/health.py) ------

    async def add_health(
        self, counts: Mapping[str, Mapping[int, Sequence[int]]], oldest: int, ttl_s: int
    ) -> None:
        """Add each deployment's counts per bucket (deployment -> bucket start -> counts, a
        dense row) to its health rows: one script per deployment (one slot each), in one
        round trip. A row of zeros is no write."""
        if not counts:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, rows in counts.items():
                k = keys_of(key)
                args: list[Any] = [oldest, ttl_s * 1000]
                for bucket, row in sorted(rows.items()):
                    sparse = {str(i): n for i, n in enumerate(row) if n}
                    if sparse:
                        args += [bucket, json.dumps(sparse, separators=(",", ":"))]
                if len(args) == 2:
                    continue
                await self._add_health(keys=[k.health, k.spec], args=args, client=pipe)
            await pipe.execute()

    async def health_row(self, key: str) -> HealthRow | None:
        """What a deployment's health view needs, in one round trip: what the scaler observes
        (`observe`), its load samples and its health rows; None when it is gone."""

        def reads(pipe: Pipeline, k: DeploymentKeys, now: int) -> None:
            _read_observed(pipe, k, now)
            pipe.lrange(k.history, 0, -1)
            pipe.hgetall(k.health)

        (replies,) = await self._read_each([key], reads)
        seen = _observed(key, replies[:-2])
        if seen.spec is None:
            return None
        history, rows = replies[-2:]
        return HealthRow(
            spec=seen.spec,
            replicas=seen.replicas,
            queued=seen.load.queued,
            in_flight=seen.load.in_flight,
            history=[json.loads(h) for h in history],
            rows={
                int(b): {int(i): int(n) for i, n in json.loads(r).items()} for b, r in rows.items()
            },
        )

    async def waiting(self, keys: Sequence[str]) -> list[dict[str, Any] | None]:
        """The capacity waits of these deployments (None where it does not wait)."""
        if not keys:
            return []
        raws = await self.redis.mget([keys_of(k).capacity for k in keys])
        return [json.loads(r) if r else None for r in raws]


@dataclass(frozen=True)
class Observed:
    """One deployment as the scaler reads it."""

    key: str
    spec: DeploymentSpec | None
    replicas: list[ReplicaRecord]
    load: Load
    waiting: dict[str, Any] | None  # the stored capacity wait, if any
    busy: dict[str, int] = field(default_factory=dict)  # requests in flight per replica


# A deployment's reads on a batched pipeline (`Store._read_each`), given its keys and now.
_Reads = Callable[[Pipeline, DeploymentKeys, int], None]


def _read_load(pipe: Pipeline, k: DeploymentKeys, now: int) -> None:
    """What `Load` and the requests in flight per replica are made of (`_load_of`)."""
    pipe.zcount(k.qlease, now, "+inf")
    pipe.zrangebyscore(k.inflight, now, "+inf")
    pipe.get(k.activity)
    pipe.hmget(k.counters, ["arrivals", "completions"])


def _load_of(replies: Sequence[Any]) -> tuple[Load, dict[str, int]]:
    """The replies to `_read_load`: the load, and the requests in flight per replica."""
    queued, slots, activity, (arrivals, completions) = replies
    load = Load(
        int(queued),
        len(slots),
        int(activity) if activity else None,
        int(arrivals or 0),
        int(completions or 0),
    )
    return load, _per_replica(slots)


def _per_replica(slots: Sequence[str]) -> dict[str, int]:
    """Held slots ("replica id|request id") counted by replica."""
    return dict(Counter(m.split("|", 1)[0] for m in slots))


def _read_observed(pipe: Pipeline, k: DeploymentKeys, now: int) -> None:
    """What `Observed` is made of (`_observed`)."""
    pipe.get(k.spec)
    pipe.hgetall(k.replicas)
    _read_load(pipe, k, now)
    pipe.get(k.capacity)


def _observed(key: str, replies: Sequence[Any]) -> Observed:
    """The replies to `_read_observed`."""
    spec, replicas, *load_replies, wait = replies
    load, busy = _load_of(load_replies)
    return Observed(
        key=key,
        spec=_spec_of(spec),
        replicas=[ReplicaRecord.from_json(v) for v in replicas.values()],
        load=load,
        waiting=json.loads(wait) if wait else None,
        busy=busy,
    )


def _spec_of(raw: str | bytes | None) -> DeploymentSpec | None:
    return DeploymentSpec.from_record(json.loads(raw)) if raw else None


@dataclass(frozen=True)
class SweepRow:
    key: str
    spec: DeploymentSpec | None
    replicas: int
    load: int  # queued and in flight


@dataclass(frozen=True)
class StatusRow:
    """One deployment as the status overview reads it (wakegate/status.py shapes it)."""

    spec: DeploymentSpec
    replicas: list[ReplicaRecord]
    queued: int
    in_flight: int
    waiting: dict[str, Any] | None
    decisions: list[dict[str, Any]]  # oldest first
    history: list[list[float]]  # oldest first
    events: list[dict[str, Any]]  # oldest first


@dataclass(frozen=True)
class HealthRow:
    """One deployment as its health view reads it (wakegate/health.py shapes it)."""

    spec: DeploymentSpec
    replicas: list[ReplicaRecord]
    queued: int
    in_flight: int
    history: list[list[float]]  # the scaler's load samples, oldest first
    rows: dict[int, dict[int, int]]  # bucket start (s) -> index in the row -> count (not 0)
