"""The llama.cpp replica's entry point: llama-cpp-python's OpenAI server with a chat template
that fits the model.

llama-cpp-python formats chat with the GGUF's `tokenizer.chat_template` and, when the file has
none, silently with Llama 2's `[INST]` markup: a Gemma model answers that with nothing or with
more markup. So every chat here goes through one registered format, `wakegate`, that applies
the template the catalogue names for the model (`WAKEGATE_CHAT_TEMPLATE`: a name of
wakegate/chat_templates/ or a file path), else the GGUF's own, else refuses the chat with a 400
that says so (a base model without a template is still served on /v1/completions). A template
that refuses the conversation (roles out of order) is a 400 too, never a 500.

Run as `python -m scaler.replica.llamacpp <llama_cpp.server arguments> --chat_format wakegate`
(scaler/engines/llamacpp.py builds the command).
"""

from __future__ import annotations

import functools
import os
from typing import Any

from fastapi import HTTPException
from llama_cpp import Llama
from llama_cpp.llama_chat_format import (
    ChatFormatter,
    ChatFormatterResponse,
    Jinja2ChatFormatter,
    LlamaChatCompletionHandler,
    LlamaChatCompletionHandlerRegistry,
    chat_formatter_to_chat_completion_handler,
)

from scaler.replica import CHAT_TEMPLATE_ENV, LLAMACPP_CHAT_FORMAT
from wakegate.chat_templates import template_text

NO_TEMPLATE = (
    "this model has no chat template, so it cannot answer chat messages: send the text as a "
    "prompt to /v1/completions, or name a chat template for the model in the models file "
    "(chat_template, docs/engines.md)"
)


class _Refusing(ChatFormatter):
    """A template's own refusal (`raise_exception`, a Jinja error) is the client's fault: 400."""

    def __init__(self, inner: ChatFormatter) -> None:
        self.inner = inner

    def __call__(self, **kwargs: Any) -> ChatFormatterResponse:
        try:
            return self.inner(**kwargs)
        except Exception as exc:  # jinja2's errors and the template's ValueError alike
            raise HTTPException(400, detail=f"chat template: {exc}") from None


def _no_template(**_: Any) -> Any:
    raise HTTPException(400, detail=NO_TEMPLATE)


def _handler_for(llama: Llama, template: str | None) -> LlamaChatCompletionHandler:
    source = template if template is not None else llama.metadata.get("tokenizer.chat_template")
    if source is None:
        return _no_template
    eos, bos = llama.token_eos(), llama.token_bos()
    return _formatted(
        source,
        llama._model.token_get_text(eos) if eos != -1 else "",
        llama._model.token_get_text(bos) if bos != -1 else "",
        eos,
    )


@functools.cache
def _formatted(source: str, eos: str, bos: str, eos_id: int) -> LlamaChatCompletionHandler:
    """A template compiled once per model tokens (a config file may serve several aliases,
    and llama-cpp-python loads and drops their models as requests name them)."""
    formatter = Jinja2ChatFormatter(
        template=source, eos_token=eos, bos_token=bos, stop_token_ids=[eos_id]
    )
    return chat_formatter_to_chat_completion_handler(_Refusing(formatter))


def chat_handler(template: str | None) -> LlamaChatCompletionHandler:
    """The `wakegate` chat format: the handler for the model a request names, made when the
    model's tokens are known."""

    def handle(*, llama: Llama, **kwargs: Any) -> Any:
        return _handler_for(llama, template)(llama=llama, **kwargs)

    return handle


def main() -> None:
    named = os.environ.get(CHAT_TEMPLATE_ENV)
    template = template_text(named) if named else None
    LlamaChatCompletionHandlerRegistry().register_chat_completion_handler(  # type: ignore[no-untyped-call]
        LLAMACPP_CHAT_FORMAT, chat_handler(template), overwrite=True
    )
    from llama_cpp.server.__main__ import main as serve

    serve()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
