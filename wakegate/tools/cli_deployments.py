"""`wakegate deployments ...`: deployments through the gateway's control API, as tables."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from wakegate.tools.cli_common import (
    api_options,
    gateway_and_token,
    option_list,
)
from wakegate.tools.control_client import ApiFailure, ControlClient

if TYPE_CHECKING:  # rich is imported when a command runs: `--help` stays quick
    from rich.console import Console

# Seconds between two looks at a deployment that is being waited for.
WAIT_POLL_S = 1.0


def stdout_console() -> Console:
    from rich.console import Console

    # Piped into a file or another program: wide enough that no column is cut.
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200)
    return console


def print_table(table: Any) -> None:
    """A rich renderable on stdout; piped, without the padding at the end of its lines."""
    console = stdout_console()
    if console.is_terminal:
        console.print(table)
        return
    with console.capture() as captured:
        console.print(table)
    click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def connect(gateway: str | None, token: str | None) -> ControlClient:
    return ControlClient(*gateway_and_token(gateway, token))


@contextmanager
def api_errors() -> Iterator[None]:
    """An API error ends the command with the API's message (naming its field), exit code 1."""
    try:
        yield
    except ApiFailure as exc:
        raise click.ClickException(str(exc)) from None


# --- showing deployments ------------------------------------------------------------------


def _policy(cfg: dict[str, Any]) -> str:
    policy = cfg.get("scalingPolicy") or {}
    name = str(policy.get("name", "wakegate"))
    params = policy.get("params") or {}
    if params:
        name += " (" + ", ".join(f"{k}={v:g}" for k, v in sorted(params.items())) + ")"
    return name


def _waiting(dep: dict[str, Any]) -> str:
    waiting = dep.get("waitingForCapacity")
    if not waiting:
        return "-"
    return f"{waiting.get('wantedReplicas', 0)} more: {waiting.get('reason', '')}"


def _duration(seconds: Any) -> str:
    s = int(seconds)
    if s and s % 3600 == 0:
        return f"{s // 3600}h"
    if s and s % 60 == 0:
        return f"{s // 60}m"
    return f"{s}s"


def _status_style(status: str) -> str:
    return {"ready": "green", "updating": "yellow", "failed": "red"}.get(status, "")


def deployments_table(deps: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for title in ("NAME", "STATUS", "REPLICAS", "MIN", "MAX", "MODEL", "ACCELERATOR"):
        table.add_column(title, no_wrap=True)
    for title in ("POLICY", "COOLDOWN", "WAITING FOR CAPACITY"):
        table.add_column(title)
    for dep in deps:
        cfg = dep.get("config") or {}
        status = str(dep.get("status", ""))
        table.add_row(
            str(dep["name"]),
            f"[{_status_style(status)}]{status}[/]" if _status_style(status) else status,
            str(dep.get("currentReplicas", 0)),
            str(cfg.get("minReplicas", "")),
            str(cfg.get("maxReplicas", "")),
            str((dep.get("model") or {}).get("name", "")),
            str((dep.get("accelerator") or {}).get("id", "")),
            _policy(cfg),
            _duration(cfg.get("cooldownTime", 0)),
            _waiting(dep),
        )
    return table


def _event_line(e: dict[str, Any]) -> str:
    stamp = str(e.get("timestamp", ""))
    try:
        stamp = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone().strftime("%X")
    except ValueError:
        pass
    message = e.get("message") or ""
    return f"{stamp}  {e.get('eventType', '?')}" + (f": {message}" if message else "")


def deployment_detail(dep: dict[str, Any], events: list[dict[str, Any]] | None = None) -> Any:
    from rich.table import Table

    cfg = dep.get("config") or {}
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    status = str(dep.get("status", ""))
    rows = [
        ("name", dep.get("name")),
        ("status", f"[{_status_style(status)}]{status}[/]" if _status_style(status) else status),
        ("description", dep.get("description") or "-"),
        ("model", (dep.get("model") or {}).get("name")),
        ("accelerator", (dep.get("accelerator") or {}).get("id")),
        (
            "replicas",
            f"{dep.get('currentReplicas', 0)} ready (min {cfg.get('minReplicas')}, "
            f"max {cfg.get('maxReplicas')})",
        ),
        ("scale-up threshold", f"{cfg.get('scaleUpRequestThreshold')} request(s) per replica"),
        ("cooldown", _duration(cfg.get("cooldownTime", 0))),
        ("scaling policy", _policy(cfg)),
        ("routing", cfg.get("routing") or "prefix"),
        ("waiting for capacity", _waiting(dep)),
        ("uuid", dep.get("uuid")),
    ]
    if cfg.get("customArgs"):
        rows.insert(5, ("engine args", " ".join(cfg["customArgs"])))
    if cfg.get("maxQueueLength") is not None:
        rows.insert(-1, ("queue limit", cfg["maxQueueLength"]))
    private = dep.get("privateEndpoint")
    if cfg.get("directIngress"):
        # Served on the gateway's private listener only (README "Direct ingress").
        where = private.get("url") if isinstance(private, dict) else None
        rows.insert(-1, ("direct ingress", where or "on (this gateway has no private listener)"))
        if isinstance(private, dict):
            rows.insert(-1, ("serving url", private.get("servingUrl")))
    for key, value in rows:
        table.add_row(key, str(value))
    if events:
        table.add_row("events", "\n".join(_event_line(e) for e in events[-8:]))
    return table


# --- configs from flags and files ---------------------------------------------------------

# Flag -> config key (camelCase, as the API shows it) and the other spellings the API takes for
# that key, which a flag given beside a file must replace.
CONFIG_FLAGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "base_model": ("baseModel", ("base_model",)),
    "min_replicas": ("minReplicas", ("min_replicas",)),
    "max_replicas": ("maxReplicas", ("max_replicas",)),
    "cooldown": ("cooldownTime", ("cooldown_time",)),
    "scale_up_threshold": (
        "scaleUpRequestThreshold",
        ("scale_up_threshold", "scale_up_request_threshold"),
    ),
    "accelerator": ("accelerator", ()),
    "routing": ("routing", ()),
    "max_queue_length": ("maxQueueLength", ("max_queue_length",)),
    "direct_ingress": ("directIngress", ("direct_ingress",)),
}


config_options = option_list(
    click.option(
        "--config",
        "config_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="JSON or YAML file: the deployment's config (every field the API takes, "
        "e.g. baseModel, minReplicas, customArgs), or a request body with `config` "
        "and `description`. Flags override its values.",
    ),
    click.option("--base-model", help="Base model (see the model catalogue)."),
    click.option("--min-replicas", type=int, help="Replicas kept ready (0: scale to zero)."),
    click.option("--max-replicas", type=int, help="Most replicas it scales to."),
    click.option(
        "--cooldown",
        type=int,
        metavar="SECONDS",
        help="Idle time before it scales down (cooldownTime).",
    ),
    click.option(
        "--scale-up-threshold",
        type=int,
        help="Requests one replica carries before another starts.",
    ),
    click.option("--accelerator", help="Accelerator id, e.g. a10_24gb_100."),
    click.option(
        "--policy",
        help="Scaling policy: wakegate, knative, ray or always-on (params: --config).",
    ),
    click.option(
        "--routing", help="How the gateway picks a replica: prefix, least-loaded, random."
    ),
    click.option("--max-queue-length", type=int, help="Waiting requests beyond: 429."),
    click.option(
        "--direct-ingress/--no-direct-ingress",
        default=None,
        help="Serve it on the gateway's private listener only (directIngress).",
    ),
    click.option(
        "--custom-arg",
        "custom_args",
        multiple=True,
        metavar="ARG",
        help="An engine argument (customArgs); repeat for several.",
    ),
    click.option("--description", help="Free text shown with the deployment."),
    click.option(
        "--wait",
        is_flag=True,
        help="Wait until the deployment is ready and runs its minReplicas, showing "
        "its status and events.",
    ),
    click.option(
        "--timeout",
        type=click.FloatRange(min=0),
        default=900.0,
        show_default=True,
        metavar="SECONDS",
        help="With --wait: give up waiting after this long (the deployment goes on).",
    ),
)


def read_config_file(path: Path) -> tuple[dict[str, Any], str | None]:
    """(config, description) from a JSON or YAML file."""
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except ValueError as exc:  # json's and yaml's errors are both ValueErrors
        raise click.BadParameter(f"{path}: {exc}", param_hint="--config") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: must hold an object (a mapping)", param_hint="--config")
    if isinstance(data.get("config"), dict):
        description = data.get("description")
        return dict(data["config"]), description if isinstance(description, str) else None
    return data, None


def build_config(
    config_file: Path | None, flags: dict[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """The config to send: the file's, with the flags given on top."""
    config, description = read_config_file(config_file) if config_file else ({}, None)
    for flag, (key, aliases) in CONFIG_FLAGS.items():
        value = flags.get(flag)
        if value is not None:
            for alias in aliases:
                config.pop(alias, None)
            config[key] = value
    if flags.get("policy") is not None:
        current = config.pop("scalingPolicy", None) or config.pop("scaling_policy", None) or {}
        config["scalingPolicy"] = {**current, "name": flags["policy"]}
    if flags.get("custom_args"):
        config.pop("custom_args", None)
        config["customArgs"] = list(flags["custom_args"])
    if flags.get("description") is not None:
        description = flags["description"]
    return config, description


# --- waiting for a deployment -------------------------------------------------------------


def wait_ready(client: ControlClient, name: str, timeout_s: float) -> None:
    """Follow the deployment until its current revision is Ready (the test the Predibase SDK
    makes) and it runs its minReplicas, with a spinner showing its status and replicas."""
    console = stderr_console()
    t0 = time.monotonic()
    shown = 0
    with console.status(f"waiting for {name} ...") as spinner:
        while True:
            events = client.events(name)
            for e in events.events[shown:]:
                console.print("  " + _event_line(e), markup=False)
            shown = len(events.events)
            failed = events.first("Failed")
            if failed is not None or events.status in ("failed", "deleted"):
                why = failed.get("message", "") if failed else events.status
                raise click.ClickException(f"deployment {name} did not become ready: {why}")
            dep = client.get(name)
            ready = int(dep.get("currentReplicas", 0))
            wanted = int((dep.get("config") or {}).get("minReplicas", 0))
            if events.first("Ready") is not None and ready >= wanted:
                break
            elapsed = time.monotonic() - t0
            waiting = (
                f"; waiting for capacity: {_waiting(dep)}" if dep.get("waitingForCapacity") else ""
            )
            spinner.update(
                f"{name}: {dep.get('status')}, {ready} of {wanted} replica(s) ready{waiting} "
                f"... {elapsed:.0f}s"
            )
            if elapsed > timeout_s:
                raise click.ClickException(
                    f"deployment {name} not ready after {timeout_s:g} s; it goes on "
                    f"(follow it: wakegate events {name})"
                )
            time.sleep(WAIT_POLL_S)
    console.print(f"[green]✓[/] {name} is ready ({time.monotonic() - t0:.0f}s)")


def show(dep: dict[str, Any], as_json: bool, events: list[dict[str, Any]] | None = None) -> None:
    if as_json:
        click.echo(json.dumps(dep, indent=2))
    else:
        print_table(deployment_detail(dep, events))


# --- the commands -------------------------------------------------------------------------


@click.group()
def deployments() -> None:
    """Deployments of one tenant, through the gateway's API: list, get, create, update,
    delete.

    The gateway and token come from --gateway / --token, else WAKEGATE_URL / WAKEGATE_TOKEN,
    else PREDIBASE_GATEWAY / PREDIBASE_API_TOKEN (as for the Predibase SDK), else the stack
    `wakegate up` runs here.
    """


@deployments.command("list")
@api_options
def list_cmd(gateway: str | None, token: str | None, as_json: bool) -> None:
    """Every deployment of the token's tenant."""
    with api_errors(), connect(gateway, token) as client:
        deps = client.list()
    if as_json:
        click.echo(json.dumps(deps, indent=2))
    elif not deps:
        click.echo("no deployments (create one: wakegate deployments create NAME --base-model ...)")
    else:
        print_table(deployments_table(deps))


@deployments.command("get")
@click.argument("name")
@api_options
def get_cmd(name: str, gateway: str | None, token: str | None, as_json: bool) -> None:
    """One deployment: its config, replicas and the events of its current revision."""
    with api_errors(), connect(gateway, token) as client:
        dep = client.get(name)
        events = None if as_json else client.events(name).events
    show(dep, as_json, events)


def _send_config(
    send: Callable[[ControlClient, str, dict[str, Any], str | None], dict[str, Any]],
    must_change: bool,
    name: str,
    config_file: Path | None,
    wait: bool,
    timeout: float,
    gateway: str | None,
    token: str | None,
    as_json: bool,
    **flags: Any,
) -> None:
    """`create` and `update`: send the config built from flags and/or the file, wait for the
    deployment if asked to, and show it."""
    config, description = build_config(config_file, flags)
    if must_change and not config and description is None:
        raise click.UsageError("nothing to change: give a flag (see --help) or --config FILE")
    with api_errors(), connect(gateway, token) as client:
        dep = send(client, name, config, description)
        if wait:
            wait_ready(client, name, timeout)
            dep = client.get(name)
    show(dep, as_json)


@deployments.command("create")
@click.argument("name")
@config_options
@api_options
def create_cmd(**options: Any) -> None:
    """Create the deployment NAME from flags and/or --config FILE."""
    _send_config(ControlClient.create, must_change=False, **options)


@deployments.command("update")
@click.argument("name")
@config_options
@api_options
def update_cmd(**options: Any) -> None:
    """Change the deployment NAME: only the fields given (flags and/or --config FILE)."""
    _send_config(ControlClient.update, must_change=True, **options)


@deployments.command("delete")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@api_options
def delete_cmd(name: str, yes: bool, gateway: str | None, token: str | None, as_json: bool) -> None:
    """Delete the deployment NAME (its replicas stop)."""
    if not yes:
        click.confirm(f"delete deployment {name}?", abort=True)
    with api_errors(), connect(gateway, token) as client:
        client.delete(name)
    click.echo(json.dumps({"deleted": name}) if as_json else f"deleted {name}")
