"""Property-based fuzz run of the whole public API, driven by its OpenAPI document.

schemathesis generates requests for every operation of `GET /openapi.json` (valid and invalid
ones, deterministically) and sends them to a real stack on the sim backend: a gateway, a
scaler, Redis, mosquitto and a sim host. Every response must be no 5xx, and its status, media
type, headers and body must be what the document says.

Half of the examples of each operation name real things (the tenant's sim deployment, one of
its async requests), so the data plane generates for real; the rest name random ones. The sim
deployment is fast (no load time, 100k tokens/s) and its context is small, so no generation
runs long. Mutating operations (PUT/DELETE of a deployment) name a second deployment of their
own or random ones, never the one the data-plane operations use. Half of the bodies are
"tamed" (a known model, no adapters, few tokens; on the gateway-wide OpenAI routes, `model`
naming the sim deployment) so that successes are checked too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from conftest import unused_database
from harness import Stack, run_async, wait_until
from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from router.openapi import openapi_document
from wakegate.store import Store

# Examples per operation (valid and invalid ones together); 35 operations.
# WAKEGATE_FUZZ_EXAMPLES raises it for a longer hunt.
MAX_EXAMPLES = int(os.environ.get("WAKEGATE_FUZZ_EXAMPLES", "50"))
DEPLOYMENT = "fuzz-llm"
# What PUT and DELETE of a deployment may name instead: theirs to change and delete.
VICTIM = "fuzz-victim"
# What PUT and DELETE of a tenant's quotas (admin) name instead of the fuzz tenant: a quota
# fuzzed onto it (no queue, no deployments) would turn the other operations' real examples
# into 429s.
QUOTA_VICTIM = "fuzz-quota-victim"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_stack(infra: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        tmp_path_factory.mktemp("fuzz"),
        unused_database(infra),
        infra["mqtt_url"],
        backend="sim",
        sim_pool="a10_24gb=2,cpu=2",
    )
    stack.start()
    try:
        stack.create(
            DEPLOYMENT,
            baseModel="sim-llm",
            customArgs=["--load-s", "0", "--ttft-s", "0", "--tps", "100000"],
            # Requests past this context are the engine's 400, not a long generation.
            maxTotalTokens=512,
            minReplicas=1,
            maxReplicas=1,
            requestLoggingEnabled=True,
        )
        stack.create(VICTIM, baseModel="sim-llm", customArgs=["--load-s", "0"])
        wait_until(lambda: stack.ready_replicas(DEPLOYMENT) == 1, 60, "the fuzz deployment")
        # An entry in the request log for its download to show.
        assert stack.generate(DEPLOYMENT, max_new_tokens=2).status_code == 200
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def admin_token(fuzz_stack: Stack) -> str:
    token = "wga_" + uuid.uuid4().hex

    async def seed() -> None:
        store = Store.from_url(fuzz_stack.redis_url)
        try:
            await store.add_admin_token(token, "fuzz-operator")
        finally:
            await store.close()

    run_async(seed())
    return token


@pytest.fixture(scope="module")
def job_id(fuzz_stack: Stack) -> str:
    """One async request of the fuzz deployment, for the status operation to find."""
    r = httpx.post(
        fuzz_stack.deploy_url(DEPLOYMENT) + "/async",
        headers=fuzz_stack.headers,
        json={"inputs": "fuzz", "parameters": {"max_new_tokens": 4}},
        timeout=60,
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


@pytest.fixture(scope="module")
def api_schema(fuzz_stack: Stack) -> Any:
    # The document as served, not as imported: what clients see is what is fuzzed.
    return schemathesis.openapi.from_url(f"{fuzz_stack.base}/openapi.json")


def check_stream_items(doc: dict[str, Any], method: str, path: str, response: Any) -> None:
    """Each event of a stream, each line of a JSON-lines body, against the document: its
    content schema (OpenAPI 3.1 leaves it to the client; schemathesis reads the event only)."""
    media = response.headers.get("content-type", [""])[0].split(";")[0]
    documented = doc["paths"][path][method]["responses"].get(str(response.status_code), {})
    schema = documented.get("content", {}).get(media, {}).get("schema", {})
    if media == "text/event-stream":
        data = schema["properties"]["data"]
        payload = next(s for s in data.get("anyOf", [data]) if "contentSchema" in s)
        items = [
            event.data
            for event in events_of(response.content.decode())
            if {"const": event.data} not in data.get("anyOf", [])
        ]
        item_schema = payload["contentSchema"]
    elif media == "application/x-ndjson":
        items = response.content.decode().splitlines()
        item_schema = schema["x-itemSchema"]
    else:
        return
    validator = Draft202012Validator({**item_schema, "components": doc["components"]})
    for item in items:
        errors = [e.message for e in validator.iter_errors(json.loads(item))]
        assert not errors, f"{method.upper()} {path}: {item} does not match: {errors}"


def events_of(text: str) -> Iterator[Any]:
    decoder = SSEDecoder()
    for line in [*SSELineDecoder().decode(text), ""]:
        event = decoder.decode(line)
        if event is not None:
            yield event


def tamed(body: dict[str, Any]) -> None:
    """Keep a generate body within what the sim deployment serves, so that random requests
    reach its replica and answer 200 often enough for the success shapes to be checked:
    no adapters, no structured output, the deployment's own model, few new tokens."""
    params = body.get("parameters")
    if isinstance(params, dict):
        for key in ("adapter_id", "merged_adapters", "response_format", "best_of"):
            params.pop(key, None)
        if isinstance(params.get("max_new_tokens"), int):
            params["max_new_tokens"] = 1 + params["max_new_tokens"] % 16
    if "model" in body:
        body["model"] = ""
    body.pop("tools", None)
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), int):
            body[key] = 1 + body[key] % 16


def tamed_create(body: dict[str, Any]) -> None:
    """A valid name and a known (sim) model, so that some creates succeed."""
    digest = hashlib.sha1(repr(body).encode(), usedforsecurity=False).hexdigest()[:10]
    body["name"] = f"fz-{digest}"
    if isinstance(body.get("config"), dict):
        body["config"]["baseModel"] = "sim-llm"


def operations() -> list[Any]:
    return [
        pytest.param(method, path, id=f"{method.upper()} {path}")
        for path, item in openapi_document()["paths"].items()
        for method in item
    ]


@pytest.mark.parametrize(("method", "path"), operations())
def test_every_operation_answers_as_documented_and_never_5xx(
    method: str, path: str, api_schema: Any, fuzz_stack: Stack, admin_token: str, job_id: str
) -> None:
    operation = api_schema[path][method.upper()]
    security = operation.definition.raw.get("security")
    if security == [{"adminToken": []}]:
        headers = {"Authorization": f"Bearer {admin_token}"}
    elif security:
        headers = fuzz_stack.headers
    else:
        headers = {}
    real = {"tenant": fuzz_stack.tenant, "name": DEPLOYMENT, "job_id": job_id}
    named = set(re.findall(r"{(\w+)}", path))
    mutating = method in ("put", "delete") and path.startswith(("/v2/", "/admin/"))
    strategies = [operation.as_strategy(mode) for mode in GenerationMode]
    if named:
        fixed = {key: value for key, value in real.items() if key in named}
        if mutating:
            fixed = {"tenant": QUOTA_VICTIM} if "tenant" in named else {"name": VICTIM}
        strategies += [
            operation.as_strategy(mode, path_parameters=fixed) for mode in GenerationMode
        ]

    @given(case=st.one_of(strategies), tame=st.booleans())
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any, tame: bool) -> None:
        params = case.path_parameters or {}
        name = params.get("name")
        if mutating and (name == DEPLOYMENT or params.get("tenant") == fuzz_stack.tenant):
            return  # never the deployment or the tenant the other operations use
        if tame and isinstance(case.body, dict):
            if name == DEPLOYMENT:
                tamed(case.body)
            elif path.startswith("/v1/"):  # the gateway's OpenAI base URL: `model` names it
                tamed(case.body)
                case.body["model"] = DEPLOYMENT
            elif path == "/v2/deployments":
                tamed_create(case.body)
        response = case.call_and_validate(
            base_url=fuzz_stack.base, headers=headers, checks=CHECKS, timeout=120
        )
        check_stream_items(api_schema.raw_schema, method, path, response)

    fuzz()
    if mutating and "tenant" in named:
        # The fuzz tenant kept the operator defaults: no override reached it.
        r = httpx.get(
            f"{fuzz_stack.base}/admin/v1/tenants/{fuzz_stack.tenant}/quotas",
            headers={"Authorization": f"Bearer {admin_token}"},
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["override"] is None, r.text


# --- what the fuzz run found ---------------------------------------------------------------


def test_a_negative_openai_seed_is_a_400_naming_seed(fuzz_stack: Stack) -> None:
    # It passed the OpenAI model, then failed the LoRAX parameters' (seed >= 0): a 500.
    r = httpx.post(
        fuzz_stack.deploy_url(DEPLOYMENT) + "/v1/completions",
        headers=fuzz_stack.headers,
        json={"prompt": "hi", "max_tokens": 2, "seed": -1},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "seed"
    ok = {"prompt": "hi", "max_tokens": 2, "seed": 7}
    r = httpx.post(
        fuzz_stack.deploy_url(DEPLOYMENT) + "/v1/completions",
        headers=fuzz_stack.headers,
        json=ok,
        timeout=60,
    )
    assert r.status_code == 200, r.text


def test_a_lorax_body_cannot_turn_itself_into_a_chat_request(fuzz_stack: Stack) -> None:
    # "messages" is the OpenAI chat route's internal field: from a LoRAX body it sent the
    # request to the engine's chat API instead of generating from `inputs`.
    body = {
        "inputs": "The capital of France is",
        "parameters": {"max_new_tokens": 3},
        "messages": [{"role": "user", "content": "hi"}],
    }
    r = httpx.post(
        fuzz_stack.deploy_url(DEPLOYMENT) + "/generate",
        headers=fuzz_stack.headers,
        json=body,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["generated_text"] == " tok" * 3
