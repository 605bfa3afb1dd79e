"""Several allocators on one pool plan, each on a fresh stack, with their tables and plots."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from wakegate.tools.replay import report
from wakegate.tools.replay.pool import PoolPlan, run_pool
from wakegate.tools.replay.run import ProgressFn


def compare_allocators(
    template: PoolPlan,
    allocators: Sequence[str],
    out: Path | None = None,
    echo: Callable[[str], None] = print,
    progress_for: Callable[[str], ProgressFn] | None = None,
    plots: bool = True,
) -> list[report.PoolSummary]:
    """Run `template` under each allocator in turn. With `out`, as soon as a run ends:
    `<allocator>.json` (the whole run), `<allocator>.md`, `<allocator>.png` (unless not
    `plots`) and `table.md` comparing the runs so far (a repeated allocator gets `-2`, `-3`,
    ... on its files), so that an interrupted comparison keeps the runs it finished."""
    summaries: list[report.PoolSummary] = []
    runs: Counter[str] = Counter()
    requests, span = template.request_count, template.span_s
    for allocator in allocators:
        runs[allocator] += 1
        label = allocator if runs[allocator] == 1 else f"{allocator}-{runs[allocator]}"
        plan = replace(template, allocator=allocator)
        echo(
            f"replaying {requests} requests of {len(plan.members)} deployments ({span:.0f} s "
            f"of trace) on pool {plan.pool} under allocator '{allocator}' at {plan.speed:g}x: "
            f"about {span / plan.speed / 60:.1f} min ..."
        )
        result = run_pool(plan, progress=progress_for(label) if progress_for else None)
        summary = report.summarize_pool(result, label)
        summaries.append(summary)
        text = report.pool_table([summary])
        echo(text)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{label}.json").write_text(json.dumps(result.to_json()))
            (out / f"{label}.md").write_text(text + "\n")
            (out / "table.md").write_text(report.pool_table(summaries) + "\n")
            if plots:
                report.plot_pool(result, out / f"{label}.png")
    return summaries
