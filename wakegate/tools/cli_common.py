"""What the `wakegate` command and its groups (cli_deployments.py, cli_events.py) share: the
settings they run with, options several commands take, where the gateway and a token are
found (one way for every command that talks to the API), and a tenant name checked as the
API checks it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import click

from wakegate.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

# Where the CLI finds the gateway and a token: wakegate's own variables first, then the ones
# the Predibase SDK reads (so a shell set up for the SDK works as it is).
URL_ENV = ["WAKEGATE_URL", "PREDIBASE_GATEWAY"]
TOKEN_ENV = ["WAKEGATE_TOKEN", "PREDIBASE_API_TOKEN"]


def option_list(*options: Callable[[F], F]) -> Callable[[F], F]:
    """Several click options as one decorator, for commands that take the same ones; `--help`
    lists them in the order given."""

    def apply(fn: F) -> F:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


# --config of every command that reads the settings.
config_option = click.option(
    "--config", type=click.Path(exists=True, dir_okay=False), help="TOML config file."
)


def settings_from(config: str | None, **overrides: object) -> Settings:
    try:
        return load_settings(config, **overrides)
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"bad configuration: {exc}") from None


def client_settings(config: str | None) -> Settings:
    """Settings for commands that work on a running stack's Redis (and broker): without
    REDIS_URL, the stack `wakegate up` runs from the state dir (its URLs and key, left in the
    state dir)."""
    settings = settings_from(config)
    if settings.redis_url is None:
        from wakegate.tools.up import CONNECT_FILE

        connect = settings.state_dir / CONNECT_FILE
        if connect.exists():
            running = settings_from(str(connect))
            settings = replace(
                settings,
                redis_url=running.redis_url,
                mqtt_url=settings.mqtt_url or running.mqtt_url,
                secret_key_file=settings.secret_key_file or running.secret_key_file,
            )
    return settings


# --gateway (or --url), --token and --json, shared by every command that talks to the API.
api_options = option_list(
    click.option(
        "--gateway",
        "--url",
        "gateway",
        envvar=URL_ENV,
        show_envvar=True,
        metavar="URL",
        help="The gateway's URL (default: the one `wakegate up` runs from the state dir, "
        "else WAKEGATE_HOST and WAKEGATE_PORT).",
    ),
    click.option(
        "--token",
        envvar=TOKEN_ENV,
        show_envvar=True,
        help="A tenant's API token (default: WAKEGATE_DEFAULT_TOKEN, else the token "
        "`wakegate up` made in the state dir).",
    ),
    click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts."),
)


def gateway_and_token(gateway: str | None, token: str | None) -> tuple[str, str]:
    """The gateway URL and API token of a command that talks to the API. Given ones (a flag,
    else WAKEGATE_URL / WAKEGATE_TOKEN, else the Predibase SDK's PREDIBASE_GATEWAY /
    PREDIBASE_API_TOKEN: click reads those) win. Else the gateway is the one `wakegate up`
    runs from the state dir (the address in its connect file), or WAKEGATE_HOST /
    WAKEGATE_PORT without one; the token WAKEGATE_DEFAULT_TOKEN, or the one `up` left in the
    state dir."""
    from wakegate.tools.up import CONNECT_FILE, TOKEN_FILE

    settings = settings_from(None)
    if gateway is None:
        connect = settings.state_dir / CONNECT_FILE
        where = settings_from(str(connect)) if connect.exists() else settings
        host = "127.0.0.1" if where.host in ("0.0.0.0", "::", "") else where.host
        gateway = f"http://{host}:{where.port}"
    if token is None:
        token = settings.default_token
    if token is None:
        try:
            token = (settings.state_dir / TOKEN_FILE).read_text().strip() or None
        except OSError:  # no stack here, or another user's
            token = None
    if not token:
        raise click.UsageError(
            "no API token: give --token, set WAKEGATE_TOKEN (or PREDIBASE_API_TOKEN), or run "
            "`wakegate up` here (it leaves its token in the state dir)"
        )
    return gateway, token


def tenant_name(tenant: str) -> str:
    from wakegate.spec import InvalidSpec, validate_name

    try:
        return validate_name(tenant, "tenant")
    except InvalidSpec as exc:
        raise click.ClickException(str(exc)) from None
