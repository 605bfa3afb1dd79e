"""What the `wakegate` command and its groups (cli_deployments.py, cli_events.py) share: the
settings they run with, and a tenant name checked as the API checks it."""

from __future__ import annotations

from dataclasses import replace

import click

from wakegate.settings import Settings, load_settings


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


def tenant_name(tenant: str) -> str:
    from wakegate.spec import InvalidSpec, validate_name

    try:
        return validate_name(tenant, "tenant")
    except InvalidSpec as exc:
        raise click.ClickException(str(exc)) from None
