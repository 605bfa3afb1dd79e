"""The `wakegate` command."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from wakegate import __version__
from wakegate.settings import Settings
from wakegate.tools.cli_common import (
    api_options,
    config_option,
    gateway_and_token,
    option_list,
)
from wakegate.tools.cli_common import client_settings as _client_settings
from wakegate.tools.cli_common import settings_from as _settings
from wakegate.tools.cli_common import tenant_name as _tenant_name

if TYPE_CHECKING:  # the commands import the store when they run: `--help` stays quick
    from wakegate.store import Store

T = TypeVar("T")


@click.group()
@click.version_option(__version__, prog_name="wakegate")
def main() -> None:
    """Serverless LLM deployments on your own GPUs."""


@main.command()
@config_option
@click.option("--port", type=int, help="Gateway port (default 8080).")
@click.option("--host", help="Gateway bind address (default 127.0.0.1).")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where Redis data, logs and models live (default ./.wakegate).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Gateway processes on the one port (default: the machine's cores).",
)
def up(
    config: str | None,
    port: int | None,
    host: str | None,
    state_dir: Path | None,
    workers: int | None,
) -> None:
    """Run the whole stack: Redis, MQTT broker, scaler, gateway (embedded unless configured)."""
    from wakegate.tools.up import run_up

    settings = _settings(config, port=port, host=host, state_dir=state_dir)
    if workers is not None:
        settings = replace(settings, gateway_workers=workers)
    raise SystemExit(run_up(settings))


@main.command()
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Gateway processes on the one port, each a gateway of its own (default 1).",
)
def gateway(workers: int | None) -> None:
    """Run the gateway (needs REDIS_URL; MQTT_URL optional)."""
    from router.__main__ import main as gateway_main

    gateway_main([] if workers is None else ["--workers", str(workers)])


@main.command()
def scaler() -> None:
    """Run one scaler process (needs REDIS_URL; MQTT_URL optional)."""
    from scaler.__main__ import main as scaler_main

    scaler_main()


def _with_store(settings: Settings, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run `work` on the Redis that the gateway uses (REDIS_URL)."""
    from wakegate.sealing import SecretKeyError, box_from_settings
    from wakegate.store import Store

    if not settings.redis_url:
        raise click.ClickException("set REDIS_URL to the Redis that the gateway uses")
    url = settings.redis_url
    try:
        # Tokens are signed with the installation's key, which gateways check.
        box = box_from_settings(settings.secret_key_file)
    except SecretKeyError as exc:
        raise click.ClickException(str(exc)) from None

    async def run() -> T:
        store = Store.from_url(url, box=box)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


_DURATION_RE = re.compile(r"(\d+)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
# Longest lifetime --expires-in accepts (ten years).
_MAX_EXPIRY_S = 10 * 365 * 86_400


def _expires_at(raw: str | None) -> float | None:
    """The expiry time of `--expires-in 30d` (s, m, h, d or w), from now."""
    if raw is None:
        return None
    match = _DURATION_RE.fullmatch(raw.strip())
    if match is None:
        raise click.BadParameter(
            f"{raw!r}: use a number and a unit, e.g. 90m, 12h, 30d", param_hint="--expires-in"
        )
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if not 0 < seconds <= _MAX_EXPIRY_S:
        raise click.BadParameter(
            f"{raw!r}: must be more than 0 and at most 10 years", param_hint="--expires-in"
        )
    return time.time() + seconds


_token_options = option_list(
    click.option("--tenant", help="Tenant short code ([a-z0-9-])."),
    click.option(
        "--admin",
        is_flag=True,
        help="An operator token for the admin API (/admin/v1) and /metrics instead of "
        "a tenant's token.",
    ),
    click.option("--name", help="Tenant display name (with --admin: the operator's name)."),
    click.option("--label", help="What the token is for (shown by `tokens list`)."),
    click.option(
        "--expires-in",
        metavar="DURATION",
        help="Refused after this long, e.g. 12h, 30d (default: never).",
    ),
    config_option,
)


def _create_token(
    tenant: str | None,
    admin: bool,
    name: str | None,
    label: str | None,
    expires_in: str | None,
    config: str | None,
) -> None:
    if admin == (tenant is not None):
        raise click.UsageError("give either --tenant or --admin")
    expires_at = _expires_at(expires_in)
    settings = _client_settings(config)
    if admin:
        token = "wga_" + secrets.token_urlsafe(24)
        operator = name or label or "admin"
        _with_store(
            settings, lambda store: store.add_admin_token(token, operator, expires_at=expires_at)
        )
        click.echo(token)
        return
    assert tenant is not None
    code = _tenant_name(tenant)
    token = "pb_" + secrets.token_urlsafe(24)

    async def create(store: Store) -> None:
        await store.ensure_tenant(code, name)
        await store.add_token(token, code, label=label, expires_at=expires_at)

    _with_store(settings, create)
    click.echo(token)


@main.command("create-token")
@_token_options
def create_token(**options: Any) -> None:
    """Create (if needed) a tenant and print a new API token for it; or, with --admin, print
    a new operator token."""
    _create_token(**options)


@main.group()
def tokens() -> None:
    """API and operator tokens: create, list, revoke."""


@tokens.command("create")
@_token_options
def tokens_create(**options: Any) -> None:
    """The same as `wakegate create-token`."""
    _create_token(**options)


@tokens.command("list")
@click.option("--tenant", help="Only this tenant's tokens.")
@config_option
def tokens_list(tenant: str | None, config: str | None) -> None:
    """Print every token (id, kind, tenant or operator, label, created, expiry) as JSON lines;
    never the token itself."""
    records = _with_store(_client_settings(config), lambda store: store.tokens())
    for rec in records:
        if tenant is None or (rec.kind == "tenant" and rec.owner == tenant):
            click.echo(json.dumps(rec.to_wire()))


@tokens.command("revoke")
@click.argument("token_id")
@config_option
def tokens_revoke(token_id: str, config: str | None) -> None:
    """Delete the token TOKEN_ID (from `tokens list`): gateways refuse it within a second."""
    rec = _with_store(_client_settings(config), lambda store: store.revoke_token(token_id))
    if rec is None:
        raise click.ClickException(f"no token {token_id!r} (see `wakegate tokens list`)")
    click.echo(json.dumps({"revoked": rec.to_wire()}))


@main.command()
@api_options
@click.option("--once", is_flag=True, help="Print the overview once and exit.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes of the live view.",
)
def status(
    gateway: str | None, token: str | None, as_json: bool, once: bool, interval: float
) -> None:
    """The token's deployments, live: replicas by state, queued, in flight, the last scaling
    decision and its reason (what the status page at /ui shows too). --json prints the
    overview once, as JSON."""
    from rich.console import Console
    from rich.live import Live

    from wakegate.tools.status_cli import StatusUnavailable, fetch_overview, render

    url, token = gateway_and_token(gateway, token)
    try:
        view = fetch_overview(url, token)
    except StatusUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(view.to_json())
        return
    console = Console()
    if once:
        console.print(render(view))
        return
    try:
        with Live(render(view), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                try:
                    view = fetch_overview(url, token)
                    live.update(render(view), refresh=True)
                except StatusUnavailable as exc:
                    live.update(render(view, f"{exc} (showing the last overview)"), refresh=True)
    except KeyboardInterrupt:
        pass


@main.command("compose-secrets", hidden=True)
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
def compose_secrets(folder: Path) -> None:
    """Make the compose stack's credentials in FOLDER (its `secrets` service runs this)."""
    from wakegate.tools.compose_secrets import make_compose_secrets

    for path in make_compose_secrets(folder):
        click.echo(path)


@main.group()
def quota() -> None:
    """Operator quotas: defaults from the settings, overrides per tenant (in Redis)."""


def _limit(option: str, raw: str) -> int | None:
    """A quota value from the command line: an integer, or `none` for unlimited."""
    if raw.strip().lower() in ("none", "unlimited"):
        return None
    try:
        return int(raw)
    except ValueError:
        raise click.BadParameter(
            f"{raw!r} is not an integer or 'none'", param_hint=option
        ) from None


# CLI option -> the override's field (wakegate/quotas.py QuotaOverride).
_QUOTA_OPTIONS = {
    "max_deployments": "maxDeploymentsPerTenant",
    "max_replicas": "maxReplicasPerDeployment",
    "max_tenant_replicas": "maxReplicasPerTenant",
    "max_gpus": "maxGpusPerTenant",
    "guaranteed_gpus": "guaranteedGpusPerTenant",
    "max_queue_length": "maxQueueLengthPerDeployment",
    "max_async_jobs": "maxAsyncJobsPerTenant",
    "max_async_bytes": "maxAsyncBytesPerTenant",
    "max_request_log_bytes": "maxRequestLogBytesPerDeployment",
}
_OPTION_OF_FIELD = {v: "--" + k.replace("_", "-") for k, v in _QUOTA_OPTIONS.items()}


def _quota_report(settings: Settings, tenant: str, store: Store) -> Awaitable[dict[str, Any]]:
    from wakegate.quotas import quota_report

    return quota_report(store, settings, tenant)


@quota.command("show")
@click.option("--tenant", help="One tenant's effective quotas (default: defaults and overrides).")
@config_option
def quota_show(tenant: str | None, config: str | None) -> None:
    """Print quotas as JSON."""
    from wakegate.quotas import default_quotas

    settings = _client_settings(config)
    if tenant is not None:
        code = _tenant_name(tenant)
        out = _with_store(settings, lambda store: _quota_report(settings, code, store))
    else:

        async def everything(store: Store) -> dict[str, Any]:
            overrides = await store.quota_overrides()
            return {
                "defaults": default_quotas(settings).to_wire(),
                "overrides": {t: o.to_wire() for t, o in overrides.items()},
            }

        out = _with_store(settings, everything)
    click.echo(json.dumps(out, indent=2))


@quota.command("set")
@click.option("--tenant", required=True, help="Tenant short code.")
@click.option("--max-deployments", metavar="N|none", help="Deployments per tenant.")
@click.option("--max-replicas", metavar="N|none", help="Replicas per deployment.")
@click.option(
    "--max-tenant-replicas", metavar="N|none", help="Replicas per tenant, CPU included (soft)."
)
@click.option("--max-gpus", metavar="N|none", help="GPUs per tenant (soft).")
@click.option(
    "--guaranteed-gpus",
    metavar="N|none",
    help="Reserved GPUs granted to the tenant (usesGuaranteedCapacity; 0: none).",
)
@click.option("--max-queue-length", metavar="N|none", help="Waiting requests per deployment.")
@click.option("--max-async-jobs", metavar="N|none", help="Async requests stored per tenant.")
@click.option("--max-async-bytes", metavar="N|none", help="Bytes of async requests per tenant.")
@click.option(
    "--max-request-log-bytes", metavar="N|none", help="Bytes of request log per deployment."
)
@config_option
def quota_set(tenant: str, config: str | None, **limits: str | None) -> None:
    """Override quotas of one tenant (`none`: unlimited); options left out are kept."""
    from wakegate.quotas import parse_override
    from wakegate.spec import InvalidSpec

    code = _tenant_name(tenant)
    body = {
        field: _limit(_OPTION_OF_FIELD[field], raw)
        for option, field in _QUOTA_OPTIONS.items()
        if (raw := limits[option]) is not None
    }
    if not body:
        raise click.UsageError("give at least one of " + ", ".join(_OPTION_OF_FIELD.values()))
    try:
        change = parse_override(body)
    except InvalidSpec as exc:
        option = _OPTION_OF_FIELD.get(exc.field, exc.field)
        raise click.BadParameter(exc.message, param_hint=option) from None
    settings = _client_settings(config)

    async def apply(store: Store) -> dict[str, Any]:
        await store.set_quota_override(code, change)
        return await _quota_report(settings, code, store)

    click.echo(json.dumps(_with_store(settings, apply), indent=2))


@quota.command("unset")
@click.option("--tenant", required=True, help="Tenant short code.")
@config_option
def quota_unset(tenant: str, config: str | None) -> None:
    """Remove a tenant's override: the defaults apply again."""
    code = _tenant_name(tenant)
    settings = _client_settings(config)

    async def remove(store: Store) -> dict[str, Any]:
        await store.delete_quota_override(code)
        return await _quota_report(settings, code, store)

    click.echo(json.dumps(_with_store(settings, remove), indent=2))


@main.command()
@click.argument(
    "traces", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["azure", "mooncake"]),
    help="Trace format (default: by file extension).",
)
@click.option(
    "--policy",
    "policies",
    multiple=True,
    default=["wakegate"],
    show_default=True,
    type=click.Choice(["wakegate", "knative", "ray", "always-on"]),
    help="Scaling policy; repeat to compare several on the same trace.",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="POLICY:KEY=VALUE",
    help="A policy knob, e.g. knative:stable_window_s=60 (trace seconds).",
)
@click.option(
    "--speed",
    type=float,
    default=10.0,
    show_default=True,
    help="Time compression: 10 replays an hour in six minutes.",
)
@click.option("--start-s", type=float, default=0.0, help="Replay from this trace second.")
@click.option("--end-s", type=float, default=None, help="Replay up to this trace second.")
@click.option("--min-replicas", type=int, default=0, show_default=True)
@click.option("--max-replicas", type=int, default=8, show_default=True)
@click.option(
    "--threshold",
    type=int,
    default=16,
    show_default=True,
    help="scale_up_threshold: requests one replica should carry.",
)
@click.option("--cooldown-s", type=float, default=120.0, show_default=True)
@click.option(
    "--load-s", type=float, default=30.0, show_default=True, help="Simulated model load time."
)
@click.option(
    "--tps",
    type=float,
    default=40.0,
    show_default=True,
    help="Simulated decode tokens per second per sequence.",
)
@click.option(
    "--batch",
    type=int,
    default=16,
    show_default=True,
    help="Simulated batch capacity (= replica concurrency).",
)
@click.option(
    "--cache-blocks",
    type=int,
    default=0,
    show_default=True,
    help="Simulated prefix-cache capacity per replica, in 512-token blocks.",
)
@click.option(
    "--routing",
    "routings",
    multiple=True,
    default=["prefix"],
    show_default=True,
    type=click.Choice(["prefix", "least-loaded", "random"]),
    help="How the gateway picks a replica; repeat to compare several.",
)
@click.option(
    "--warm",
    is_flag=True,
    help="Start the clock once the deployment's replicas are ready (min_replicas, or all of "
    "max_replicas under always-on): measures serving without the first cold start.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write each run's results JSON and plot, and the table, here (as each run ends).",
)
@click.option(
    "--no-plots",
    is_flag=True,
    help="With --out: no plots (they need matplotlib: pip install 'wakegate[bench]').",
)
@click.option(
    "--deployments",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Split each trace across this many deployments on one pool (whole conversations "
    "where the trace has them, else request by request).",
)
@click.option(
    "--tenants",
    type=click.Choice(["per-deployment", "one"]),
    default="per-deployment",
    show_default=True,
    help="Shared pool: a tenant per deployment, or all deployments in one tenant.",
)
@click.option(
    "--pool",
    default=None,
    help="Shared pool: the simulated GPUs, e.g. a10_24gb=6 (default: room for every "
    "deployment's --max-replicas).",
)
@click.option(
    "--allocator",
    "allocators",
    multiple=True,
    type=click.Choice(["fair", "fcfs", "static"]),
    help="Shared pool: how the scaler shares it (default fair); repeat to compare several.",
)
@click.option(
    "--guaranteed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Shared pool: the first N deployments use guaranteed capacity (their tenants granted it).",
)
@click.option(
    "--stagger-s",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Shared pool: deployment i+1's requests come i x this many trace seconds later, "
    "wrapped around the trace's end, so that parts of one trace burst at different times.",
)
@click.option(
    "--reclaim-grace-s",
    type=float,
    default=30.0,
    show_default=True,
    help="Shared pool: a replica younger than this (since ready) is never reclaimed.",
)
def replay(
    traces: tuple[Path, ...],
    fmt: str | None,
    policies: tuple[str, ...],
    params: tuple[str, ...],
    speed: float,
    start_s: float,
    end_s: float | None,
    min_replicas: int,
    max_replicas: int,
    threshold: int,
    cooldown_s: float,
    load_s: float,
    tps: float,
    batch: int,
    cache_blocks: int,
    routings: tuple[str, ...],
    warm: bool,
    out: Path | None,
    deployments: int,
    tenants: str,
    pool: str | None,
    allocators: tuple[str, ...],
    guaranteed: int,
    stagger_s: float,
    reclaim_grace_s: float,
    no_plots: bool,
) -> None:
    """Replay request traces through the real gateway and scaler on the sim backend.

    One trace: one deployment, under each --policy. Several traces, or any of --deployments,
    --pool, --allocator, --guaranteed, --stagger-s: several deployments sharing one pool,
    under each --allocator.
    """
    from wakegate.tools.cli_progress import run_bars
    from wakegate.tools.replay import report
    from wakegate.tools.replay.run import REPLAY_ENGINE, Plan
    from wakegate.tools.replay.traces import load_trace, window

    # What --out needs is checked before anything runs: a replay takes minutes.
    plots = not no_plots
    if out is not None:
        _check_out(out, plots)
    knobs: dict[str, dict[str, float]] = {}
    for p in params:
        try:
            pol, kv = p.split(":", 1)
            k, v = kv.split("=", 1)
            knobs.setdefault(pol, {})[k] = float(v)
        except ValueError:
            raise click.BadParameter(f"{p!r}: use POLICY:KEY=VALUE", param_hint="--param") from None
    engine = replace(REPLAY_ENGINE, load_s=load_s, tps=tps, batch=batch, cache_blocks=cache_blocks)
    if len(traces) > 1 or deployments > 1 or pool or allocators or guaranteed or stagger_s:
        from wakegate.tools.replay.allocators import compare_allocators
        from wakegate.tools.replay.pool import PoolPlan, plan_members, pool_for_peaks

        for flag, given in (("--policy", policies), ("--routing", routings)):
            if len(given) > 1:
                raise click.BadParameter("one value on a shared pool", param_hint=flag)
        if warm:
            raise click.BadParameter("not on a shared pool", param_hint="--warm")
        loaded = [(t.name, window(load_trace(t, fmt), start_s, end_s)) for t in traces]
        if not all(reqs for _, reqs in loaded):
            raise click.ClickException("no request in that window of a trace")
        members = plan_members(
            loaded,
            per_trace=deployments,
            tenants="one" if tenants == "one" else "per-deployment",
            guaranteed=guaranteed,
            stagger_s=stagger_s,
        )
        try:
            template = PoolPlan(
                members=members,
                pool=pool or pool_for_peaks(len(members), max_replicas),
                policy=policies[0],
                policy_params=knobs.get(policies[0], {}),
                speed=speed,
                min_replicas=min_replicas,
                max_replicas=max_replicas,
                scale_up_threshold=threshold,
                cooldown_s=cooldown_s,
                engine=engine,
                routing=routings[0],
                reclaim_grace_s=reclaim_grace_s,
            )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        with run_bars() as bars:
            pool_summaries = compare_allocators(
                template, allocators or ("fair",), out, bars.echo, bars.run, plots
            )
        click.echo(report.pool_table(pool_summaries))
        return
    trace = traces[0]
    requests = window(load_trace(trace, fmt), start_s, end_s)
    if not requests:
        raise click.ClickException("no request in that window of the trace")
    plans: list[tuple[str, Plan]] = []
    for policy, routing in [(p, r) for p in policies for r in routings]:
        plan = Plan(
            trace_name=trace.name,
            requests=requests,
            policy=policy,
            policy_params=knobs.get(policy, {}),
            speed=speed,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            scale_up_threshold=threshold,
            cooldown_s=cooldown_s,
            engine=engine,
            routing=routing,
            warm=warm,
        )
        if warm and plan.warm_replicas == 0:
            raise click.BadParameter(
                f"policy {policy!r} with --min-replicas 0 has no replica to warm up",
                param_hint="--warm",
            )
        plans.append((policy if len(routings) == 1 else f"{policy}-{routing}", plan))
    from wakegate.tools.replay.policies import compare_policies

    with run_bars() as bars:
        summaries = compare_policies(plans, out, bars.echo, bars.run, plots)
    click.echo(report.table(summaries))


def _check_out(out: Path, plots: bool) -> None:
    """Fail at once when --out cannot take the results: a folder that cannot be written, or
    plots without matplotlib."""
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.UsageError(
                "--out writes a plot per run with matplotlib, which is not installed: "
                "pip install 'wakegate[bench]', or add --no-plots"
            ) from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".wakegate-write-check"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise click.UsageError(f"--out {out}: cannot write there ({exc})") from None


def _add_commands() -> None:
    """Commands kept in modules of their own."""
    from wakegate.tools.cli_accelerators import accelerators
    from wakegate.tools.cli_deployments import deployments
    from wakegate.tools.cli_events import events

    main.add_command(accelerators)
    main.add_command(deployments)
    main.add_command(events)


_add_commands()
