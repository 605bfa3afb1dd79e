"""`wakegate events DEPLOYMENT`: a deployment's scaling decisions and lifecycle as they happen.

Live events come from the MQTT broker (wakegate/topics.py); lifecycle events (Created, Ready,
Failed, WaitingForCapacity, ...) are kept in Redis only, so the command prints the recent ones
first and then looks for new ones every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click

from wakegate import topics
from wakegate.settings import Settings
from wakegate.tools.cli_common import client_settings, config_option, tenant_name

# What `events` follows by default; `load` (the gateways' periodic queue reports) on request.
KINDS: tuple[topics.Kind, ...] = ("decision", "replica", "wake", "capacity", "config")
LIFECYCLE_POLL_S = 1.0
# A broker not reached within this long gets a line on stderr (the client keeps trying).
CONNECT_NOTICE_S = 3.0


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%H:%M:%S.%f")[:-3]


def describe(kind: str, ev: topics.Event) -> str:
    """One human-readable line for an MQTT event."""
    if isinstance(ev, topics.ScaleDecided):
        if ev.desired == ev.current:
            return f"hold at {ev.current} replica(s): {ev.reason}"
        return f"scale {ev.current} -> {ev.desired} replica(s): {ev.reason}"
    if isinstance(ev, topics.ReplicaChanged):
        return f"replica {ev.replica_id} {ev.state}" + (
            f" at {ev.url}" if ev.url and ev.state == "ready" else ""
        )
    if isinstance(ev, topics.Wake):
        return f"wake: {ev.queued} request(s) waiting and no replica ready"
    if isinstance(ev, topics.CapacityWait):
        if ev.waiting:
            return f"waiting for capacity ({ev.wanted} more replica(s)): {ev.reason}"
        return "capacity available"
    if isinstance(ev, topics.ConfigChanged):
        return f"deployment {ev.change}"
    if isinstance(ev, topics.LoadReport):
        return f"load: {ev.queued} queued, {ev.in_flight} in flight"
    return ev.model_dump_json()


def _lifecycle_at(e: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(
            str(e.get("timestamp", "")).replace("Z", "+00:00")
        ).timestamp()
    except ValueError:
        return 0.0


def describe_lifecycle(e: dict[str, Any]) -> str:
    message = e.get("message") or ""
    return f"{e.get('eventType', '?')} (revision {e.get('revision', '?')})" + (
        f": {message}" if message else ""
    )


STYLES = {
    "decision": "bold cyan",
    "replica": "green",
    "wake": "yellow",
    "capacity": "magenta",
    "config": "blue",
    "load": "dim",
    "lifecycle": "bold",
}


class Printer:
    """Writes one line per event to stdout, flushed at once (the reader may be a pipe)."""

    def __init__(self, deployment: str, as_json: bool) -> None:
        from rich.console import Console

        self.deployment = deployment
        self.as_json = as_json
        self.console = Console(highlight=False, soft_wrap=True)

    def _line(self, kind: str, at: float, text: str, record: dict[str, Any]) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps({"kind": kind, **record}) + "\n")
            sys.stdout.flush()
            return
        self.console.print(
            f"[dim]{_clock(at)}[/]  [{STYLES.get(kind, '')}]{kind:<9}[/]  ", end="", markup=True
        )
        self.console.print(text, markup=False)
        self.console.file.flush()

    def mqtt(self, kind: str, ev: topics.Event) -> None:
        self._line(kind, ev.at, describe(kind, ev), ev.model_dump())

    def lifecycle(self, e: dict[str, Any]) -> None:
        record = {"deployment": self.deployment, **e}
        self._line("lifecycle", _lifecycle_at(e), describe_lifecycle(e), record)


def _key(event: dict[str, Any]) -> str:
    return json.dumps(event, sort_keys=True)


async def follow(
    settings: Settings,
    deployment: str,
    kinds: tuple[topics.Kind, ...],
    history: int,
    printer: Printer,
    notice: Callable[[str], None],
) -> None:
    """Print until cancelled: the last `history` stored lifecycle events, then every new
    MQTT event of `kinds` and every new lifecycle event."""
    from wakegate.bus import Bus
    from wakegate.store import Store

    assert settings.mqtt_url is not None

    async def on_event(kind: str, ev: topics.Event) -> None:
        if ev.deployment == deployment:
            printer.mqtt(kind, ev)

    bus = Bus(
        settings.mqtt_url,
        "wakegate-events",
        [topics.topic(deployment, kind) for kind in kinds],
        on_event,
    )
    store = Store.from_url(settings.redis_url) if settings.redis_url else None
    tasks: list[asyncio.Task[Any]] = []
    try:
        seen: set[str] = set()
        if store is not None:
            if await store.get_deployment(deployment) is None:
                notice(f"there is no deployment {deployment} (yet); its events show when it comes")
            stored = await store.events(deployment)
            seen = {_key(e) for e in stored}
            for e in stored[-history:] if history > 0 else []:
                printer.lifecycle(e)
        tasks.append(asyncio.create_task(bus.run()))
        try:
            async with asyncio.timeout(CONNECT_NOTICE_S):
                await bus.connected.wait()
        except TimeoutError:
            notice("the MQTT broker is not answering yet; still trying ...")
            await bus.connected.wait()
        notice(f"following {deployment} (Ctrl-C to stop)")
        while True:
            await asyncio.sleep(LIFECYCLE_POLL_S)
            if store is None:
                continue
            stored = await store.events(deployment)
            for e in stored:
                if _key(e) not in seen:
                    printer.lifecycle(e)
            # Only what Redis still keeps can come back in the next look.
            seen = {_key(e) for e in stored}
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if store is not None:
            await store.close()


async def run_until_stopped(work: Callable[[], Any]) -> None:
    """Run `work()` until it ends or SIGINT / SIGTERM arrives; either signal ends it cleanly."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work())
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


@click.command()
@click.argument("deployment")
@click.option(
    "--tenant",
    help="The deployment's tenant, unless DEPLOYMENT is TENANT/NAME (default: the default "
    "tenant of the settings, WAKEGATE_DEFAULT_TENANT).",
)
@click.option(
    "--history",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Stored lifecycle events printed first.",
)
@click.option("--load", is_flag=True, help="Also the gateways' periodic load reports.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines, one per event.")
@config_option
def events(
    deployment: str,
    tenant: str | None,
    history: int,
    load: bool,
    as_json: bool,
    config: str | None,
) -> None:
    """Follow DEPLOYMENT's scaling decisions, replicas, wakes, capacity waits and lifecycle
    events as they happen, one line each. Reads the broker (MQTT_URL) and Redis (REDIS_URL)
    of the settings, else those of the stack `wakegate up` runs here."""
    settings = client_settings(config)
    if "/" in deployment:
        tenant, _, name = deployment.partition("/")
    else:
        name = deployment
    from wakegate.spec import InvalidSpec, validate_name

    try:
        validate_name(name, "DEPLOYMENT")
    except InvalidSpec as exc:
        raise click.BadParameter(exc.message, param_hint="DEPLOYMENT") from None
    key = f"{tenant_name(tenant or settings.default_tenant)}/{name}"
    if settings.mqtt_url is None:
        raise click.ClickException(
            "set MQTT_URL to the broker of the gateway and scaler (or run `wakegate up` here)"
        )
    # The command says itself when the broker is not answering; the client's reconnection
    # warnings would repeat that every few seconds.
    logging.getLogger("wakegate.bus").setLevel(logging.ERROR)
    kinds: tuple[topics.Kind, ...] = (*KINDS, "load") if load else KINDS
    printer = Printer(key, as_json)

    def notice(text: str) -> None:
        click.echo(text, err=True)

    asyncio.run(run_until_stopped(lambda: follow(settings, key, kinds, history, printer, notice)))
