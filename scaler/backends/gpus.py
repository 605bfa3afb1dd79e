"""GPUs on this host, as `nvidia-smi` reports them, and which replica holds which.

The local backend hands a replica the GPUs its accelerator asks for (count and SKU) through
CUDA_VISIBLE_DEVICES. No `nvidia-smi` (or no GPU) means a CPU host: CPU engines run anyway,
GPU engines are refused with the reason.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from scaler.backends import NoCapacity
from wakegate.catalog import Accelerator

# nvidia-smi product names -> catalogue SKU, matched on the upper-cased name; the first
# pattern found wins, so specific before general.
_PRODUCT_SKUS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), sku)
    for pattern, sku in (
        (r"\bH100 (PCIE|NVL)\b", "h100_80gb_pcie"),
        (r"\bH100\b", "h100_80gb_sxm"),  # "H100 80GB HBM3" is the SXM part
        (r"\bA100\b.*\b80GB\b", "a100_80gb"),
        (r"\bL40S\b", "l40s_48gb"),
        (r"\bL4\b", "l4_24gb"),
        (r"\bA10G?\b", "a10_24gb"),
    )
)


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_mib: int
    sku: str | None  # None: a GPU the catalogue has no id for (usable only as "any GPU")


def sku_of(product: str) -> str | None:
    name = product.upper()
    for pattern, sku in _PRODUCT_SKUS:
        if pattern.search(name):
            return sku
    return None


def parse_nvidia_smi(output: str) -> list[Gpu]:
    """Rows of `nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits`."""
    gpus = []
    for row in csv.reader(io.StringIO(output)):
        if len(row) < 3 or not row[0].strip().isdigit():
            continue
        index, name, memory = (cell.strip() for cell in row[:3])
        mib = int(float(memory)) if memory.replace(".", "", 1).isdigit() else 0
        gpus.append(Gpu(int(index), name, mib, sku_of(name)))
    return gpus


def discover() -> list[Gpu]:
    """This host's GPUs; empty when there is no `nvidia-smi` or it finds none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(out)


class NoGpu(NoCapacity):
    """Not enough free GPUs of the SKU an accelerator asks for: the replica waits for one."""


def pick(gpus: Iterable[Gpu], busy: set[int], accelerator: Accelerator) -> list[int]:
    """Indices of `accelerator.gpu_count` free GPUs of its SKU; raises NoGpu."""
    free = [g for g in gpus if g.index not in busy]
    matching = [g.index for g in free if g.sku == accelerator.sku]
    if len(matching) < accelerator.gpu_count:
        have = ", ".join(f"{g.index}:{g.name}" for g in free) or "none"
        raise NoGpu(
            f"accelerator {accelerator.id} needs {accelerator.gpu_count} free "
            f"{accelerator.sku} GPU(s); free on this host: {have}"
        )
    return sorted(matching)[: accelerator.gpu_count]


def free_by_sku(gpus: Iterable[Gpu], busy: set[int]) -> dict[str, int]:
    """Free GPUs by SKU; a SKU whose GPUs are all busy is there with 0 (the host has it,
    busy: wakegate/pool.py tells that apart from a SKU it does not have)."""
    counts: dict[str, int] = {}
    for g in gpus:
        if g.sku is not None:
            counts[g.sku] = counts.get(g.sku, 0) + (g.index not in busy)
    return counts
