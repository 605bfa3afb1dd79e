"""Several allocators on one pool plan, each on a fresh stack, with their tables and plots."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from wakegate.replay import report
from wakegate.replay.pool import PoolPlan, run_pool


def compare_allocators(
    template: PoolPlan,
    allocators: Sequence[str],
    out: Path | None = None,
    echo: Callable[[str], None] = print,
) -> list[report.PoolSummary]:
    """Run `template` under each allocator in turn. With `out`: `<allocator>.json` (the whole
    run), `<allocator>.md` and `<allocator>.png` per run, and `table.md` comparing them (a
    repeated allocator gets `-2`, `-3`, ... on its files)."""
    summaries: list[report.PoolSummary] = []
    runs: Counter[str] = Counter()
    requests = sum(len(m.requests) for m in template.members)
    span = max((m.requests[-1].at_s for m in template.members if m.requests), default=0.0)
    for allocator in allocators:
        runs[allocator] += 1
        label = allocator if runs[allocator] == 1 else f"{allocator}-{runs[allocator]}"
        plan = replace(template, allocator=allocator)
        echo(
            f"replaying {requests} requests of {len(plan.members)} deployments ({span:.0f} s "
            f"of trace) on pool {plan.pool} under allocator '{allocator}' at {plan.speed:g}x: "
            f"about {span / plan.speed / 60:.1f} min ..."
        )
        result = run_pool(plan)
        summary = report.summarize_pool(result, label)
        summaries.append(summary)
        text = report.pool_table([summary])
        echo(text)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{label}.json").write_text(json.dumps(result.to_json()))
            (out / f"{label}.md").write_text(text + "\n")
            report.plot_pool(result, out / f"{label}.png")
    text = report.pool_table(summaries)
    echo("")
    echo(text)
    if out is not None:
        (out / "table.md").write_text(text + "\n")
    return summaries
