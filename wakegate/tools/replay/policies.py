"""Several scaling policies (or routings) on one trace, each on a fresh stack, with their
results written as each run ends."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from wakegate.tools.replay import report
from wakegate.tools.replay.run import Plan, ProgressFn, run


def compare_policies(
    plans: Sequence[tuple[str, Plan]],
    out: Path | None = None,
    echo: Callable[[str], None] = print,
    progress_for: Callable[[str], ProgressFn] | None = None,
    plots: bool = True,
) -> list[report.Summary]:
    """Run each (label, plan) in turn. With `out`, as soon as a run ends: `<label>.json` (the
    whole run), `<label>.png` (unless not `plots`) and `table.md` with a row for every run so
    far, so that an interrupted comparison keeps the runs it finished."""
    summaries: list[report.Summary] = []
    for label, plan in plans:
        span = plan.span_s
        echo(
            f"replaying {len(plan.requests)} requests ({span:.0f} s of trace) under "
            f"'{plan.policy}' with {plan.routing} routing at {plan.speed:g}x: about "
            f"{span / plan.speed / 60:.1f} min ..."
        )
        result = run(plan, progress=progress_for(label) if progress_for else None)
        summary = report.summarize(result)
        summaries.append(summary)
        echo(report.table([summary]).splitlines()[-1])
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{label}.json").write_text(json.dumps(result.to_json()))
            (out / "table.md").write_text(report.table(summaries) + "\n")
            if plots:
                report.plot(result, out / f"{label}.png")
    return summaries
