"""Engine dialects: how the gateway talks to a replica, whatever public API the client used.

A dialect turns a validated generate request into the engine's own HTTP call and the
engine's answer into neutral `Token` / `Finish` items. The public APIs (LoRAX, OpenAI)
render those items in their own shapes, so each engine is written once. Dialects by name:
`openai` (llama.cpp, vLLM, the sim engine), `lorax` and `tgi` (the native LoRAX/TGI API).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from router.params import GenerateRequest
from wakegate.store import ReplicaRecord


@dataclass(frozen=True)
class Token:
    id: int
    text: str
    logprob: float
    # An engine's special token (end of sequence): part of the token list, not of the text.
    special: bool = False


@dataclass(frozen=True)
class Finish:
    reason: str  # LoRAX vocabulary: length | eos_token | stop_sequence
    prompt_tokens: int
    generated_tokens: int
    seed: int | None = None


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: list[Token]
    finish: Finish


class UpstreamError(Exception):
    """The replica failed. `before_first_byte` tells whether a retry elsewhere is safe;
    `retryable` is False when the replica refused the request itself (a 4xx such as a prompt
    longer than its context): another replica would refuse it too, and this one is healthy."""

    def __init__(
        self,
        message: str,
        status: int = 502,
        before_first_byte: bool = True,
        retryable: bool = True,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.before_first_byte = before_first_byte
        self.retryable = retryable

    @classmethod
    def answered(cls, status: int, raw: bytes) -> UpstreamError:
        """The replica answered an error status (`raw`: its body): client errors pass
        through, others are 502."""
        message = _error_message(status, raw)
        # 424: TGI and LoRAX report a failed generation (the model, not the request).
        if 400 <= status < 500 and status not in (408, 424, 429):
            return cls(message, status=status, retryable=False)
        return cls(message, status=502)


def _error_message(status: int, raw: bytes) -> str:
    """The engine's own reason from an error body (JSON `detail` or `error`), else its start."""
    try:
        data = json.loads(raw)
        detail = data.get("detail") or data.get("error") or data
        return f"replica answered {status}: {detail}"
    except ValueError:
        return f"replica answered {status}: {raw[:200]!r}"


class Dialect(Protocol):
    async def generate(
        self,
        client: aiohttp.ClientSession,
        replica: ReplicaRecord,
        model: str,
        req: GenerateRequest,
    ) -> Generation: ...

    def stream(
        self,
        client: aiohttp.ClientSession,
        replica: ReplicaRecord,
        model: str,
        req: GenerateRequest,
    ) -> AsyncIterator[Token | Finish]: ...


def get_dialect(name: str) -> Dialect:
    from router.dialects.openai import OpenAICompletions
    from router.dialects.tgi import LORAX, TGI, NativeGenerate

    dialects: dict[str, Dialect] = {
        "openai": OpenAICompletions(),
        "lorax": NativeGenerate(LORAX),
        "tgi": NativeGenerate(TGI),
    }
    return dialects[name]
