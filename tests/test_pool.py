"""Accelerators the pool does not have at all (README "Accelerators the pool does not have"):
refused at create and update, failed at once on the data plane, listed by the API and the CLI.
The pool's report and its messages are pure tables; the rest runs on the shared stack (the
local backend on this CPU-only host) and a sim stack."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from harness import Stack, run_async, wait_until

from scaler.backends.local import LocalBackend
from scaler.backends.sim import SimBackend
from scaler.sharing import cpu_engines
from wakegate.pool import PoolReport, SkuCount, pool_totals
from wakegate.settings import Settings
from wakegate.spec import DeploymentConfig, DeploymentSpec
from wakegate.tools.cli import main

CPU_HOST = PoolReport(
    backend="local",
    at=0.0,
    skus={"cpu": SkuCount(8, 6)},
    cpu_engines=frozenset({"llamacpp", "sim"}),
)
GPU_HOST = PoolReport(
    backend="local", at=0.0, skus={"cpu": SkuCount(8, 8), "a10_24gb": SkuCount(2, 0)}
)


@pytest.mark.parametrize(
    ("pool", "accelerator", "engine", "missing"),
    [
        (CPU_HOST, "l40s_48gb_100", "vllm", "this pool has no l40s_48gb GPU"),
        (CPU_HOST, "l40s_48gb_100", "llamacpp", None),
        (CPU_HOST, "cpu", "llamacpp", None),
        (GPU_HOST, "a10_24gb_100", "vllm", None),
        (GPU_HOST, "a10_24gb_400", "tgi", None),
        (GPU_HOST, "l40s_48gb_100", "llamacpp", "this pool has no l40s_48gb GPU"),
        (PoolReport("kubernetes", 0.0, {"cpu": SkuCount(-1, -1)}, complete=False),
         "l40s_48gb_100", "vllm", None),
        (PoolReport("sim", 0.0, {"a10_24gb": SkuCount(2, 2)}), "cpu", "sim",
         "this pool has no CPU replica slots"),
        (PoolReport("sim", 0.0, {"a10_24gb": SkuCount(0, 0)}), "a10_24gb_100", "sim",
         "this pool has no a10_24gb GPU"),
    ],
    ids=[
        "gpu-engine-on-a-cpu-host-is-missing",
        "llamacpp-runs-on-the-cpu-of-a-host-without-gpus-whatever-it-asks",
        "cpu-on-a-cpu-host",
        "has-but-busy-is-not-missing",
        "four-of-a-sku-it-has-is-not-missing",
        "a-gpu-host-runs-llamacpp-on-the-gpu-it-asks-for",
        "an-incomplete-pool-refuses-nothing",
        "a-sim-pool-without-cpu-has-no-cpu-slots",
        "a-sku-of-none-is-missing",
    ],
)  # fmt: skip
def test_what_a_pool_is_missing(
    pool: PoolReport, accelerator: str, engine: str, missing: str | None
) -> None:
    got = pool.missing(accelerator, engine)
    if missing is None:
        assert got is None
    else:
        assert got is not None and got.startswith(missing)


def test_the_message_says_what_the_pool_has_and_what_to_do() -> None:
    why = CPU_HOST.missing("l40s_48gb_100", "vllm")
    assert why == (
        "this pool has no l40s_48gb GPU, which accelerator l40s_48gb_100 needs; it has 8 CPU "
        "replica slots: deploy a model it runs, such as gemma-3-270m"
    )  # not "accelerator cpu": vLLM would fail its first start there
    llamacpp = GPU_HOST.missing("l40s_48gb_100", "llamacpp")
    assert llamacpp is not None and llamacpp.endswith(
        "set config.accelerator to one it has (cpu, a10_24gb_100, a10_24gb_400)"
    )
    gpus = GPU_HOST.missing("h100_80gb_sxm_100", "vllm")
    assert gpus is not None and "it has 8 CPU replica slots, 2 a10_24gb GPU(s)" in gpus
    assert "a10_24gb_100, a10_24gb_400" in gpus


def test_a_sku_that_joins_clears_what_was_missing() -> None:
    before = PoolReport("ray", 0.0, pool_totals({"cpu": -1}, {}))
    after = PoolReport("ray", 5.0, pool_totals({"cpu": -1, "l40s_48gb": 1}, {}))
    assert before.missing("l40s_48gb_100", "vllm") is not None
    assert after.missing("l40s_48gb_100", "vllm") is None
    assert PoolReport.from_dict(after.to_dict()) == after


def test_pool_totals_add_what_wakegate_holds_to_what_is_free() -> None:
    totals = pool_totals({"cpu": 3, "a10_24gb": 0, "l4_24gb": -1}, {"cpu": 5, "a100_80gb": 2})
    assert totals == {
        "cpu": SkuCount(8, 3),
        "a10_24gb": SkuCount(0, 0),  # reported at 0, nothing of wakegate's on it: none
        "l4_24gb": SkuCount(-1, -1),
        "a100_80gb": SkuCount(2, 0),  # no longer reported, its replicas still run
    }
    assert not PoolReport("x", 0.0, totals).has("a10_24gb")


def test_cpu_engines_are_the_backends_own_answer(tmp_path: Path) -> None:
    # This build host has no GPU: the local backend runs llama.cpp and sim on its CPU.
    local = LocalBackend(Settings(state_dir=tmp_path / "local"))
    assert cpu_engines(local) == frozenset({"llamacpp", "sim"})
    sim = SimBackend(Settings(state_dir=tmp_path / "sim"))
    assert cpu_engines(sim) == frozenset()


# --- on a real stack -------------------------------------------------------------------------


def known_pool(stack: Stack) -> dict[str, Any] | None:
    r = stack.api("GET", "/v2/accelerators")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["data"]
    return data if data["known"] else None


def test_the_api_and_the_cli_list_the_pool_of_a_cpu_host(stack: Stack) -> None:
    data = wait_until(lambda: known_pool(stack), 30, "the scaler's report of the pool")
    assert data["backend"] == "local" and data["complete"]
    assert [s["sku"] for s in data["skus"]] == ["cpu"]
    (cpu,) = data["skus"]
    assert cpu["accelerators"] == ["cpu"] and cpu["total"] == 8 and 0 <= cpu["free"] <= 8
    assert "gemma-3-270m" in data["models"] and "qwen3-8b" not in data["models"]

    env = {"WAKEGATE_URL": stack.base, "WAKEGATE_TOKEN": stack.token}
    as_json = CliRunner().invoke(main, ["accelerators", "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    assert as_json.stdout.strip().startswith("{") and '"sku": "cpu"' in as_json.stdout
    table = CliRunner().invoke(main, ["accelerators"], env=env)
    assert table.exit_code == 0, table.output
    assert "pool of the local backend" in table.stdout
    assert "cpu (replica slots)" in table.stdout and "gemma-3-270m" in table.stdout


def refusal(stack: Stack, config: dict[str, Any]) -> dict[str, Any]:
    name = "t-" + uuid.uuid4().hex[:8]
    r = stack.api("POST", "/v2/deployments", json={"name": name, "config": config})
    assert r.status_code == 400, r.text
    assert stack.api("GET", f"/v2/deployments/{name}").status_code == 404  # nothing stored
    body: dict[str, Any] = r.json()
    return body


def test_the_predibase_quick_start_on_a_cpu_pool_is_refused_with_what_to_do(
    stack: Stack, name: str
) -> None:
    wait_until(lambda: known_pool(stack), 30, "the scaler's report of the pool")
    body = refusal(stack, {"baseModel": "qwen3-8b"})
    assert body["field"] == "config.baseModel"
    assert body["error"].startswith("this pool has no l40s_48gb GPU")
    assert "CPU replica slots" in body["error"] and "gemma-3-270m" in body["error"]
    named = refusal(stack, {"baseModel": "qwen3-8b", "accelerator": "a100_80gb_100"})
    assert named["field"] == "config.accelerator" and "no a100_80gb GPU" in named["error"]
    sku = {"baseModel": "qwen3-8b", "computeSpec": {"requests": {"inference": {"sku": "l4_24gb"}}}}
    assert refusal(stack, sku)["field"] == "config.computeSpec"
    # llama.cpp runs on this host's CPU whatever accelerator it names: accepted.
    stack.create(name, accelerator="l40s_48gb_100")
    stack.delete(name)


def test_an_update_to_what_the_pool_cannot_run_is_refused_and_changes_nothing(
    stack: Stack, name: str
) -> None:
    wait_until(lambda: known_pool(stack), 30, "the scaler's report of the pool")
    stack.create(name)
    url = f"/v2/deployments/{name}"
    before = stack.api("GET", url).json()["data"]
    r = stack.api("PUT", url, json={"config": {"baseModel": "qwen3-8b"}})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "config.baseModel" and "no l40s_48gb GPU" in r.json()["error"]
    r = stack.api(
        "PUT", url, json={"config": {"baseModel": "qwen3-8b", "accelerator": "a100_80gb_100"}}
    )
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "config.accelerator" and "no a100_80gb GPU" in r.json()["error"]
    assert stack.api("GET", url).json()["data"] == before
    # What the pool runs is updated as before (llama.cpp takes a CPU slot whatever it names).
    r = stack.api("PUT", url, json={"config": {"accelerator": "h100_80gb_sxm_100"}})
    assert r.status_code == 200, r.text
    stack.delete(name)


def _store_unchecked(stack: Stack, name: str, base_model: str) -> None:
    """A deployment stored while the pool was unknown (its scaler not reported yet): written
    as a gateway writes it, so no check of the pool ran. It keeps a replica (minReplicas 1),
    so the scaler wants one at once."""

    async def put() -> None:
        store = stack.store()
        now = time.time()
        spec = DeploymentSpec(
            tenant=stack.tenant,
            name=name,
            uuid=str(uuid.uuid4()),
            description=None,
            config=DeploymentConfig(base_model=base_model, min_replicas=1, max_replicas=1),
            status="ready",
            revision=1,
            created_at=now,
            updated_at=now,
        )
        try:
            assert await store.create_deployment(spec, [])
        finally:
            await store.close()

    run_async(put())


def test_requests_to_a_deployment_the_pool_cannot_run_fail_at_once_on_every_api(
    stack: Stack, name: str
) -> None:
    wait_until(lambda: known_pool(stack), 30, "the scaler's report of the pool")
    why = refusal(stack, {"baseModel": "qwen3-8b"})["error"]
    _store_unchecked(stack, name, "qwen3-8b")
    expected = f"deployment {name} cannot run: {why}"
    url = stack.deploy_url(name)
    lorax = {"inputs": "hi", "parameters": {"max_new_tokens": 4}}
    calls: list[tuple[str, dict[str, Any], Callable[[Any], str]]] = [
        (url + "/generate", lorax, lambda b: b["error"]),
        (url, lorax, lambda b: b["error"]),
        (url + "/generate_stream", lorax, lambda b: b["error"]),
        (url + "/async", lorax, lambda b: b["error"]),
        (url + "/v1/completions", {"model": "qwen3-8b", "prompt": "hi", "max_tokens": 4},
         lambda b: b["error"]["message"]),
        (url + "/v1/chat/completions",
         {"model": "qwen3-8b", "messages": [{"role": "user", "content": "hi"}]},
         lambda b: b["error"]["message"]),
        (f"{stack.base}/v1/completions", {"model": name, "prompt": "hi", "max_tokens": 4},
         lambda b: b["error"]["message"]),
    ]  # fmt: skip
    for target, body, message in calls:
        started = time.monotonic()
        r = httpx.post(target, headers=stack.headers, json=body, timeout=30)
        assert time.monotonic() - started < 5, target
        assert r.status_code == 424, (target, r.text)
        assert message(r.json()) == expected, target
    assert stack.queued(name) == 0

    # The replica it keeps waits for capacity, and the wait says why it will not come.
    def reason() -> str | None:
        dep = stack.api("GET", f"/v2/deployments/{name}").json()["data"]
        return (dep["waitingForCapacity"] or {}).get("reason")

    assert wait_until(reason, 30, "the capacity wait") == why
    stack.delete(name)


def test_a_sim_pool_refuses_only_the_sku_it_lacks(
    make_stack: Callable[..., Stack], name: str
) -> None:
    # A busy SKU it has still queues: tests/test_capacity.py ("waiting for a free ...").
    stack = make_stack(backend="sim", sim_pool="a10_24gb=1")
    data = wait_until(lambda: known_pool(stack), 30, "the scaler's report of the pool")
    assert [(s["sku"], s["total"]) for s in data["skus"]] == [("a10_24gb", 1)]
    assert data["models"] == ["sim-llm"]
    body = refusal(stack, {"baseModel": "sim-llm", "accelerator": "l40s_48gb_100"})
    assert body["field"] == "config.accelerator"
    assert "1 a10_24gb GPU(s)" in body["error"] and "sim-llm" in body["error"]
    stack.create(name, baseModel="sim-llm", accelerator="a10_24gb_100")
    stack.delete(name)
