"""Generation length is bounded at the gateway by what the deployment's engine holds for one
request (review finding 15): `max_new_tokens` / `max_tokens` above the deployment's
`maxTotalTokens` (else its model's context window) is refused before anything is queued."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from harness import Stack

from router.errors import ApiError
from router.pipeline import check_length
from wakegate.spec import DeploymentConfig, DeploymentSpec


def _spec(**config: Any) -> DeploymentSpec:
    now = time.time()
    return DeploymentSpec(
        "acme", "d", "u", None, DeploymentConfig.from_dict(config), "ready", 1, now, now
    )


@pytest.mark.parametrize(
    ("config", "requested", "refused"),
    [
        ({"base_model": "sim-llm", "max_total_tokens": 1024}, 1024, False),
        ({"base_model": "sim-llm", "max_total_tokens": 1024}, 1025, True),
        ({"base_model": "gemma-3-270m"}, 32_768, False),
        ({"base_model": "gemma-3-270m"}, 32_769, True),
        ({"base_model": "gemma-3-270m"}, None, False),
    ],
    ids=["at-max-total", "above-max-total", "at-context", "above-context", "engine-default"],
)
def test_the_limit_is_max_total_tokens_else_the_context_window(
    config: dict[str, Any], requested: int | None, refused: bool
) -> None:
    if not refused:
        check_length(_spec(**config), requested, "max_tokens", 400, "invalid_request_error")
        return
    with pytest.raises(ApiError) as err:
        check_length(_spec(**config), requested, "max_tokens", 400, "invalid_request_error")
    assert (err.value.status, err.value.field) == (400, "max_tokens")


@pytest.fixture
def limited(stack: Stack, name: str) -> Any:
    stack.create(name, baseModel="sim-llm", maxTotalTokens=1024)
    yield name
    stack.delete(name)


@pytest.mark.parametrize("route", ["/generate", "/generate_stream", "", "/async"])
def test_lorax_max_new_tokens_above_the_limit_is_a_422_naming_it(
    stack: Stack, limited: str, route: str
) -> None:
    body = {"inputs": "hi", "parameters": {"max_new_tokens": 1025}}
    r = httpx.post(stack.deploy_url(limited) + route, headers=stack.headers, json=body, timeout=30)
    assert r.status_code == 422, r.text
    assert r.json()["error_type"] == "validation"
    assert r.json()["field"] == "parameters.max_new_tokens"
    assert "1024" in r.json()["error"]
    assert stack.queued(limited) == 0


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/v1/completions", {"prompt": "hi", "max_tokens": 1025}, "max_tokens"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000},
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 1025},
            "max_completion_tokens",
        ),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 10**400}, "max_tokens"),
    ],
    ids=["completions", "chat-max-tokens", "chat-max-completion-tokens", "completions-huge"],
)
def test_openai_max_tokens_above_the_limit_is_a_400_naming_it(
    stack: Stack, limited: str, route: str, body: dict[str, Any], param: str
) -> None:
    r = httpx.post(stack.deploy_url(limited) + route, headers=stack.headers, json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert stack.queued(limited) == 0
