"""The `wakegate` command."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import click

from wakegate import __version__
from wakegate.settings import Settings, load_settings


def _settings(config: str | None, **overrides: object) -> Settings:
    try:
        return load_settings(config, **overrides)
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"bad configuration: {exc}") from None


@click.group()
@click.version_option(__version__, prog_name="wakegate")
def main() -> None:
    """Serverless LLM deployments on your own GPUs."""


@main.command()
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="TOML config file.")
@click.option("--port", type=int, help="Gateway port (default 8080).")
@click.option("--host", help="Gateway bind address (default 127.0.0.1).")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where Redis data, logs and models live (default ./.wakegate).",
)
def up(config: str | None, port: int | None, host: str | None, state_dir: Path | None) -> None:
    """Run the whole stack: Redis, MQTT broker, scaler, gateway (embedded unless configured)."""
    from wakegate.up import run_up

    raise SystemExit(run_up(_settings(config, port=port, host=host, state_dir=state_dir)))


@main.command()
def gateway() -> None:
    """Run one gateway process (needs REDIS_URL; MQTT_URL optional)."""
    from router.__main__ import main as gateway_main

    gateway_main()


@main.command()
def scaler() -> None:
    """Run one scaler process (needs REDIS_URL; MQTT_URL optional)."""
    from scaler.__main__ import main as scaler_main

    scaler_main()


@main.command("create-token")
@click.option("--tenant", required=True, help="Tenant short code ([a-z0-9-]).")
@click.option("--name", help="Tenant display name.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False))
def create_token(tenant: str, name: str | None, config: str | None) -> None:
    """Create (if needed) a tenant and print a new API token for it."""
    from wakegate.spec import InvalidSpec, validate_name
    from wakegate.store import Store

    try:
        validate_name(tenant, "tenant")
    except InvalidSpec as exc:
        raise click.ClickException(str(exc)) from None
    settings = _settings(config)
    if not settings.redis_url:
        raise click.ClickException("set REDIS_URL to the Redis that the gateway uses")
    token = "pb_" + secrets.token_urlsafe(24)

    async def create() -> None:
        assert settings.redis_url
        store = Store.from_url(settings.redis_url)
        try:
            await store.ensure_tenant(tenant, name)
            await store.add_token(token, tenant)
        finally:
            await store.close()

    asyncio.run(create())
    click.echo(token)
