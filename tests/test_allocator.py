"""The capacity allocator's decisions (scaler/allocator.py): pure, so plain tables."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scaler.allocator import UNLIMITED, Allocation, Demand, allocate, static_caps
from scaler.plan import cancellable
from wakegate.store import ReplicaRecord

A10 = "a10_24gb"


def d(key: str, **kw: Any) -> Demand:
    """A deployment of one tenant (the part before '/'), on single A10s unless told."""
    return Demand(key=key, tenant=key.split("/")[0], sku=kw.pop("sku", A10),
                  units=kw.pop("units", 1), holding=kw.pop("holding", 0), **kw)  # fmt: skip


CASES: list[tuple[str, dict[str, int], list[Demand], dict[str, Any], Allocation]] = [
    (
        "room-for-everyone-starts-everything",
        {A10: 4},
        [d("a/x", need=2), d("b/y", need=1)],
        {},
        Allocation({"a/x": 2, "b/y": 1}),
    ),
    (
        "full-pool-waits-and-starts-nothing",
        {A10: 0},
        [d("a/x", need=1, cold=True)],
        {},
        Allocation({}, {}, {"a/x": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "absent-sku-counts-as-no-room",
        {},
        [d("a/x", need=1)],
        {},
        Allocation({}, {}, {"a/x": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "unlimited-cpu-always-fits",
        {"cpu": UNLIMITED},
        [d("a/x", sku="cpu", need=5)],
        {},
        Allocation({"a/x": 5}),
    ),
    (
        "guaranteed-within-its-grant-first-even-when-others-came-earlier",
        {A10: 2},
        [d("a/early", need=2, since=1.0), d("b/guaranteed", need=2, since=9.0, guaranteed=True)],
        {"grants": {"b": 2}},
        Allocation({"b/guaranteed": 2}, {}, {"a/early": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "guaranteed-without-a-grant-is-an-ordinary-deployment",
        {A10: 2},
        [d("a/early", need=2, since=1.0), d("b/guaranteed", need=2, since=9.0, guaranteed=True)],
        {},
        Allocation(
            {"a/early": 1, "b/guaranteed": 1},
            {},
            {k: "waiting for a free a10_24gb GPU" for k in ("a/early", "b/guaranteed")},
        ),
    ),
    (
        "beyond-its-grant-a-guaranteed-deployment-takes-its-fair-share",
        {A10: 4},
        [d("a/x", need=4), d("b/guaranteed", need=4, guaranteed=True)],
        {"grants": {"b": 1}},
        # b's granted GPU first, then one each in turn: 2 and 2.
        Allocation(
            {"a/x": 2, "b/guaranteed": 2},
            {},
            {k: "waiting for a free a10_24gb GPU" for k in ("a/x", "b/guaranteed")},
        ),
    ),
    (
        "a-grant-counts-the-gpus-a-guaranteed-deployment-already-runs",
        {A10: 2},
        [
            d("a/early", need=2, since=1.0),
            d("b/guaranteed", holding=2, need=2, since=9.0, guaranteed=True),
        ],
        {"grants": {"b": 2}},
        Allocation({"a/early": 2}, {}, {"b/guaranteed": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "an-unlimited-grant-covers-every-gpu",
        {A10: 3},
        [d("a/early", need=3, since=1.0), d("b/guaranteed", need=3, since=9.0, guaranteed=True)],
        {"grants": {"b": None}},
        Allocation({"b/guaranteed": 3}, {}, {"a/early": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "a-grant-too-small-for-one-replica-covers-nothing",
        {"a100_80gb": 2},
        [
            d("a/early", sku="a100_80gb", need=1, since=1.0),
            d("b/guaranteed", sku="a100_80gb", units=2, need=1, since=9.0, guaranteed=True),
        ],
        {"grants": {"b": 1}},
        Allocation({"a/early": 1}, {}, {"b/guaranteed": "waiting for a free a100_80gb GPU"}),
    ),
    (
        "cold-deployment-before-scaling-out-a-warm-one",
        {A10: 1},
        [d("a/warm", holding=1, need=3, since=1.0), d("b/cold", need=1, cold=True, since=5.0)],
        {},
        Allocation({"b/cold": 1}, {}, {"a/warm": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "each-cold-deployment-gets-one-before-any-gets-two",
        {A10: 3},
        [d("a/x", need=3, cold=True), d("b/y", need=3, cold=True), d("c/z", need=3, cold=True)],
        {},
        Allocation(
            {"a/x": 1, "b/y": 1, "c/z": 1},
            {},
            {k: "waiting for a free a10_24gb GPU" for k in ("a/x", "b/y", "c/z")},
        ),
    ),
    (
        "max-min-fairness-across-tenants-evens-out-holdings",
        {A10: 4},
        [d("a/x", holding=3, need=4), d("b/y", holding=1, need=4)],
        {},
        # b holds 1, a holds 3: b gets two to reach 3, then one each.
        Allocation(
            {"a/x": 1, "b/y": 3},
            {},
            {"a/x": "waiting for a free a10_24gb GPU", "b/y": "waiting for a free a10_24gb GPU"},
        ),
    ),
    (
        "fairness-is-across-tenants-first-then-their-deployments",
        {A10: 4},
        [d("a/x", need=3), d("a/y", need=3), d("b/z", need=3)],
        {},
        # Tenant b gets as much as tenant a in all, and a splits its part over its two.
        Allocation(
            {"a/x": 1, "a/y": 1, "b/z": 2},
            {},
            {k: "waiting for a free a10_24gb GPU" for k in ("a/x", "a/y", "b/z")},
        ),
    ),
    (
        "tenant-weight-buys-a-larger-share",
        {A10: 3},
        [d("a/x", need=3, weight=2.0), d("b/y", need=3)],
        {},
        Allocation(
            {"a/x": 2, "b/y": 1},
            {},
            {"a/x": "waiting for a free a10_24gb GPU", "b/y": "waiting for a free a10_24gb GPU"},
        ),
    ),
    (
        "idle-replica-in-cooldown-is-reclaimed-for-a-cold-deployment",
        {A10: 0},
        [d("a/idle", holding=1, reclaimable=("r1",)), d("b/cold", need=1, cold=True)],
        {},
        Allocation(
            {},
            {"a/idle": ("r1",)},
            {"b/cold": "waiting for a reclaimed a10_24gb GPU"},
        ),
    ),
    (
        "guaranteed-replicas-within-the-grant-are-never-reclaimed",
        {A10: 0},
        [
            d("a/guaranteed", holding=1, guaranteed=True, reclaimable=("r1",)),
            d("b/cold", need=1, cold=True),
        ],
        {"grants": {"a": 1}},
        Allocation({}, {}, {"b/cold": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "guaranteed-replicas-without-a-grant-are-reclaimed-like-any",
        {A10: 0},
        [
            d("a/guaranteed", holding=1, guaranteed=True, reclaimable=("r1",)),
            d("b/cold", need=1, cold=True),
        ],
        {},
        Allocation(
            {}, {"a/guaranteed": ("r1",)}, {"b/cold": "waiting for a reclaimed a10_24gb GPU"}
        ),
    ),
    (
        "replicas-beyond-a-lowered-grant-are-reclaimable",
        {A10: 0},
        [
            d("a/guaranteed", holding=3, guaranteed=True, reclaimable=("r1", "r2", "r3")),
            d("b/cold", need=1, cold=True),
            d("c/cold", need=1, cold=True),
            d("e/cold", need=1, cold=True),
        ],
        {"grants": {"a": 1}},
        Allocation(
            {},
            {"a/guaranteed": ("r1", "r2")},
            {
                "b/cold": "waiting for a reclaimed a10_24gb GPU",
                "c/cold": "waiting for a reclaimed a10_24gb GPU",
                "e/cold": "waiting for a free a10_24gb GPU",
            },
        ),
    ),
    (
        "a-grant-is-dealt-in-turn-over-a-tenants-guaranteed-deployments",
        {A10: 0},
        [
            d("a/g1", holding=2, guaranteed=True, reclaimable=("x1", "x2")),
            d("a/g2", holding=2, guaranteed=True, reclaimable=("y1", "y2")),
            d("b/cold", need=1, cold=True),
            d("c/cold", need=1, cold=True),
            d("e/cold", need=1, cold=True),
        ],
        {"grants": {"a": 2}},
        Allocation(
            {},
            {"a/g1": ("x1",), "a/g2": ("y1",)},
            {
                "b/cold": "waiting for a reclaimed a10_24gb GPU",
                "c/cold": "waiting for a reclaimed a10_24gb GPU",
                "e/cold": "waiting for a free a10_24gb GPU",
            },
        ),
    ),
    (
        "guaranteed-deployment-reclaims-idle-replicas-its-grant-covers",
        {A10: 0},
        [
            d("a/idle", holding=2, reclaimable=("r1", "r2")),
            d("b/guaranteed", need=2, guaranteed=True),
        ],
        {"grants": {"b": 2}},
        Allocation(
            {},
            {"a/idle": ("r1", "r2")},
            {"b/guaranteed": "waiting for a reclaimed a10_24gb GPU"},
        ),
    ),
    (
        "guaranteed-deployment-reclaims-no-more-than-its-grant",
        {A10: 0},
        [
            d("a/idle", holding=2, reclaimable=("r1", "r2")),
            d("b/guaranteed", need=2, guaranteed=True),
        ],
        {"grants": {"b": 1}},
        Allocation(
            {},
            {"a/idle": ("r1",)},
            {"b/guaranteed": "waiting for a reclaimed a10_24gb GPU"},
        ),
    ),
    (
        "guaranteed-deployment-without-a-grant-reclaims-nothing-for-a-warm-need",
        {A10: 0},
        [
            d("a/idle", holding=2, reclaimable=("r1", "r2")),
            d("b/guaranteed", need=2, guaranteed=True),
        ],
        {},
        Allocation({}, {}, {"b/guaranteed": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "warm-deployment-without-a-queue-does-not-reclaim",
        {A10: 0},
        [d("a/idle", holding=2, reclaimable=("r1", "r2")), d("b/busy", holding=1, need=1)],
        {},
        Allocation({}, {}, {"b/busy": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "warm-deployment-with-a-queue-reclaims-from-a-richer-tenant",
        {A10: 0},
        [
            d("a/idle", holding=3, reclaimable=("r1", "r2", "r3")),
            d("b/queue", holding=1, need=2, queued=40),
        ],
        {},
        Allocation(
            {},
            {"a/idle": ("r1", "r2")},
            {"b/queue": "waiting for a reclaimed a10_24gb GPU"},
        ),
    ),
    (
        "warm-deployment-with-a-queue-never-reclaims-from-a-poorer-tenant",
        {A10: 0},
        [
            d("a/idle", holding=1, reclaimable=("r1",)),
            d("b/queue", holding=3, need=1, queued=40),
        ],
        {},
        Allocation({}, {}, {"b/queue": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "warm-deployment-with-a-queue-reclaims-its-own-tenants-idle-replica",
        {A10: 0},
        [
            d("a/idle", holding=1, reclaimable=("r1",)),
            d("a/queue", holding=3, need=1, queued=40),
        ],
        {},
        Allocation(
            {},
            {"a/idle": ("r1",)},
            {"a/queue": "waiting for a reclaimed a10_24gb GPU"},
        ),
    ),
    (
        "a-cold-deployment-reclaims-before-a-warm-one-with-a-queue",
        {A10: 0},
        [
            # Only one of a's replicas is idle long enough; b could take it (a holds more).
            d("a/idle", holding=2, reclaimable=("r1",)),
            d("b/queue", holding=1, need=1, queued=40, since=1.0),
            d("c/cold", need=1, cold=True, queued=1, since=9.0),
        ],
        {},
        Allocation(
            {},
            {"a/idle": ("r1",)},
            {
                "b/queue": "waiting for a free a10_24gb GPU",
                "c/cold": "waiting for a reclaimed a10_24gb GPU",
            },
        ),
    ),
    (
        "reclaims-only-as-much-as-the-cold-start-needs",
        {A10: 0},
        [d("a/idle", holding=3, reclaimable=("r1", "r2", "r3")), d("b/cold", need=3, cold=True)],
        {},
        Allocation(
            {},
            {"a/idle": ("r1",)},
            {"b/cold": "waiting for a reclaimed a10_24gb GPU"},
        ),
    ),
    (
        "a-replica-already-draining-is-reclaimed-room-enough",
        {A10: 0},
        [
            d("a/idle", holding=2, draining=1, reclaimable=("r2",)),
            d("b/cold", need=1, cold=True),
        ],
        {},
        Allocation(
            {},
            {},
            {"b/cold": "waiting for a reclaimed a10_24gb GPU"},
        ),
    ),
    (
        "reclaim-takes-from-the-tenant-holding-the-most",
        {A10: 0},
        [
            d("a/small", holding=1, reclaimable=("a1",)),
            d("b/big", holding=3, reclaimable=("b1", "b2", "b3")),
            d("c/cold", need=1, cold=True),
        ],
        {},
        Allocation(
            {},
            {"b/big": ("b1",)},
            {"c/cold": "waiting for a reclaimed a10_24gb GPU"},
        ),
    ),
    (
        "reclaim-of-another-sku-frees-nothing",
        {A10: 0, "l4_24gb": 0},
        [
            d("a/idle", sku="l4_24gb", holding=1, reclaimable=("r1",)),
            d("b/cold", need=1, cold=True),
        ],
        {},
        Allocation({}, {}, {"b/cold": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "multi-gpu-replica-reclaims-enough-units",
        {A10: 1},
        [
            d("a/idle", holding=2, reclaimable=("r1", "r2")),
            d("b/cold", units=4, need=1, cold=True),
        ],
        {},
        # 1 free + 2 reclaimed is still short of 4: reclaim both, the rest frees later.
        Allocation(
            {},
            {"a/idle": ("r1", "r2")},
            {"b/cold": "waiting for a reclaimed a10_24gb GPU"},
        ),
    ),
    (
        "cold-deployment-drains-a-serving-replica-of-a-tenant-above-its-fair-share",
        {A10: 0},
        [d("a/big", holding=4, drainable=("a2", "a3", "a4")), d("b/cold", need=1, cold=True)],
        {},
        # Fair shares of 4 GPUs between a and b: 2 each. a keeps 3, b gets the one drained.
        Allocation(
            {},
            {"a/big": ("a2",)},
            {"b/cold": "waiting for a reclaimed a10_24gb GPU"},
        ),
    ),
    (
        "idle-replicas-go-before-serving-ones",
        {A10: 0},
        [
            d("a/big", holding=3, drainable=("a2", "a3")),
            d("c/idle", holding=1, reclaimable=("c1",)),
            d("b/cold", need=1, cold=True),
        ],
        {},
        Allocation(
            {},
            {"c/idle": ("c1",)},
            {"b/cold": "waiting for a reclaimed a10_24gb GPU"},
        ),
    ),
    (
        "no-drain-that-leaves-the-victim-below-its-fair-share",
        {A10: 0},
        [
            d("a/x", holding=2, drainable=("a2",)),
            d("b/y", holding=2),
            d("c/cold", need=1, cold=True),
        ],
        {},
        # 4 GPUs over 3 tenants: 1.33 each; a would keep 1.
        Allocation({}, {}, {"c/cold": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "no-drain-for-a-tenant-already-at-its-fair-share",
        {A10: 0},
        [
            d("a/big", holding=3, drainable=("a2", "a3")),
            d("c/other", holding=3),
            d("c/cold", need=1, cold=True),
        ],
        {},
        Allocation({}, {}, {"c/cold": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "cold-deployment-of-a-below-share-tenant-cancels-a-starting-replica",
        {A10: 0},
        [d("a/big", holding=4, cancellable=("a4", "a3")), d("b/cold", need=1, cold=True)],
        {},
        # Fair shares of 4 GPUs between a and b: 2 each. a's newest start is cancelled.
        Allocation(
            {},
            {"a/big": ("a4",)},
            {"b/cold": "waiting for a reclaimed a10_24gb GPU"},
        ),
    ),
    (
        "no-cancel-for-a-tenant-already-at-its-fair-share",
        {A10: 0},
        [
            d("a/big", holding=2, cancellable=("a2",)),
            d("c/other", holding=2),
            d("c/cold", need=1, cold=True),
        ],
        {},
        Allocation({}, {}, {"c/cold": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "no-cancel-that-leaves-the-victim-below-its-fair-share",
        {A10: 0},
        [
            d("a/x", holding=2, cancellable=("a2",)),
            d("b/y", holding=2),
            d("c/cold", need=1, cold=True),
        ],
        {},
        # 4 GPUs over 3 tenants: 1.33 each; a would keep 1.
        Allocation({}, {}, {"c/cold": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "a-guaranteed-deployments-start-within-its-grant-is-never-cancelled",
        {A10: 0},
        [
            d("a/guaranteed", holding=4, guaranteed=True, cancellable=("a4",)),
            d("b/cold", need=1, cold=True),
        ],
        {"grants": {"a": 4}},
        Allocation({}, {}, {"b/cold": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "a-guaranteed-deployments-start-beyond-its-grant-is-cancelled",
        {A10: 0},
        [
            d("a/guaranteed", holding=4, guaranteed=True, cancellable=("a4",)),
            d("b/cold", need=1, cold=True),
        ],
        {"grants": {"a": 3}},
        Allocation(
            {}, {"a/guaranteed": ("a4",)}, {"b/cold": "waiting for a reclaimed a10_24gb GPU"}
        ),
    ),
    (
        "a-warm-deployment-with-a-queue-never-cancels-a-start",
        {A10: 0},
        [d("a/big", holding=4, cancellable=("a4",)), d("b/queue", holding=1, need=2, queued=9)],
        {},
        Allocation({}, {}, {"b/queue": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "idle-replicas-go-before-starting-ones",
        {A10: 0},
        [
            d("a/big", holding=3, cancellable=("a3",)),
            d("c/idle", holding=1, reclaimable=("c1",)),
            d("b/cold", need=1, cold=True),
        ],
        {},
        Allocation(
            {},
            {"c/idle": ("c1",)},
            {"b/cold": "waiting for a reclaimed a10_24gb GPU"},
        ),
    ),
    (
        "prefers-cancelling-a-starting-replica-over-draining-a-serving-one",
        {A10: 0},
        [
            d("a/big", holding=4, cancellable=("a4",), drainable=("a1", "a2")),
            d("b/cold", need=1, cold=True),
        ],
        {},
        Allocation(
            {},
            {"a/big": ("a4",)},
            {"b/cold": "waiting for a reclaimed a10_24gb GPU"},
        ),
    ),
    (
        "any-tenants-starting-replica-goes-before-a-serving-one",
        {A10: 0},
        [
            # a and c are as far above their share (8 GPUs over 3 tenants: 2.67 each);
            # c's start goes, not a's serving replica (a comes first by name).
            d("a/big", holding=4, drainable=("a1", "a2")),
            d("c/big", holding=4, cancellable=("c4",)),
            d("b/cold", need=1, cold=True),
        ],
        {},
        Allocation(
            {},
            {"c/big": ("c4",)},
            {"b/cold": "waiting for a reclaimed a10_24gb GPU"},
        ),
    ),
    (
        "a-serving-replica-is-drained-once-no-start-qualifies",
        {A10: 0},
        [
            # 2 of 4 units each: c would fall below its share without its start; a stays.
            d("a/big", holding=3, drainable=("a1", "a2")),
            d("c/small", holding=1, cancellable=("c1",)),
            d("b/cold", need=1, cold=True),
        ],
        {},
        Allocation(
            {},
            {"a/big": ("a1",)},
            {"b/cold": "waiting for a reclaimed a10_24gb GPU"},
        ),
    ),
    (
        "warm-deployment-never-drains-serving-replicas",
        {A10: 0},
        [d("a/big", holding=4, drainable=("a2", "a3")), d("b/queue", holding=1, need=2, queued=9)],
        {},
        Allocation({}, {}, {"b/queue": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "gpu-quota-makes-a-deployment-wait-with-room-in-the-pool",
        {A10: 8},
        [d("a/x", holding=2, need=2), d("b/y", need=1)],
        {"gpu_quota": {"a": 3}},
        Allocation(
            {"a/x": 1, "b/y": 1},
            {},
            {"a/x": "tenant GPU quota reached (maxGpusPerTenant=3)"},
        ),
    ),
    (
        "gpu-quota-counts-every-sku-of-the-tenant",
        {A10: 8, "l4_24gb": 8},
        [d("a/x", holding=2), d("a/y", sku="l4_24gb", need=1)],
        {"gpu_quota": {"a": 2}},
        Allocation({}, {}, {"a/y": "tenant GPU quota reached (maxGpusPerTenant=2)"}),
    ),
    (
        "cpu-replicas-count-no-gpus-against-the-quota",
        {"cpu": 10},
        [d("a/x", sku="cpu", holding=4, need=2)],
        {"gpu_quota": {"a": 0}},
        Allocation({"a/x": 2}),
    ),
    (
        "quota-blocked-deployment-does-not-reclaim",
        {A10: 0},
        [d("a/idle", holding=1, reclaimable=("r1",)), d("b/cold", need=1, cold=True)],
        {"gpu_quota": {"b": 0}},
        Allocation({}, {}, {"b/cold": "tenant GPU quota reached (maxGpusPerTenant=0)"}),
    ),
    (
        "min-replicas-beyond-the-grant-give-way-to-a-poorer-tenants-cold-deployment",
        {A10: 0},
        [d("a/pin", holding=4, floor=("p1", "p2", "p3", "p4")), d("b/cold", need=1, cold=True)],
        {},
        Allocation({}, {"a/pin": ("p1",)}, {"b/cold": "waiting for a reclaimed a10_24gb GPU"}),
    ),
    (
        "min-replicas-within-the-grant-stay",
        {A10: 0},
        [d("a/pin", holding=4, floor=("p1", "p2", "p3", "p4")), d("b/cold", need=1, cold=True)],
        {"grants": {"a": 4}},
        Allocation({}, {}, {"b/cold": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "a-grant-keeps-as-many-min-replicas-as-it-covers",
        {A10: 0},
        [
            d("a/pin", holding=4, floor=("p1", "p2", "p3", "p4")),
            d("b/cold", need=1, cold=True),
            d("c/cold", need=1, cold=True),
        ],
        {"grants": {"a": 3}},
        Allocation(
            {},
            {"a/pin": ("p1",)},
            {
                "b/cold": "waiting for a reclaimed a10_24gb GPU",
                "c/cold": "waiting for a free a10_24gb GPU",
            },
        ),
    ),
    (
        "a-guaranteed-deployment-leaves-the-rest-of-the-grant-to-min-replicas",
        {A10: 0},
        [
            d("a/g", holding=1, guaranteed=True),
            d("a/pin", holding=3, floor=("p1", "p2", "p3")),
            d("b/cold", need=1, cold=True),
        ],
        {"grants": {"a": 3}},
        Allocation({}, {"a/pin": ("p1",)}, {"b/cold": "waiting for a reclaimed a10_24gb GPU"}),
    ),
    (
        "min-replicas-of-a-tenant-within-its-fair-share-stay",
        {A10: 0},
        [
            d("a/pin", holding=2, floor=("p1", "p2")),
            d("e/x", holding=2),
            d("b/cold", need=1, cold=True),
        ],
        {},
        # 4 GPUs over 3 tenants: 1.33 each; a would keep 1.
        Allocation({}, {}, {"b/cold": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "a-start-above-min-replicas-goes-before-a-min-replica",
        {A10: 0},
        [d("a/x", holding=4, cancellable=("s1",), floor=("f1",)), d("b/cold", need=1, cold=True)],
        {},
        Allocation({}, {"a/x": ("s1",)}, {"b/cold": "waiting for a reclaimed a10_24gb GPU"}),
    ),
    (
        "tenant-replica-quota-counts-cpu-replicas",
        {"cpu": UNLIMITED},
        [d("a/x", sku="cpu", holding=2, need=5), d("a/y", sku="cpu", need=1)],
        {"replica_quota": {"a": 4}},
        Allocation(
            {"a/x": 1, "a/y": 1},
            {},
            {"a/x": "tenant replica quota reached (maxReplicasPerTenant=4)"},
        ),
    ),
    (
        "tenant-replica-quota-is-per-tenant",
        {A10: 4},
        [d("a/x", need=3), d("b/y", need=3)],
        {"replica_quota": {"a": 1}},
        Allocation(
            {"a/x": 1, "b/y": 3},
            {},
            {"a/x": "tenant replica quota reached (maxReplicasPerTenant=1)"},
        ),
    ),
    (
        "fcfs-serves-in-arrival-order-without-priorities",
        {A10: 2},
        [
            d("a/first", need=2, since=1.0),
            d("b/guaranteed", need=2, since=2.0, guaranteed=True),
            d("c/cold", need=1, since=3.0, cold=True),
        ],
        {"mode": "fcfs"},
        Allocation(
            {"a/first": 2},
            {},
            {
                "b/guaranteed": "waiting for a free a10_24gb GPU",
                "c/cold": "waiting for a free a10_24gb GPU",
            },
        ),
    ),
    (
        "fcfs-never-reclaims",
        {A10: 0},
        [d("a/idle", holding=1, reclaimable=("r1",)), d("b/cold", need=1, cold=True)],
        {"mode": "fcfs"},
        Allocation({}, {}, {"b/cold": "waiting for a free a10_24gb GPU"}),
    ),
    (
        "static-share-caps-a-deployment-with-room-left",
        {A10: 4},
        [d("a/x", holding=2, need=2), d("b/y", need=1)],
        {"mode": "static", "caps": {"a/x": 2, "b/y": 2}},
        Allocation({"b/y": 1}, {}, {"a/x": "at its share of the pool (2 replica(s))"}),
    ),
]


@pytest.mark.parametrize(
    ("free", "demands", "options", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_allocation(
    free: dict[str, int], demands: list[Demand], options: dict[str, Any], expected: Allocation
) -> None:
    assert allocate(free, demands, **options) == expected


def test_a_reclaimed_deployment_is_not_started_again_by_the_next_pass() -> None:
    victim = d("a/idle", holding=1, reclaimable=("r1",))
    cold = d("b/cold", need=1, cold=True)
    first = allocate({A10: 0}, [victim, cold])
    assert first.reclaims == {"a/idle": ("r1",)}
    # Next pass: the victim's replica has stopped and its policy, with no load, wants none;
    # the GPU is free and goes to the cold deployment, not back to the victim.
    after = allocate({A10: 1}, [replace(victim, holding=0, reclaimable=()), cold])
    assert after == Allocation({"b/cold": 1})


def test_a_replica_started_for_a_reclaim_is_not_reclaimed_back_while_it_serves() -> None:
    # The beneficiary now has its replica and requests in flight: nothing of it is
    # reclaimable, so a request to the victim waits instead of taking it back.
    served = d("b/cold", holding=1)
    victim_again = d("a/idle", need=1, cold=True)
    assert allocate({A10: 0}, [served, victim_again]).reclaims == {}


def test_a_cancelled_deployment_is_not_started_again_by_the_next_pass() -> None:
    victim = d("a/big", holding=4, queued=6, cancellable=("a4", "a3"))
    cold = d("b/cold", need=1, cold=True, queued=1)
    first = allocate({A10: 0}, [victim, cold])
    assert first.reclaims == {"a/big": ("a4",)}
    # Next pass: the cancelled replica is on its way out (still held, draining) and the
    # victim's policy wants it back; the room it frees is for the cold deployment.
    after = replace(victim, need=1, draining=1, cancellable=("a3",))
    assert allocate({A10: 0}, [after, cold]) == Allocation(
        {},
        {},
        {
            "a/big": "waiting for a free a10_24gb GPU",
            "b/cold": "waiting for a reclaimed a10_24gb GPU",
        },
    )
    # Once stopped, its GPU is free: the cold deployment gets it, the victim waits.
    stopped = replace(after, holding=3, draining=0)
    assert allocate({A10: 1}, [stopped, cold]) == Allocation(
        {"b/cold": 1}, {}, {"a/big": "waiting for a free a10_24gb GPU"}
    )
    # And the start given to the cold deployment is not cancelled back for the victim: b
    # is at its share (2 of 4), its deployment has requests queued and one replica.
    started = replace(cold, holding=1, need=0, cold=False)
    again = allocate({A10: 0}, [replace(stopped, cold=False), started])
    assert again.reclaims == {}


def starting(rid: str, age_s: float) -> ReplicaRecord:
    return ReplicaRecord(
        id=rid, deployment="a/x", revision=1, state="starting", url="", dialect="openai",
        concurrency=4, backend="sim", created_at=1_000.0 - age_s,
    )  # fmt: skip


def test_a_start_below_min_replicas_is_never_cancelled() -> None:
    active = [starting("s1", 20), starting("s2", 10)]
    floor = cancellable(active, idle=(), queued=0, min_replicas=2)
    assert floor == ()
    victim = d("a/x", holding=2, cancellable=floor)
    others = [d("a/other", holding=2), d("b/cold", need=1, cold=True)]
    assert allocate({A10: 0}, [victim, *others]).reclaims == {}
    # One above the floor may go, the newest.
    one = cancellable(active, idle=(), queued=0, min_replicas=1)
    assert allocate({A10: 0}, [replace(victim, cancellable=one), *others]).reclaims == {
        "a/x": ("s2",)
    }


def test_the_only_replica_of_a_deployment_with_queued_requests_is_never_cancelled() -> None:
    only = cancellable([starting("s1", 5)], idle=(), queued=3, min_replicas=0)
    assert only == ()
    victims = [d("a/x", holding=1, queued=3, cancellable=only), d("a/y", holding=2)]
    assert allocate({A10: 0}, [*victims, d("b/cold", need=1, cold=True)]).reclaims == {}


@pytest.mark.parametrize(
    ("total", "keys", "expected"),
    [
        ({A10: 6}, ["a/x", "b/y", "c/z", "d/w"], {"a/x": 2, "b/y": 2, "c/z": 1, "d/w": 1}),
        ({A10: 2}, ["a/x", "b/y", "c/z"], {"a/x": 1, "b/y": 1, "c/z": 0}),
        ({"cpu": UNLIMITED}, ["a/x"], {}),
    ],
    ids=["remainder-to-the-first-by-name", "more-deployments-than-gpus", "unlimited-has-no-cap"],
)
def test_static_caps(total: dict[str, int], keys: list[str], expected: dict[str, int]) -> None:
    sku = next(iter(total))
    assert static_caps(total, [d(k, sku=sku) for k in keys]) == expected


demand_lists = st.lists(
    st.builds(
        Demand,
        key=st.sampled_from([f"{t}/{n}" for t in "abc" for n in "xyz"]),
        tenant=st.just(""),
        sku=st.sampled_from([A10, "l4_24gb"]),
        units=st.integers(1, 4),
        holding=st.integers(0, 4),
        need=st.integers(0, 5),
        cold=st.booleans(),
        queued=st.integers(0, 3),
        draining=st.just(0),
        guaranteed=st.booleans(),
        reclaimable=st.lists(st.sampled_from(["r1", "r2", "r3"]), unique=True).map(tuple),
        cancellable=st.lists(st.sampled_from(["c1", "c2"]), unique=True).map(tuple),
        drainable=st.lists(st.sampled_from(["s1", "s2"]), unique=True).map(tuple),
        floor=st.lists(st.sampled_from(["f1", "f2"]), unique=True).map(tuple),
        weight=st.sampled_from([0.5, 1.0, 2.0]),
    ),
    unique_by=lambda x: x.key,
    max_size=8,
).map(lambda ds: [replace(x, tenant=x.key.split("/")[0]) for x in ds])


@given(
    demands=demand_lists,
    free=st.fixed_dictionaries({A10: st.integers(0, 8), "l4_24gb": st.integers(0, 8)}),
    mode=st.sampled_from(["fair", "fcfs"]),
    quota=st.one_of(st.none(), st.integers(0, 8)),
    grant=st.one_of(st.none(), st.integers(0, 8)),
)
def test_never_starts_beyond_room_need_or_quota(
    demands: list[Demand], free: dict[str, int], mode: Any, quota: int | None, grant: int | None
) -> None:
    quotas = {t: quota for t in "abc"}
    grants = {t: grant for t in "abc"}
    out = allocate(free, demands, mode=mode, gpu_quota=quotas, grants=grants)
    by_key = {x.key: x for x in demands}
    for sku, room in free.items():
        used = sum(n * by_key[k].units for k, n in out.starts.items() if by_key[k].sku == sku)
        assert used <= room
    for k, n in out.starts.items():
        assert 0 < n <= by_key[k].need
    for tenant in "abc":
        held = sum(x.holding * x.units for x in demands if x.tenant == tenant)
        added = sum(
            n * by_key[k].units for k, n in out.starts.items() if by_key[k].tenant == tenant
        )
        if quota is not None and added:
            assert held + added <= quota
    for victim, rids in out.reclaims.items():
        # An unlimited grant keeps every replica of a guaranteed deployment.
        assert grant is not None or not by_key[victim].guaranteed
        assert len(rids) <= by_key[victim].holding - by_key[victim].draining
        assert set(rids) <= (
            set(by_key[victim].reclaimable)
            | set(by_key[victim].cancellable)
            | set(by_key[victim].drainable)
            | set(by_key[victim].floor)
        )
        assert victim not in out.starts
    for x in demands:
        assert (x.key in out.waiting) == (out.starts.get(x.key, 0) < x.need)
