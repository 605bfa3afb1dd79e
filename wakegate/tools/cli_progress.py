"""Progress bars of the CLI's long steps (rich, on stderr: stdout keeps the results)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wakegate.tools.replay.run import Progress, ProgressFn


@contextmanager
def run_bars() -> Iterator[RunBars]:
    """The bars, shown while the block runs."""
    bars = RunBars()
    with bars.bars:
        yield bars


class RunBars:
    """One bar per replay run: the run's clock in trace seconds against the trace's span,
    with the time left at the replay's speed."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bars = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=Console(stderr=True, highlight=False),
            # Results go to stdout, which may be a file while stderr is a terminal: the bars
            # must not take it over.
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def echo(self, text: str) -> None:
        """A line above the bars."""
        self.bars.console.print(text, markup=False)

    def run(self, label: str) -> ProgressFn:
        """A new bar for the run `label`, and the function that moves it."""
        task = self.bars.add_task(label, total=None, detail="starting the stack")

        def update(p: Progress) -> None:
            if p.phase == "starting":
                self.bars.update(task, detail="starting the stack")
            elif p.phase == "done":
                self.bars.update(task, total=p.span_s or 1, completed=p.span_s or 1, detail="done")
                self.bars.stop_task(task)
            else:
                if p.phase == "replaying":
                    detail = f"{p.trace_s:,.0f}/{p.span_s:,.0f} trace s, {p.sent}/{p.total} sent"
                elif p.done < p.total:
                    detail = f"all sent, {p.total - p.done} still answering"
                else:
                    detail = "stopping the stack"
                self.bars.update(task, total=p.span_s or 1, completed=p.trace_s, detail=detail)

        return update
