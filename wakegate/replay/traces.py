"""Public LLM request traces: Azure LLM inference (CSV) and Mooncake (JSONL).

Both become a list of `TraceRequest`s, seconds from the first request. Prompts are made of
words, one per token, so the simulator engine (which counts whitespace-separated words)
does the work the trace describes; Mooncake's `hash_ids` become shared word blocks, so two
requests with a common prefix of blocks have a common prefix of text.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

BLOCK_TOKENS = 512  # Mooncake: one hash id per 512-token block


@dataclass(frozen=True)
class TraceRequest:
    at_s: float
    prompt_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()


def _azure_time(raw: str) -> float:
    # "2023-11-16 18:17:03.9799600": 100 ns resolution, more digits than %f takes.
    head, _, frac = raw.partition(".")
    return datetime.fromisoformat(head).timestamp() + (float("0." + frac) if frac else 0.0)


def load_azure(path: Path) -> list[TraceRequest]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    times = [_azure_time(r["TIMESTAMP"]) for r in rows]
    t0 = min(times)
    out = [
        TraceRequest(t - t0, max(1, int(r["ContextTokens"])), max(1, int(r["GeneratedTokens"])))
        for t, r in zip(times, rows, strict=True)
    ]
    return sorted(out, key=lambda r: r.at_s)


def load_mooncake(path: Path) -> list[TraceRequest]:
    with open(path) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    t0 = min(r["timestamp"] for r in rows)
    out = [
        TraceRequest(
            (r["timestamp"] - t0) / 1000.0,
            max(1, int(r["input_length"])),
            max(1, int(r["output_length"])),
            tuple(int(h) for h in r.get("hash_ids", ())),
        )
        for r in rows
    ]
    return sorted(out, key=lambda r: r.at_s)


def load_trace(path: str | Path, fmt: str | None = None) -> list[TraceRequest]:
    p = Path(path)
    kind = fmt or ("mooncake" if p.suffix == ".jsonl" else "azure")
    if kind == "azure":
        return load_azure(p)
    if kind == "mooncake":
        return load_mooncake(p)
    raise ValueError(f"unknown trace format {kind!r}: use azure or mooncake")


def window(trace: list[TraceRequest], start_s: float, end_s: float | None) -> list[TraceRequest]:
    """The requests of [start_s, end_s), re-based to start at 0."""
    picked = [r for r in trace if r.at_s >= start_s and (end_s is None or r.at_s < end_s)]
    return [replace(r, at_s=r.at_s - start_s) for r in picked]


def prompt_text(req: TraceRequest) -> str:
    """`prompt_tokens` words; with hash ids, each 512-word block is named by its id."""
    left = req.prompt_tokens
    parts: list[str] = []
    for h in req.hash_ids:
        n = min(BLOCK_TOKENS, left)
        parts.append(f"h{h} " * n)
        left -= n
        if left == 0:
            break
    parts.append("w " * left)
    return "".join(parts).rstrip()
