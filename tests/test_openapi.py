"""The OpenAPI document: one operation per route the gateway serves, valid, served openly."""

from __future__ import annotations

import httpx
import schemathesis
from harness import Stack

from router.app import create_app
from router.openapi import openapi_document
from wakegate.settings import Settings


def document_operations() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in openapi_document()["paths"].items()
        for method in item
    }


def app_operations() -> set[tuple[str, str]]:
    routes = {(r.method, r.resource.canonical) for r in create_app(Settings()).router.routes()}
    # aiohttp answers HEAD on every GET route; the document lists the GET.
    heads = {path for method, path in routes if method == "HEAD"}
    assert heads <= {path for method, path in routes if method == "GET"}
    return {(method, path) for method, path in routes if method != "HEAD"}


def test_the_document_has_exactly_the_routes_the_gateway_serves() -> None:
    assert document_operations() == app_operations()


def test_the_document_is_valid_openapi_and_request_bodies_are_the_handlers_models() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(doc)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(document_operations())
    create = doc["paths"]["/v2/deployments"]["post"]["requestBody"]["content"]
    assert create["application/json"]["schema"] == {"$ref": "#/components/schemas/CreateRequest"}
    # Generated from the pydantic models: the config's bounds are the validator's.
    config = doc["components"]["schemas"]["ConfigUpdate"]["properties"]
    assert config["maxReplicas"]["anyOf"][0]["maximum"] == 1000
    # Every operation but the public ones needs a token; every error status has a body.
    for path, item in doc["paths"].items():
        for method, op in item.items():
            public = path in ("/healthz", "/openapi.json", "/ui", "/ui/{asset}")
            assert (op["security"] == []) == public, (method, path)
            if not public:
                assert "401" in op["responses"], (method, path)
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    assert "application/json" in response["content"], (method, path, status)


def test_the_gateway_serves_the_document_without_a_token(stack: Stack) -> None:
    r = httpx.get(f"{stack.base}/openapi.json")
    assert r.status_code == 200, r.text
    assert r.json() == openapi_document()


def test_errors_take_the_routes_shape_whatever_its_path_parameters_hold(stack: Stack) -> None:
    # The family was read off the decoded path: a name holding "/v1/" (sent as %2F) gave a
    # LoRAX route the OpenAI error shape, one holding "/deployments/v2/llms/" gave a control
    # route LoRAX's; neither matches the document.
    lorax = f"{stack.base}/{stack.tenant}/deployments/v2/llms/a%2Fv1%2Fb/generate"
    r = httpx.post(lorax, headers=stack.headers, json={"inputs": "hi"})
    assert r.status_code == 404, r.text
    assert isinstance(r.json()["error"], str) and "error_type" in r.json()
    control = f"{stack.base}/v2/deployments/x%2Fdeployments%2Fv2%2Fllms%2Fy"
    r = httpx.get(control, headers=stack.headers)
    assert r.status_code == 404, r.text
    assert list(r.json()) == ["error"] and "not found" in r.json()["error"]  # control's shape
    openai = f"{stack.base}/{stack.tenant}/deployments/v2/llms/nope/v1/completions"
    r = httpx.post(openai, headers=stack.headers, json={"prompt": "hi"})
    assert r.status_code == 404, r.text
    assert r.json()["error"]["message"] == "deployment nope not found"
