"""Names are matched whole: a trailing newline (which `re.match` with `$` lets through) makes
no deployment, tenant, adapter, image tag, speculator or replica id (review finding 12)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from click.testing import CliRunner
from harness import Stack, run_async
from test_control_plane import names

from scaler.backends.adapters import adapter_path
from scaler.backends.kubernetes import dns_label, label_value
from scaler.sim.host import SimHost
from wakegate.engines import EngineRefused, validate_spec
from wakegate.engines.gpu import adapter_ids, speculation
from wakegate.settings import Settings
from wakegate.spec import DeploymentConfig, DeploymentSpec, InvalidSpec, validate_name
from wakegate.store import Store
from wakegate.tools.cli import main as cli


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("nl-llm", True),
        ("nl-llm\n", False),
        ("\nnl-llm", False),
        ("nl\nllm", False),
        ("a", True),
        ("a\n", False),
    ],
    ids=["plain", "trailing-newline", "leading-newline", "inner-newline", "one-char", "one-nl"],
)
def test_deployment_names_and_tenant_codes_are_matched_whole(name: str, ok: bool) -> None:
    if ok:
        assert validate_name(name) == name
    else:
        with pytest.raises(InvalidSpec) as refused:
            validate_name(name, "tenant")
        assert refused.value.field == "tenant"


def _refused(check: Callable[[], Any]) -> str:
    with pytest.raises(EngineRefused) as refused:
        check()
    return refused.value.field


def test_adapter_ids_with_a_trailing_newline_are_refused() -> None:
    assert adapter_ids(DeploymentConfig(preloaded_adapters=("org/adapter",))) == ["org/adapter"]
    field = _refused(lambda: adapter_ids(DeploymentConfig(preloaded_adapters=("org/adapter\n",))))
    assert field == "config.preloadedAdapters"
    settings = Settings(adapter_dir=Path("/nonexistent"))
    assert _refused(lambda: adapter_path("org/adapter\n", settings)) == "config.preloadedAdapters"


def test_a_speculator_repo_with_a_trailing_newline_is_refused() -> None:
    assert speculation(DeploymentConfig(speculator="org/draft")).model == "org/draft"
    refused = _refused(lambda: speculation(DeploymentConfig(speculator="org/draft\n")))
    assert refused == "config.speculator"


def _lorax_spec(tag: str) -> DeploymentSpec:
    config = DeploymentConfig(base_model="mistral-7b-instruct-v0-3", lorax_image_tag=tag)
    now = time.time()
    return DeploymentSpec("acme", "tagged", "u", None, config, "ready", 1, now, now)


def test_a_lorax_image_tag_with_a_trailing_newline_is_refused() -> None:
    validate_spec(_lorax_spec("0.12"))
    assert _refused(lambda: validate_spec(_lorax_spec("0.12\n"))) == "config.loraxImageTag"


@pytest.mark.parametrize("convert", [label_value, dns_label], ids=["label-value", "dns-label"])
def test_kubernetes_names_with_a_newline_are_hashed_not_used_verbatim(
    convert: Callable[[str], str],
) -> None:
    assert convert("acme-llm") == "acme-llm"
    converted = convert("acme-llm\n")
    assert "\n" not in converted and converted != "acme-llm"


async def test_the_sim_host_refuses_a_replica_id_with_a_trailing_newline(tmp_path: Path) -> None:
    host = SimHost(pool={"cpu": 1}, acquire_s=0, time_scale=1, bind_host="127.0.0.1",
                   advertise_host="127.0.0.1", state_dir=tmp_path)  # fmt: skip
    resp = await host.create({"replica_id": "nl-llm-1234\n", "deployment": "acme/nl-llm"})
    assert resp.status == 422
    assert not host.replicas


def test_create_token_refuses_a_tenant_with_a_trailing_newline(fresh_redis_url: str) -> None:
    result = CliRunner().invoke(
        cli, ["create-token", "--tenant", "evil\n"], env={"REDIS_URL": fresh_redis_url}
    )
    assert result.exit_code != 0
    assert "not a valid name" in result.output


def test_a_name_with_a_trailing_newline_is_a_400_and_stores_nothing(stack: Stack) -> None:
    before = names(stack)
    body = {"name": "nl-llm\n", "config": {"baseModel": "sim-llm"}}
    r = stack.api("POST", "/v2/deployments", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "name"
    assert names(stack) == before


def test_a_stored_deployment_with_a_newline_is_unreachable_by_path(stack: Stack) -> None:
    """A deployment stored before names were matched whole: no route reaches it."""
    bad = "legacy-nl-" + uuid.uuid4().hex[:6] + "\n"
    key = f"{stack.tenant}/{bad}"
    now = time.time()
    config = DeploymentConfig(base_model="sim-llm")
    spec = DeploymentSpec(stack.tenant, bad, "u", None, config, "ready", 1, now, now)

    async def put() -> None:
        store = Store.from_url(stack.redis_url)
        try:
            await store.put_deployment(spec)
        finally:
            await store.close()

    async def stored() -> DeploymentSpec | None:
        store = Store.from_url(stack.redis_url)
        try:
            return await store.get_deployment(key)
        finally:
            await store.close()

    run_async(put())
    path = f"/v2/deployments/{quote(bad)}"
    try:
        for method, kw in [
            ("GET", {}),
            ("PUT", {"json": {"config": {"cooldownTime": 60}}}),
            ("DELETE", {}),
            ("GET", {"path": path + "/requests"}),
        ]:
            r = stack.api(method, kw.pop("path", path), **kw)
            assert r.status_code == 404, (method, r.text)
            assert "error" in r.json()
        for route, body in [
            ("/generate", {"inputs": "hi"}),
            ("/async", {"inputs": "hi"}),
            ("/v1/completions", {"prompt": "hi"}),
        ]:
            url = f"{stack.base}/{stack.tenant}/deployments/v2/llms/{quote(bad)}{route}"
            r = httpx.post(url, headers=stack.headers, json=body, timeout=30)
            assert r.status_code == 404, (route, r.text)
        assert run_async(stored()) == spec  # nothing changed it
    finally:

        async def purge() -> None:
            store = Store.from_url(stack.redis_url)
            try:
                await store.purge_deployment(key)
            finally:
                await store.close()

        run_async(purge())
