"""The sim host's GPU pool: GPUs per SKU, taken and given back by replicas, and the lease
each replica holds them by (scaler/sim/host.py reports them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wakegate.catalog import ACCELERATORS, SKUS, pool_units


class PoolError(Exception):
    """The pool cannot give a replica the GPUs it needs."""


def parse_pool(text: str) -> dict[str, int]:
    """`"cpu=1000,a10_24gb=64,a100_80gb_100=8"` -> GPUs (cpu: replica slots) per SKU."""
    pool: dict[str, int] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, raw = part.partition("=")
        key = key.strip()
        sku = ACCELERATORS[key].sku if key in ACCELERATORS else key
        if not sep or sku not in SKUS:
            raise ValueError(f"pool entry {part!r}: want <sku>=<count>, sku one of {sorted(SKUS)}")
        count = int(raw)
        if count < 0:
            raise ValueError(f"pool entry {part!r}: count must be >= 0")
        pool[sku] = pool.get(sku, 0) + count
    return pool


class Pool:
    def __init__(self, capacity: dict[str, int]) -> None:
        self.total = dict(capacity)
        self.free = dict(capacity)

    @staticmethod
    def demand(accelerator: str) -> tuple[str, int, int]:
        """(sku, pool units taken, GPUs) for one replica on `accelerator`."""
        acc = ACCELERATORS.get(accelerator)
        if acc is None:
            raise PoolError(f"unknown accelerator {accelerator!r}; known: {sorted(ACCELERATORS)}")
        sku, units = pool_units(accelerator)
        return sku, units, acc.gpu_count

    def take(self, accelerator: str) -> tuple[str, int, int]:
        sku, units, gpus = self.demand(accelerator)
        free = self.free.get(sku, 0)
        if free < units:
            what = "cpu slot(s)" if sku == "cpu" else f"{sku} GPU(s)"
            raise PoolError(
                f"GPU pool exhausted: accelerator {accelerator} needs {units} {what}, "
                f"{free} of {self.total.get(sku, 0)} free"
            )
        self.free[sku] = free - units
        return sku, units, gpus

    def give(self, sku: str, units: int) -> None:
        self.free[sku] = min(self.total.get(sku, 0), self.free.get(sku, 0) + units)

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {
            sku: {"total": total, "free": self.free[sku], "used": total - self.free[sku]}
            for sku, total in sorted(self.total.items())
        }


@dataclass
class Lease:
    """GPUs held by one replica, from acquisition to release (wall-clock seconds), and when
    the create request that asked for them was received (`requested_at`, before the
    acquisition delay; None for a lease made outside a request)."""

    replica_id: str
    deployment: str
    accelerator: str
    sku: str
    units: int
    gpus: int
    acquired_at: float
    released_at: float | None = None
    requested_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "replica_id": self.replica_id,
            "deployment": self.deployment,
            "accelerator": self.accelerator,
            "gpus": self.gpus,
            "requested_at": self.requested_at,
            "acquired_at": self.acquired_at,
            "released_at": self.released_at,
        }

    def gpu_seconds(self, now: float) -> float:
        return self.gpus * ((self.released_at or now) - self.acquired_at)
