"""The real `openai` client, unmodified, against a real llama.cpp replica."""

from __future__ import annotations

import openai
import pytest
from harness import Stack
from openai import OpenAI


@pytest.fixture
def client(stack: Stack, name: str) -> OpenAI:
    stack.create(name, minReplicas=0, maxReplicas=1, cooldownTime=60)
    return OpenAI(api_key=stack.token, base_url=stack.deploy_url(name) + "/v1", max_retries=0,
                  timeout=120)  # fmt: skip


def test_completions_plain_and_streamed(client: OpenAI) -> None:
    out = client.completions.create(model="gemma-3-270m", prompt="The capital of France is",
                                    max_tokens=8, temperature=0)  # fmt: skip
    assert out.choices[0].text.strip()
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage is not None and out.usage.completion_tokens > 0
    pieces = [c.choices[0].text for c in client.completions.create(
        model="gemma-3-270m", prompt="The capital of France is", max_tokens=8, temperature=0,
        stream=True)]  # fmt: skip
    assert "".join(pieces) == out.choices[0].text, "greedy: stream and answer agree"


def test_chat_plain_and_streamed_with_usage(client: OpenAI) -> None:
    messages = [{"role": "user", "content": "Say hello in French."}]
    out = client.chat.completions.create(model="", messages=messages,  # type: ignore[arg-type]
                                         max_tokens=12, temperature=0)  # fmt: skip
    assert out.choices[0].message.role == "assistant"
    # The engine applies the model's own chat template. Gemma 3 270M is a pretrained (not
    # instruction-tuned) model and often ends its turn at once: the text may be empty.
    assert isinstance(out.choices[0].message.content, str)
    assert out.usage is not None and out.usage.prompt_tokens > 5
    chunks = list(client.chat.completions.create(
        model="gemma-3-270m", messages=messages, max_tokens=12, temperature=0,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == out.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_openai_errors_map_to_the_clients_exceptions(client: OpenAI, stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="some/adapter", prompt="hi", max_tokens=2)
    assert "some/adapter" in missing.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="", prompt="hi", max_tokens=2, temperature=5)
    assert "temperature" in bad.value.message
    unauthorized = OpenAI(api_key="nope", base_url=str(client.base_url), max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        unauthorized.completions.create(model="", prompt="hi", max_tokens=2)


def test_models_lists_the_base_model(client: OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["gemma-3-270m"]


def test_sdk_openai_compatible_endpoint_url_works(stack: Stack, name: str) -> None:
    import io
    import os
    from contextlib import redirect_stdout

    from predibase import Predibase

    os.environ["PREDIBASE_GATEWAY"] = stack.base
    try:
        with redirect_stdout(io.StringIO()):
            pb = Predibase(api_token=stack.token)
        stack.create(name, minReplicas=0, maxReplicas=1, cooldownTime=60)
        url = pb.deployments.openai_compatible_endpoint(name, serving_url=stack.base)
    finally:
        del os.environ["PREDIBASE_GATEWAY"]
    out = OpenAI(api_key=stack.token, base_url=url, max_retries=0).completions.create(
        model="", prompt="One, two,", max_tokens=4, temperature=0)  # fmt: skip
    assert out.choices[0].text.strip()
