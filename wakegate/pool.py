"""The pool's accelerators as the scaler last reported them, and what a deployment whose
accelerator the pool does not have at all is told.

The scaler (the leader) asks its backend what it can start (`free_accelerators()`: every SKU
the pool has, 0 when all of it is busy) every few seconds and stores a `PoolReport` in Redis
(wakegate/store.py `put_pool`) with a short expiry. Gateways read it (cached for a moment)
to refuse a create or update that needs a SKU the pool lacks, to fail such a deployment's
requests at once instead of queueing them until they time out, and to list the pool
(`GET /v2/accelerators`, `wakegate accelerators`). "Has, but busy" is a SKU in the report
with nothing free: its requests queue as before. No report (no scaler yet, or one gone for
longer than the expiry) and an incomplete one (a cluster autoscaler may add nodes; a backend
that could not list them) refuse nothing.

Which SKU a replica takes is the backend's answer (`Backend.takes`): usually its
accelerator's, but the local backend on a host without GPUs runs CPU engines (llama.cpp,
sim) on CPU replica slots whatever the accelerator. The report carries those engines
(`cpu_engines`), so the gateway reaches the backend's answer without asking it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from wakegate.catalog import ACCELERATORS, MODELS, pool_units

UNLIMITED = -1  # a count a backend does not limit (cpu on some backends)
CPU = "cpu"
SIM = "sim"  # the simulated engine, and the backend that runs it
# Engines that run on a CPU as well as on GPUs; the others need the GPUs they ask for.
CPU_ENGINES = frozenset({"llamacpp", SIM})
# How often the scaler reports, and how long a report says anything: a scaler gone for longer
# leaves the pool unknown, and nothing is refused on its word.
REPORT_EVERY_S = 5.0
REPORT_TTL_S = 30.0


@dataclass(frozen=True)
class SkuCount:
    """One SKU of the pool: GPUs (cpu: replica slots) in all and free now; -1: unlimited.
    `total` is what is free plus what wakegate's replicas hold (units held by processes
    outside wakegate are in neither)."""

    total: int
    free: int


@dataclass(frozen=True)
class PoolReport:
    backend: str
    at: float  # when the scaler made it (epoch seconds)
    skus: Mapping[str, SkuCount]
    # Engines the backend runs on CPU slots whatever the deployment's accelerator.
    cpu_engines: frozenset[str] = frozenset()
    # Whether a SKU missing here is missing for good (false: the pool may grow by itself).
    complete: bool = True
    _missing: dict[tuple[str, str], str | None] = field(
        default_factory=dict, compare=False, repr=False
    )

    def takes(self, accelerator: str, engine: str) -> tuple[str, int]:
        """(SKU, units) one replica of `engine` on `accelerator` takes from this pool."""
        if engine in self.cpu_engines or ACCELERATORS[accelerator].gpu_count == 0:
            return pool_units(CPU)
        return pool_units(accelerator)

    def has(self, sku: str) -> bool:
        count = self.skus.get(sku)
        return count is not None and count.total != 0

    def missing(self, accelerator: str, engine: str) -> str | None:
        """Why a replica of `engine` on `accelerator` can never start in this pool (the SKU
        it takes is not there at all), or None: it can, now or once something frees up, or
        the pool may grow. Memoised: the data plane asks on every request."""
        key = (accelerator, engine)
        if key not in self._missing:
            self._missing[key] = self._why_missing(accelerator, engine)
        return self._missing[key]

    def _why_missing(self, accelerator: str, engine: str) -> str | None:
        if not self.complete or accelerator not in ACCELERATORS:
            return None
        sku, _ = self.takes(accelerator, engine)
        if self.has(sku):
            return None
        what = "CPU replica slots" if sku == CPU else f"{sku} GPU"
        models = self.runnable_models()
        # A GPU engine is not told to try a CPU slot: it would fail at its first start.
        ids = [i for i in self.accelerator_ids() if engine in CPU_ENGINES or i != CPU]
        advice = []
        if models:
            advice.append(f"deploy a model it runs, such as {', '.join(models[:3])}")
        if ids:
            advice.append(f"set config.accelerator to one it has ({', '.join(ids)})")
        return (
            f"this pool has no {what}, which accelerator {accelerator} needs; it has "
            f"{self.describe()}: {', or '.join(advice) or 'add that hardware to the pool'}"
        )

    def describe(self) -> str:
        """What the pool has, for people: `8 CPU replica slots, 2 a10_24gb GPUs`."""
        parts = []
        for sku, count in sorted(self.skus.items(), key=lambda kv: (kv[0] != CPU, kv[0])):
            if count.total == 0:
                continue
            n = "unlimited" if count.total == UNLIMITED else str(count.total)
            parts.append(f"{n} CPU replica slots" if sku == CPU else f"{n} {sku} GPU(s)")
        return ", ".join(parts) or "nothing"

    def accelerator_ids(self) -> list[str]:
        """The catalogue's accelerators whose SKU the pool has."""
        return [a.id for a in ACCELERATORS.values() if self.has(a.sku)]

    def runnable_models(self) -> list[str]:
        """Models whose replicas, on their default accelerator, take a SKU the pool has.
        Simulated models run on the sim backend only, and it runs nothing else."""
        return sorted(
            m.name
            for m in MODELS.values()
            if (m.engine == SIM) == (self.backend == SIM)
            and self.has(self.takes(m.default_accelerator, m.engine)[0])
        )

    # --- in Redis --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "at": self.at,
            "skus": {s: {"total": c.total, "free": c.free} for s, c in self.skus.items()},
            "cpu_engines": sorted(self.cpu_engines),
            "complete": self.complete,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PoolReport:
        return cls(
            backend=str(data["backend"]),
            at=float(data["at"]),
            skus={
                str(s): SkuCount(int(c["total"]), int(c["free"]))
                for s, c in dict(data["skus"]).items()
            },
            cpu_engines=frozenset(str(e) for e in data.get("cpu_engines", ())),
            complete=bool(data.get("complete", True)),
        )


def pool_totals(free: Mapping[str, int], held: Mapping[str, int]) -> dict[str, SkuCount]:
    """Each SKU of the pool from what the backend reports free (every SKU it has, busy ones
    at 0) and the units wakegate's replicas hold. A SKU only held (the backend no longer
    reports it, its replicas still run) is in the pool too."""
    out = {}
    for sku in set(free) | {s for s, n in held.items() if n > 0}:
        f = free.get(sku, 0)
        total = UNLIMITED if f == UNLIMITED else f + held.get(sku, 0)
        out[sku] = SkuCount(total=total, free=f)
    return out


# --- what the API and the CLI show (`GET /v2/accelerators`) ---------------------------------


class SkuView(BaseModel):
    sku: str = Field(description="a GPU SKU (`l40s_48gb`), or `cpu` for CPU replica slots")
    accelerators: list[str] = Field(description="the accelerator ids that take this SKU")
    total: int = Field(description="GPUs (cpu: replica slots) in all; -1: unlimited")
    free: int = Field(description="of those, free now; -1: unlimited")


class PoolView(BaseModel):
    known: bool = Field(
        description="whether a scaler has reported the pool lately; while not, nothing is "
        "refused for lack of an accelerator"
    )
    complete: bool = Field(
        description="whether a SKU missing here is missing for good (false: the pool may grow "
        "by itself, as with a cluster autoscaler, so nothing is refused)"
    )
    backend: str | None
    reportedAt: float | None = Field(description="when the scaler reported it (epoch seconds)")
    skus: list[SkuView]
    models: list[str] = Field(description="catalogue models it runs on their default accelerator")


def pool_view(report: PoolReport | None) -> PoolView:
    if report is None:
        return PoolView(
            known=False, complete=False, backend=None, reportedAt=None, skus=[], models=[]
        )
    skus = [
        SkuView(
            sku=sku,
            accelerators=[a.id for a in ACCELERATORS.values() if a.sku == sku],
            total=count.total,
            free=count.free,
        )
        for sku, count in sorted(report.skus.items(), key=lambda kv: (kv[0] != CPU, kv[0]))
        if count.total != 0
    ]
    return PoolView(
        known=True,
        complete=report.complete,
        backend=report.backend,
        reportedAt=report.at,
        skus=skus,
        models=report.runnable_models(),
    )
