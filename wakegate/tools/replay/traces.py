"""Public LLM request traces: Azure LLM inference (CSV) and Mooncake (JSONL).

Both become a list of `TraceRequest`s, seconds from the first request. Prompts are made of
words, one per token, so the simulator engine (which counts whitespace-separated words)
does the work the trace describes; Mooncake's `hash_ids` become shared word blocks, so two
requests with a common prefix of blocks have a common prefix of text.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
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


def session_keys(trace: Sequence[TraceRequest]) -> list[int | None]:
    """The conversation of each request, where the trace tells: its first prompt block after
    the prefix that every request shares. In the Mooncake trace block 0 is a system prompt in
    every request, and a conversation's later turns repeat its earlier turns' blocks, so the
    block after it names the conversation. None for a request without such a block (every
    request of a trace without hash ids)."""
    with_ids = [r.hash_ids for r in trace if r.hash_ids]
    shared = 0
    if with_ids:
        first = with_ids[0]
        while shared < len(first) and all(
            len(ids) > shared and ids[shared] == first[shared] for ids in with_ids
        ):
            shared += 1
    return [r.hash_ids[shared] if len(r.hash_ids) > shared else None for r in trace]


def split_trace(trace: Sequence[TraceRequest], parts: int) -> list[list[TraceRequest]]:
    """Deal a trace to `parts` deployments, deterministically: each new conversation (see
    `session_keys`), or each request that has none, goes to the next part in turn, and a
    conversation's later turns follow its first, so a deployment's prefix cache sees whole
    conversations. Every request lands in exactly one part, in trace order."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, not {parts}")
    out: list[list[TraceRequest]] = [[] for _ in range(parts)]
    owner: dict[int, int] = {}
    turn = 0
    for req, key in zip(trace, session_keys(trace), strict=True):
        if key is not None and key in owner:
            part = owner[key]
        else:
            part, turn = turn, (turn + 1) % parts
            if key is not None:
                owner[key] = part
        out[part].append(req)
    return out


def rotate(
    trace: Sequence[TraceRequest], by_s: float, period_s: float | None = None
) -> list[TraceRequest]:
    """The trace shifted `by_s` later, what passes `period_s` (default: its last request's
    time) wrapping around to the start: the same requests and the same shape, at other times
    (deployments made from one trace then burst at different moments)."""
    period = period_s if period_s is not None else max((r.at_s for r in trace), default=0.0)
    if period <= 0 or by_s % period == 0:
        return list(trace)
    shifted = [replace(r, at_s=(r.at_s + by_s) % period) for r in trace]
    return sorted(shifted, key=lambda r: r.at_s)
