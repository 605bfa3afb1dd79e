"""Secrets and operator surfaces: hfTokens encrypted at rest, signed token records, the token
lifecycle (list, revoke, expiry), failed authentications limited, /metrics for operators."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from harness import ROOT, Stack, wait_until
from test_quotas import admin_headers

from scaler.actuator import launch_spec
from scaler.engines import get_engine
from wakegate.catalog import MODELS
from wakegate.engines import EngineRefused
from wakegate.sealing import SecretBox, generate_key, seal_secrets
from wakegate.spec import DeploymentConfig, DeploymentSpec, parse_create
from wakegate.store import Store, admin_token_key, dep_key, token_key

PLAIN = "hf_PLAINTEXT_token_that_must_never_reach_redis"


def key_file(folder: Path) -> Path:
    path = folder / "secret.key"
    path.write_text(generate_key() + "\n")
    path.chmod(0o600)
    return path


def raw_redis(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.redis_url, decode_responses=True)


def wakegate_cli(stack: Stack, *args: str) -> str:
    env = {**os.environ, **stack.env}
    out = subprocess.run(
        [sys.executable, "-m", "wakegate", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def status_of(stack: Stack, token: str) -> int:
    r = httpx.get(f"{stack.base}/users/current", headers={"Authorization": f"Bearer {token}"})
    return r.status_code


# --- hfToken at rest --------------------------------------------------------------------------


def test_hf_token_is_stored_encrypted_in_redis_and_its_aof_and_a_repeat_changes_nothing(
    make_stack: Callable[..., Stack], infra: dict[str, Any], tmp_path: Path
) -> None:
    stack = make_stack(backend="sim", secret_key_file=key_file(tmp_path))
    r = stack.api(
        "POST",
        "/v2/deployments",
        json={"name": "gated", "config": {"baseModel": "sim-llm", "hfToken": PLAIN}},
    )
    assert r.status_code == 200, r.text
    assert PLAIN not in r.text
    db = raw_redis(stack)
    raw = db.get(dep_key(f"{stack.tenant}/gated", "spec"))
    assert raw is not None and PLAIN not in raw
    sealed = json.loads(raw)["config"]["hf_token"]
    assert sealed.startswith("wgsealed:v1:")

    # The append-only file has the sealed value (once fsynced), never the plain one.
    aof = Path(infra["tmp"]) / "redis"

    def aof_bytes() -> bytes:
        return b"".join(p.read_bytes() for p in aof.rglob("*") if p.is_file())

    wait_until(lambda: sealed.encode() in aof_bytes(), 30, "the sealed token in the AOF")
    assert PLAIN.encode() not in aof_bytes()

    # The same token again is no change (no rolling restart); another one is.
    r = stack.api("PUT", "/v2/deployments/gated", json={"config": {"hfToken": PLAIN}})
    assert r.status_code == 200, r.text
    record = json.loads(db.get(dep_key(f"{stack.tenant}/gated", "spec")) or "{}")
    assert record["config"]["hf_token"] == sealed and record["engine_revision"] == 1
    r = stack.api("PUT", "/v2/deployments/gated", json={"config": {"hfToken": PLAIN + "2"}})
    assert r.status_code == 200, r.text
    record = json.loads(db.get(dep_key(f"{stack.tenant}/gated", "spec")) or "{}")
    assert record["engine_revision"] == 3 and PLAIN not in json.dumps(record)

    # The scaler opens it to start replicas: the deployment serves.
    assert stack.generate("gated", max_new_tokens=2).status_code == 200

    # A client cannot hand the gateway a sealed value to open for it.
    r = stack.api(
        "POST",
        "/v2/deployments",
        json={"name": "forged", "config": {"baseModel": "sim-llm", "hfToken": sealed}},
    )
    assert r.status_code == 400 and r.json()["field"] == "config.hfToken", r.text


def test_a_scaler_without_the_key_fails_the_deployment_clearly_instead_of_starting_it_tokenless(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack(backend="sim", secret_key_file=key_file(tmp_path))
    stack.scalers[0].stop()
    stack.env.pop("WAKEGATE_SECRET_KEY_FILE")
    stack.start_scaler()
    stack.create("gated", baseModel="sim-llm", hfToken=PLAIN)
    r = stack.generate("gated", max_new_tokens=2)
    assert r.status_code == 424, r.text
    assert "hf_token is stored encrypted" in r.text and "WAKEGATE_SECRET_KEY_FILE" in r.text
    assert stack.sim_replicas("gated") == {}, "no replica started without its token"


def test_the_scaler_hands_the_backend_the_token_in_clear_and_only_with_the_key() -> None:
    box = SecretBox(generate_key())
    req = parse_create({"name": "d", "config": {"baseModel": "qwen3-8b", "hfToken": PLAIN}})
    config = seal_secrets(DeploymentConfig.from_update(req.config), box)
    spec = DeploymentSpec("acme", "d", "uuid-d", None, config, "ready", 1, 0, 0)
    assert PLAIN not in json.dumps(spec.to_record())
    opened = launch_spec(spec, box)
    engine = get_engine(MODELS["qwen3-8b"].engine, spec=opened)
    plan = engine.launch(opened, "127.0.0.1", 41000, Path("/nonexistent"), {})
    assert plan.env["HF_TOKEN"] == PLAIN and PLAIN not in " ".join(plan.argv)
    with pytest.raises(EngineRefused) as refused:
        launch_spec(spec, None)
    assert refused.value.field == "config.hfToken"
    with pytest.raises(EngineRefused):
        launch_spec(spec, SecretBox(generate_key()))  # another installation's key


async def test_secrets_stored_before_there_was_a_key_are_sealed_and_tokens_signed(
    store: Store,
) -> None:
    spec = DeploymentSpec(
        "acme", "old", "uuid-old", None, DeploymentConfig(base_model="sim-llm", hf_token=PLAIN),
        "ready", 1, 0, 0,
    )  # fmt: skip
    assert await store.create_deployment(spec, [])
    await store.ensure_tenant("acme")
    await store.add_token("pb_unsigned", "acme")  # made while there was no key
    await store.redis.set(token_key("pb_bare"), "acme")  # from before token records
    box = SecretBox(generate_key())
    keyed = Store(store.redis, box)
    for token in ("pb_unsigned", "pb_bare"):
        assert await keyed.tenant_for_token(token) is None  # unsigned: refused under a key
    assert len(await keyed.sign_legacy_tokens()) == 2
    for token in ("pb_unsigned", "pb_bare"):
        assert (await keyed.tenant_for_token(token) or {}).get("code") == "acme"
    assert await keyed.sign_legacy_tokens() == []

    assert await keyed.seal_stored_secrets() == 1
    raw = await store.redis.get(dep_key("acme/old", "spec"))
    assert PLAIN not in raw
    stored = await keyed.get_deployment("acme/old")
    assert stored is not None and box.open(stored.config.hf_token or "") == PLAIN
    assert await keyed.seal_stored_secrets() == 0


async def test_unsigned_records_written_after_the_migration_are_never_signed(
    store: Store,
) -> None:
    """Review 2026-12b, finding 5: every start signed whatever unsigned record it found, so a
    record written into Redis became a token at the next restart. The migration runs once."""
    keyed = Store(store.redis, SecretBox(generate_key()))
    await keyed.ensure_tenant("acme")
    assert await keyed.sign_legacy_tokens() == []  # a new installation: nothing to sign
    await store.redis.set(token_key("pb_forged"), "acme")
    await store.add_token("pb_forged_record", "acme")  # a record without a MAC
    await store.redis.set(
        admin_token_key("wga_forged"),
        json.dumps({"id": "f0", "kind": "admin", "owner": "mallory", "created_at": 0}),
    )
    assert await keyed.sign_legacy_tokens() == []  # the next start
    for token in ("pb_forged", "pb_forged_record"):
        assert await keyed.tenant_for_token(token) is None
    assert await keyed.admin_for_token("wga_forged") is None


async def test_a_revoked_start_up_token_stays_revoked(store: Store) -> None:
    """Finding 5 too: `wakegate up` re-added its state dir's tokens on every start."""
    await store.ensure_tenant("acme")
    assert await store.ensure_token("tenant", "pb_state_dir", "acme") == "added"
    before = (await store.tokens())[-1]
    assert await store.ensure_token("tenant", "pb_state_dir", "acme") == "kept"
    assert [r.created_at for r in await store.tokens() if r.id == before.id] == [
        before.created_at
    ], "kept as it was, not rewritten"
    assert await store.ensure_token("admin", "wga_state_dir", "admin") == "added"
    for rec in await store.tokens():
        assert await store.revoke_token(rec.id) is not None
    assert await store.ensure_token("tenant", "pb_state_dir", "acme") == "revoked"
    assert await store.ensure_token("admin", "wga_state_dir", "admin") == "revoked"
    assert await store.tenant_for_token("pb_state_dir") is None
    assert await store.admin_for_token("wga_state_dir") is None


# --- tokens -----------------------------------------------------------------------------------


def test_tokens_are_listed_without_secrets_revoked_and_expire(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack(secret_key_file=key_file(tmp_path), auth_failures_max=10_000)
    token = wakegate_cli(
        stack, "create-token", "--tenant", "beta", "--label", "ci", "--expires-in", "1h"
    ).strip()
    # Long enough to be seen valid after the CLI exits on a loaded machine.
    short = wakegate_cli(stack, "tokens", "create", "--tenant", "beta", "--expires-in", "10s")
    short = short.strip()
    assert status_of(stack, short) == 200  # ten seconds to live
    assert status_of(stack, token) == 200
    listing = [json.loads(line) for line in wakegate_cli(stack, "tokens", "list").splitlines()]
    text = json.dumps(listing)
    assert token not in text and token_key(token).split(":")[-1] not in text
    mine = [t for t in listing if t.get("tenant") == "beta" and t["label"] == "ci"]
    assert len(mine) == 1 and mine[0]["expiresAt"] and mine[0]["createdAt"]
    assert {t.get("tenant") for t in listing} >= {"beta", stack.tenant}

    wakegate_cli(stack, "tokens", "revoke", mine[0]["id"])
    wait_until(lambda: status_of(stack, token) == 401, 30, "the revoked token refused")
    ids = [json.loads(line)["id"] for line in wakegate_cli(stack, "tokens", "list").splitlines()]
    assert mine[0]["id"] not in ids

    # Expiry: Redis drops the record at the expiry time and the gateway checks it too.
    wait_until(lambda: status_of(stack, short) == 401, 60, "the expired token refused")


def test_a_token_record_written_into_redis_without_the_key_opens_nothing(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack(secret_key_file=key_file(tmp_path))
    db = raw_redis(stack)
    assert status_of(stack, stack.token) == 200  # signed by the harness with the key
    db.set(token_key("pb_forged_bare"), stack.tenant)  # the format before signed records
    forged = {
        "id": "f" * 16,
        "kind": "tenant",
        "owner": stack.tenant,
        "created_at": 0.0,
        "expires_at": None,
        "label": None,
        "mac": "0" * 64,
    }
    db.set(token_key("pb_forged_record"), json.dumps(forged))
    # A genuine record copied onto another token's key does not verify either.
    db.set(token_key("pb_forged_copy"), db.get(token_key(stack.token)) or "")
    for fake in ("pb_forged_bare", "pb_forged_record", "pb_forged_copy"):
        assert status_of(stack, fake) == 401, fake


def test_failed_authentications_from_one_address_get_429_and_valid_tokens_still_pass(
    make_stack: Callable[..., Stack],
) -> None:
    """Review 2026-12b, finding 4: the limiter refused valid tenant and admin tokens of an
    address that had failed too often (behind a proxy, everyone). Only failures are refused."""
    stack = make_stack(auth_failures_max=3, auth_failures_window_s=600)
    admin = admin_headers(stack)
    for i in range(3):
        assert status_of(stack, f"pb_guess_{i}") == 401
    r = httpx.get(f"{stack.base}/users/current", headers={"Authorization": "Bearer pb_guess_x"})
    assert r.status_code == 429, r.text
    assert 0 < int(r.headers["Retry-After"]) <= 600
    assert "too many failed authentications" in r.json()["error"]
    bad_admin = httpx.get(
        f"{stack.base}/admin/v1/quotas", headers={"Authorization": "Bearer wga_guess"}
    )
    assert bad_admin.status_code == 429
    # A valid token not seen before, from the same address, is let in: tenant and admin.
    assert status_of(stack, stack.token) == 200
    quotas = httpx.get(f"{stack.base}/admin/v1/quotas", headers=admin)
    assert quotas.status_code == 200, quotas.text
    assert status_of(stack, "pb_guess_y") == 429, "and failures still are not"


# --- /metrics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["gateway", "scaler"])
def test_metrics_are_for_operators_only(stack: Stack, which: str) -> None:
    port = stack.port if which == "gateway" else stack.scaler_port
    url = f"http://127.0.0.1:{port}/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    tenant = httpx.get(url, headers=stack.headers)
    assert tenant.status_code in (401, 403) and "wakegate_" not in tenant.text
    r = httpx.get(url, headers=stack.metrics_headers)
    assert r.status_code == 200 and "wakegate_" in r.text


def test_a_deleted_deployment_leaves_no_series_in_gateway_or_scaler_metrics(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(backend="sim")
    stack.create("gone", baseModel="sim-llm", minReplicas=0, maxReplicas=1)
    assert stack.generate("gone", max_new_tokens=2).status_code == 200
    label = f'deployment="{stack.tenant}/gone"'

    def series() -> list[str]:
        lines: list[str] = []
        for port in (stack.port, stack.scaler_port):
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=stack.metrics_headers).text
            lines += [ln for ln in text.splitlines() if label in ln]
        return lines

    assert series(), "the deployment has series while it exists"
    stack.delete("gone")
    db = raw_redis(stack)
    wait_until(lambda: not db.exists(dep_key(f"{stack.tenant}/gone", "spec")), 60, "the purge")
    wait_until(lambda: not series(), 30, "no series of the deleted deployment")
