"""The pure steps between a decision and the actuator (scaler/plan.py): tables."""

from __future__ import annotations

from typing import Any

import pytest

from scaler.plan import (
    MAX_START_FAILURES,
    Backoff,
    cancellable,
    drainable,
    plan_replicas,
    reclaimable,
)
from wakegate.store import ReplicaRecord

NOW = 1_000.0


def rep(
    rid: str, state: str = "ready", revision: int = 1, ready_s_ago: float = 600
) -> ReplicaRecord:
    return ReplicaRecord(
        id=rid,
        deployment="acme/x",
        revision=revision,
        state=state,
        url="http://127.0.0.1:1",
        dialect="openai",
        concurrency=4,
        backend="sim",
        created_at=NOW - ready_s_ago - 1,
        ready_at=NOW - ready_s_ago if state == "ready" else None,
    )


RECLAIMABLE: list[tuple[str, list[ReplicaRecord], dict[str, Any], tuple[str, ...]]] = [
    (
        "idle-deployment-gives-every-replica-oldest-first",
        [rep("new", ready_s_ago=100), rep("old", ready_s_ago=900)],
        {},
        ("old", "new"),
    ),
    ("queued-or-in-flight-requests-keep-every-replica", [rep("a"), rep("b")], {"load": 1}, ()),
    (
        "a-serving-deployment-between-requests-keeps-its-replicas",
        [rep("a"), rep("b")],
        {"idle_s": 2.0, "grace_s": 30.0},
        (),
    ),
    ("never-any-request-counts-as-idle", [rep("a")], {"idle_s": None, "grace_s": 30.0}, ("a",)),
    (
        "min-replicas-are-the-owners-floor",
        [rep("a", ready_s_ago=900), rep("b", ready_s_ago=100)],
        {"min_replicas": 1},
        ("a",),
    ),
    (
        "replica-inside-its-grace-time-is-kept",
        [rep("fresh", ready_s_ago=5), rep("old")],
        {"grace_s": 30},
        ("old",),
    ),
    ("starting-replica-is-not-idle-capacity", [rep("booting", state="starting")], {}, ()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("active", "options", "expected"),
    [c[1:] for c in RECLAIMABLE],
    ids=[c[0] for c in RECLAIMABLE],
)
def test_reclaimable(
    active: list[ReplicaRecord], options: dict[str, Any], expected: tuple[str, ...]
) -> None:
    args: dict[str, Any] = {
        "load": 0,
        "idle_s": 600.0,
        "min_replicas": 0,
        "now": NOW,
        "grace_s": 0.0,
    }
    assert reclaimable(active, **{**args, **options}) == expected


DRAINABLE: list[tuple[str, list[ReplicaRecord], dict[str, Any], tuple[str, ...]]] = [
    (
        "least-busy-first-and-never-the-last-replica",
        [rep("a"), rep("b"), rep("c")],
        {"busy": {"a": 1, "b": 5, "c": 3}},
        ("a", "c"),
    ),
    ("a-single-replica-is-never-drained", [rep("a")], {}, ()),
    ("min-replicas-stay", [rep("a"), rep("b"), rep("c")], {"min_replicas": 2}, ("a",)),
    ("idle-ones-count-against-the-spare", [rep("a"), rep("b"), rep("c")], {"idle": ("c",)}, ("a",)),
    ("young-replica-is-kept", [rep("a"), rep("b", ready_s_ago=5)], {"grace_s": 30}, ("a",)),
    ("cancellable-starts-count-against-the-spare",
     [rep("a"), rep("b"), rep("s", state="starting")], {"cancellable": ("s",)}, ("a",)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("active", "options", "expected"),
    [c[1:] for c in DRAINABLE],
    ids=[c[0] for c in DRAINABLE],
)
def test_drainable(
    active: list[ReplicaRecord], options: dict[str, Any], expected: tuple[str, ...]
) -> None:
    args: dict[str, Any] = {
        "idle": (),
        "busy": {},
        "min_replicas": 0,
        "now": NOW,
        "grace_s": 0.0,
    }
    assert drainable(active, **{**args, **options}) == expected


def booting(rid: str, age_s: float) -> ReplicaRecord:
    return rep(rid, state="starting", ready_s_ago=age_s)


CANCELLABLE: list[tuple[str, list[ReplicaRecord], dict[str, Any], tuple[str, ...]]] = [
    ("newest-start-first-and-never-the-only-one-while-queued",
     [booting("old", 50), booting("new", 5), booting("mid", 20)], {"queued": 2},
     ("new", "mid")),
    ("the-only-replica-of-a-queued-deployment-stays", [booting("s", 5)], {"queued": 1}, ()),
    ("an-only-start-with-nothing-queued-may-go", [booting("s", 5)], {}, ("s",)),
    ("a-ready-replica-is-the-one-kept", [rep("a"), booting("s", 5)], {"queued": 1}, ("s",)),
    ("min-replicas-stay", [booting("a", 30), booting("b", 20), booting("c", 10)],
     {"min_replicas": 2}, ("c",)),
    ("idle-ones-count-against-the-spare", [rep("a"), booting("s", 5)],
     {"idle": ("a",), "min_replicas": 1}, ()),
    ("ready-replicas-are-not-cancellable", [rep("a"), rep("b")], {}, ()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("active", "options", "expected"),
    [c[1:] for c in CANCELLABLE],
    ids=[c[0] for c in CANCELLABLE],
)
def test_cancellable(
    active: list[ReplicaRecord], options: dict[str, Any], expected: tuple[str, ...]
) -> None:
    args: dict[str, Any] = {"idle": (), "queued": 0, "min_replicas": 0}
    assert cancellable(active, **{**args, **options}) == expected


PLANS: list[tuple[str, list[ReplicaRecord], int, int, tuple[int, list[str], bool]]] = [
    ("scale-up-starts-the-difference", [rep("a")], 1, 3, (2, [], True)),
    ("scale-down-drains-the-surplus", [rep("a"), rep("b", state="starting")], 1, 1,
     (0, ["b"], True)),
    ("rollout-surges-one-new-replica", [rep("old")], 2, 1, (1, [], False)),
    ("rollout-retires-old-once-new-is-ready", [rep("old"), rep("new", revision=2)], 2, 1,
     (0, ["old"], True)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("active", "revision", "desired", "expected"),
    [c[1:] for c in PLANS],
    ids=[c[0] for c in PLANS],
)
def test_plan_replicas(
    active: list[ReplicaRecord],
    revision: int,
    desired: int,
    expected: tuple[int, list[str], bool],
) -> None:
    plan = plan_replicas(active, revision, desired, {})
    assert (plan.to_start, [r.id for r in plan.victims], plan.rollout_done) == expected


def test_backoff_doubles_then_marks_the_revision_failed_and_an_update_starts_afresh() -> None:
    backoff = Backoff()
    delays = []
    for i in range(MAX_START_FAILURES):
        backoff = backoff.after_failure(NOW, revision=4)
        delays.append(backoff.retry_at - NOW)
        assert backoff.holds(NOW) and not backoff.holds(backoff.retry_at)
        assert backoff.exhausted == (i == MAX_START_FAILURES - 1)
    assert delays == [2.0, 4.0, 8.0]
    assert backoff.failed_revision == 4
    assert backoff.for_revision(4) == backoff  # the same spec: still failed
    assert backoff.for_revision(5) == Backoff()  # an update gets attempts of its own
