"""`wakegate accelerators`: the pool's accelerators, as the gateway lists them."""

from __future__ import annotations

import json
from datetime import datetime

import click

from wakegate.pool import UNLIMITED, PoolView
from wakegate.tools.cli_common import api_options
from wakegate.tools.cli_deployments import api_errors, connect, print_table


def _count(n: int) -> str:
    return "unlimited" if n == UNLIMITED else str(n)


def pool_table(view: PoolView) -> object:
    from rich.table import Table

    if not view.known:
        title = "pool unknown: no scaler has reported it lately (nothing is refused meanwhile)"
    else:
        at = datetime.fromtimestamp(view.reportedAt or 0).strftime("%H:%M:%S")
        grows = "" if view.complete else ", may grow (nothing refused for a missing SKU)"
        title = f"pool of the {view.backend} backend, reported {at}{grows}"
    table = Table(title=title, title_justify="left")
    table.add_column("sku", style="bold", no_wrap=True)
    table.add_column("total", justify="right")
    table.add_column("free", justify="right")
    table.add_column("accelerators")
    for sku in view.skus:
        table.add_row(
            "cpu (replica slots)" if sku.sku == "cpu" else sku.sku,
            _count(sku.total),
            _count(sku.free),
            ", ".join(sku.accelerators),
        )
    if view.known:
        table.caption = "models it runs as they are: " + (", ".join(view.models) or "none")
    return table


@click.command()
@api_options
def accelerators(gateway: str | None, token: str | None, as_json: bool) -> None:
    """The pool's accelerators: each SKU with its GPUs (CPU replica slots for cpu) in all and
    free, the accelerator ids that take it, and the models the pool runs. A deployment that
    needs a SKU the pool does not have is refused."""
    with api_errors(), connect(gateway, token) as client:
        data = client.accelerators()
    if as_json:
        click.echo(json.dumps(data))
        return
    print_table(pool_table(PoolView.model_validate(data)))
