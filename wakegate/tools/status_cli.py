"""`wakegate status`: the status overview in the terminal, read from a gateway."""

from __future__ import annotations

import time

import httpx
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from wakegate.status import STATUS_PATH, Overview


class StatusUnavailable(Exception):
    """The gateway could not be asked, or refused (the message says why)."""


def fetch_overview(url: str, token: str, timeout_s: float = 10.0) -> Overview:
    try:
        r = httpx.get(
            url.rstrip("/") + STATUS_PATH,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        raise StatusUnavailable(f"cannot reach the gateway at {url}: {exc}") from None
    if r.status_code != 200:
        try:
            message = str(r.json().get("error") or r.text)
        except ValueError:
            message = r.text
        raise StatusUnavailable(f"the gateway answered {r.status_code}: {message}")
    return Overview.model_validate_json(r.content)


def _ago(now: float, at: float) -> str:
    seconds = max(0, int(now - at))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


STATUS_STYLE = {"ready": "green", "updating": "yellow", "failed": "red", "deleting": "red"}


def render(view: Overview, problem: str | None = None) -> RenderableType:
    """The overview as a table; `problem`: why it may be stale (the last refresh failed)."""
    clock = time.strftime("%H:%M:%S", time.localtime(view.at))
    table = Table(title=f"wakegate · tenant {view.tenant} · {clock}", title_justify="left")
    # Names and numbers never wrap; in a narrow terminal the decision's reason does.
    table.add_column("deployment", style="bold", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("ready", justify="right")
    table.add_column("starting", justify="right")
    table.add_column("draining", justify="right")
    table.add_column("queued", justify="right")
    table.add_column("in flight", justify="right")
    table.add_column("last scaling decision")
    for d in view.deployments:
        decision = Text("-", style="dim")
        if d.last_decision is not None:
            x = d.last_decision
            decision = Text(f"{x.current} → {x.desired} ({x.reason}) ")
            decision.append(_ago(view.at, x.at), style="dim")
        if d.waiting_for_capacity:
            decision.append(f"\nwaiting for capacity: {d.waiting_for_capacity}", style="red")
        table.add_row(
            d.name,
            Text(d.status, style=STATUS_STYLE.get(d.status, "")),
            str(d.replicas.ready),
            str(d.replicas.starting),
            str(d.replicas.draining),
            str(d.queued),
            str(d.in_flight),
            decision,
        )
    if not view.deployments:
        table.caption = "no deployments yet"
    if problem:
        return Group(table, Text(problem, style="red"))
    return table
