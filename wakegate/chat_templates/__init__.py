"""Chat templates wakegate ships, for models whose weights carry none.

A model's chat template turns OpenAI chat messages into the prompt the model was trained on.
Engines that read the template from the model's own files (vLLM, TGI, LoRAX: the Hugging Face
tokenizer config; llama.cpp: the GGUF's `tokenizer.chat_template`) use it as they find it. Some
weights come without one (the packaged Gemma 3 270M GGUF has none, and llama-cpp-python then
falls back to Llama 2's `[INST]` markup, which a Gemma model answers with nothing): the
catalogue names a template for them (`chat_template`), either one of the files beside this
module by name or a Jinja file of the operator's own by path.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

BUILT_IN: frozenset[str] = frozenset({"gemma3"})


def template_text(name_or_path: str) -> str:
    """The Jinja source of a built-in template (by name) or of a file (by path)."""
    if name_or_path in BUILT_IN:
        return files(__name__).joinpath(f"{name_or_path}.jinja").read_text(encoding="utf-8")
    return Path(name_or_path).read_text(encoding="utf-8")


def is_known(name_or_path: str) -> bool:
    """A built-in template's name, or a path to an existing file."""
    return name_or_path in BUILT_IN or Path(name_or_path).is_file()
