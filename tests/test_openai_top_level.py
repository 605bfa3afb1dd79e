"""One OpenAI base URL for every deployment: `<gateway>/v1`, `model` naming the deployment.

The real `openai` client (and LiteLLM), unmodified, against a real stack on the sim backend:
a gateway, a scaler, Redis, mosquitto and a sim host. The sim engine answers every token as
TOKEN_TEXT and ignores adapters, so which adapter a request chose is read from the
deployment's request log. The LoRAX client is not tested here: it speaks LoRAX's generate API
at a deployment's own URL and names no model, so the gateway-wide base URL is no use to it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from conftest import unused_database
from harness import Stack, run_async, wait_until
from openai import OpenAI

from scaler.sim.replica import TOKEN_TEXT

ADAPTER = "acme/tuned-1"  # an adapter id with a slash, like a Hugging Face repo id
FAST = ["--load-s", "0", "--ttft-s", "0", "--tps", "1000"]
MESSAGES: Any = [{"role": "user", "content": "Say hello."}]
OTHER_TENANT = "rival"


@pytest.fixture(scope="module")
def sim_stack(infra: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("openai-top"), unused_database(infra),
                  infra["mqtt_url"], backend="sim")  # fmt: skip
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def other_token(sim_stack: Stack) -> str:
    """The token of a second tenant of the same gateway."""
    token = "pb_rival_" + uuid.uuid4().hex

    async def seed() -> None:
        store = sim_stack.store()
        try:
            await store.ensure_tenant(OTHER_TENANT, "Rival Inc")
            await store.add_token(token, OTHER_TENANT)
        finally:
            await store.close()

    run_async(seed())
    return token


@pytest.fixture(scope="module")
def dep(sim_stack: Stack) -> str:
    """A sim deployment with one replica up and an adapter, its requests logged."""
    name = "top-" + uuid.uuid4().hex[:6]
    sim_stack.create(name, baseModel="sim-llm", customArgs=FAST, minReplicas=1, maxReplicas=1,
                     preloadedAdapters=[ADAPTER], requestLoggingEnabled=True)  # fmt: skip
    wait_until(lambda: sim_stack.ready_replicas(name) == 1, 60, "the deployment's replica")
    return name


def client_of(stack: Stack, token: str | None = None) -> OpenAI:
    return OpenAI(api_key=token or stack.token, base_url=stack.base + "/v1", max_retries=0,
                  timeout=60)  # fmt: skip


def create_as(stack: Stack, token: str, name: str) -> None:
    """A deployment at zero of the token's tenant."""
    r = httpx.post(stack.base + "/v2/deployments", headers={"Authorization": f"Bearer {token}"},
                   json={"name": name, "config": {"baseModel": "sim-llm", "customArgs": FAST}},
                   timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text


def logged(stack: Stack, name: str, since: float) -> list[dict[str, Any]]:
    r = stack.api("GET", f"/v2/deployments/{name}/requests", params={"start": since})
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines()]


def test_completions_plain_and_streamed(sim_stack: Stack, dep: str) -> None:
    client = client_of(sim_stack)
    out = client.completions.create(model=dep, prompt="One two three", max_tokens=4)
    assert out.choices[0].text == TOKEN_TEXT * 4
    assert out.model == dep and out.object == "text_completion"
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 4
    chunks = list(client.completions.create(model=dep, prompt="One two three", max_tokens=4,
                                            stream=True))  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks) == TOKEN_TEXT * 4
    assert chunks[-1].choices[0].finish_reason == "length"
    assert {c.model for c in chunks} == {dep}


def test_chat_plain_and_streamed_with_usage(sim_stack: Stack, dep: str) -> None:
    client = client_of(sim_stack)
    since = time.time()
    out = client.chat.completions.create(model=dep, messages=MESSAGES, max_tokens=3)
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == TOKEN_TEXT * 3
    assert out.model == dep and out.usage is not None and out.usage.completion_tokens == 3
    chunks = list(client.chat.completions.create(
        model=dep, messages=MESSAGES, max_tokens=3, stream=True,
        stream_options={"include_usage": True}))  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TOKEN_TEXT * 3
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    # The same pipeline as the deployment's own routes: logged as OpenAI chat requests.
    entries = logged(sim_stack, dep, since)
    assert [(e["api"], e["stream"], e["status"]) for e in entries] == [
        ("openai", False, 200),
        ("openai", True, 200),
    ]
    assert entries[0]["messages"] == [{"role": "user", "content": "Say hello."}]


def test_an_adapter_is_chosen_as_deployment_slash_adapter(sim_stack: Stack, dep: str) -> None:
    client = client_of(sim_stack)
    since = time.time()
    model = f"{dep}/{ADAPTER}"
    out = client.completions.create(model=model, prompt="Hi", max_tokens=2)
    assert out.model == model and out.choices[0].text == TOKEN_TEXT * 2
    chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2,
                                                 stream=True))  # fmt: skip
    assert {c.model for c in chunks} == {model}
    client.completions.create(model=dep, prompt="Hi", max_tokens=2)
    assert [e["adapter"] for e in logged(sim_stack, dep, since)] == [ADAPTER, ADAPTER, None]

    with pytest.raises(openai.NotFoundError) as unknown:
        client.completions.create(model=f"{dep}/acme/unknown-1", prompt="Hi", max_tokens=2)
    assert f"{dep}/acme/unknown-1" in unknown.value.message
    assert unknown.value.body["param"] == "model"  # type: ignore[index]


def test_models_lists_the_tenants_deployments_and_adapters_only(
    sim_stack: Stack, dep: str, other_token: str
) -> None:
    theirs = "rival-" + uuid.uuid4().hex[:6]
    create_as(sim_stack, other_token, theirs)
    models = list(client_of(sim_stack).models.list())
    ids = [m.id for m in models]
    assert dep in ids and f"{dep}/{ADAPTER}" in ids
    assert theirs not in ids and not any(i.startswith(theirs) for i in ids)
    mine = next(m for m in models if m.id == dep)
    assert mine.object == "model" and mine.owned_by == sim_stack.tenant and mine.created > 0
    raw = sim_stack.api("GET", "/v1/models").json()
    assert raw["object"] == "list"
    assert {"id", "object", "created", "owned_by"} <= set(raw["data"][0])
    # The other tenant sees its own deployment and none of ours.
    assert [m.id for m in client_of(sim_stack, other_token).models.list()] == [theirs]


def test_a_deployment_at_zero_is_woken_by_a_top_level_request(sim_stack: Stack) -> None:
    name = "cold-" + uuid.uuid4().hex[:6]
    sim_stack.create(name, baseModel="sim-llm", minReplicas=0, maxReplicas=1, cooldownTime=60,
                     customArgs=["--load-s", "1", "--ttft-s", "0", "--tps", "1000"])  # fmt: skip
    assert sim_stack.sim_replicas(name) == {}
    chunks = list(client_of(sim_stack).chat.completions.create(
        model=name, messages=MESSAGES, max_tokens=2, stream=True))  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TOKEN_TEXT * 2
    assert list(sim_stack.sim_replicas(name).values()) == ["ready"]
    sim_stack.delete(name)


def test_errors_are_openai_shaped_and_name_the_model(
    sim_stack: Stack, dep: str, other_token: str
) -> None:
    for path in ("/v1/completions", "/v1/chat/completions"):
        r = sim_stack.api("POST", path, json={"prompt": "hi", "messages": MESSAGES})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "model" and "model" in r.json()["error"]["message"]
        r = sim_stack.api("POST", path, json={"model": "", "prompt": "hi", "messages": MESSAGES})
        assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text

    client = client_of(sim_stack)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-deployment", messages=MESSAGES)
    expected = "model 'no-such-deployment' not found: no deployment 'no-such-deployment'"
    assert missing.value.body["message"] == expected  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as odd:
        client.completions.create(model="Not A Name/x", prompt="hi")
    assert "Not A Name/x" in odd.value.message
    # Another tenant's deployment does not exist for this token, exactly like a missing one.
    theirs = "hidden-" + uuid.uuid4().hex[:6]
    create_as(sim_stack, other_token, theirs)
    with pytest.raises(openai.NotFoundError) as hidden:
        client.completions.create(model=theirs, prompt="hi", max_tokens=2)
    expected = f"model {theirs!r} not found: no deployment {theirs!r}"
    assert hidden.value.body["message"] == expected  # type: ignore[index]

    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=dep, prompt="hi", temperature=5)
    assert "temperature" in bad.value.message
    with pytest.raises(openai.AuthenticationError):
        client_of(sim_stack, "nope").models.list()
    r = sim_stack.api("POST", "/v1/embeddings", json={"model": dep, "input": "hi"})
    assert r.status_code == 404 and "/v1/embeddings" in r.json()["error"]["message"], r.text


# LiteLLM's own types warn about themselves (pydantic and TypedDict's ReadOnly): not ours.
@pytest.mark.filterwarnings("ignore:Item .* is using the `ReadOnly` qualifier:UserWarning")
def test_litellm_reaches_a_deployment_by_name(
    sim_stack: Stack, dep: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its model price list from the package, not fetched from GitHub at import.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm = pytest.importorskip("litellm")
    base = {"api_base": sim_stack.base + "/v1", "api_key": sim_stack.token, "num_retries": 0}
    out = litellm.completion(model=f"openai/{dep}", messages=MESSAGES, max_tokens=3, **base)
    assert out.choices[0].message.content == TOKEN_TEXT * 3
    chunks = list(litellm.completion(model=f"openai/{dep}/{ADAPTER}", messages=MESSAGES,
                                     max_tokens=3, stream=True, **base))  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TOKEN_TEXT * 3
