"""Engine dialects: how the gateway talks to a replica, whatever public API the client used.

A dialect turns a validated generate request into the engine's own HTTP call and the
engine's answer into neutral `Token` / `Finish` items (a stream: a list of tokens per read
from the replica, then the finish). The public APIs (LoRAX, OpenAI) render those items in
their own shapes, so each engine is written once. Dialects by name:
`openai` (llama.cpp, vLLM, the sim engine), `lorax` and `tgi` (the native LoRAX/TGI API).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from router.params import GenerateRequest
from wakegate.store import ReplicaRecord

log = logging.getLogger(__name__)


class Token(NamedTuple):
    """One generated token (a named tuple: streams make one per token, cheaply)."""

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


# What a JSON call to a replica carries besides its key (the body is made by orjson).
JSON_HEADERS = {"Content-Type": "application/json"}


async def post_json(
    client: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[bytes, CIMultiDictProxy[str]]:
    """POST `body` to a replica and read its whole answer: a 200's body and headers. An
    error status raises UpstreamError.answered (the replica's own reason), an unreachable
    replica UpstreamError (its cause: the aiohttp error)."""
    try:
        async with client.post(
            url, data=orjson.dumps(body), headers={**JSON_HEADERS, **headers}
        ) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise UpstreamError.answered(resp.status, raw)
            return raw, resp.headers
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise failed("replica unreachable", exc) from exc


def failed(what: str, exc: BaseException, before_first_byte: bool = True) -> UpstreamError:
    """A call to a replica that broke: `what` for the client and the request log, the cause
    (an aiohttp error naming the replica's internal address) for the gateway's log only."""
    log.warning("%s: %r", what, exc)
    return UpstreamError(what, before_first_byte=before_first_byte)


# An engine's error reason reaches the client clipped (a whole body can be large).
MAX_DETAIL_CHARS = 500


def _error_message(status: int, raw: bytes) -> str:
    """The engine's own reason from an error body (JSON `detail` or `error`), else its start."""
    try:
        data = json.loads(raw)
        detail = str(data.get("detail") or data.get("error") or data)
    except ValueError:
        detail = repr(raw[:200])
    if len(detail) > MAX_DETAIL_CHARS:
        detail = detail[:MAX_DETAIL_CHARS] + "..."
    return f"replica answered {status}: {detail}"


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
    ) -> AsyncIterator[list[Token] | Finish]:
        """The tokens of each read from the replica (never an empty list), then the finish."""
        ...


_DIALECTS: dict[str, Dialect] = {}


def get_dialect(name: str) -> Dialect:
    """The dialect of that name (KeyError for none), made once: every request asks."""
    dialect = _DIALECTS.get(name)
    if dialect is None:
        if _DIALECTS:
            raise KeyError(name)
        # Imported here: the dialect modules import this one's types.
        from router.dialects.openai import OpenAICompletions
        from router.dialects.tgi import LORAX, TGI, NativeGenerate

        _DIALECTS.update(
            openai=OpenAICompletions(), lorax=NativeGenerate(LORAX), tgi=NativeGenerate(TGI)
        )
        dialect = _DIALECTS[name]
    return dialect
