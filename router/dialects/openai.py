"""Engines that speak the OpenAI completions API (llama.cpp's Python server, vLLM).

LoRAX semantics are mapped onto it: sampling only when asked (`do_sample` or a sampling
parameter), the engine's own sampling defaults neutralised so that "not given" means the
same as on LoRAX. This API reports no token ids, so tokens carry id -1; streams report no
prompt token count, so `prompt_tokens` is 0 where the engine did not say.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from router.dialects import Finish, Generation, Token, UpstreamError, failed, post_json
from router.dialects.sse import replica_events
from router.errors import ApiError
from router.params import GenerateRequest
from wakegate.store import ReplicaRecord

DEFAULT_MAX_NEW_TOKENS = 100
UNKNOWN_TOKEN_ID = -1


def completion_body(
    model: str, req: GenerateRequest, stream: bool, cheap_logprobs: bool
) -> dict[str, Any]:
    p = req.parameters
    if p.response_format is not None:
        raise ApiError(
            422,
            "parameters.response_format: structured output is not supported by this engine",
            field="parameters.response_format",
            error_type="validation",
        )
    sampling = (
        bool(p.do_sample)
        or any(v is not None for v in (p.top_k, p.top_p, p.typical_p))
        or (p.temperature is not None and p.temperature > 0)
    )
    body: dict[str, Any] = {
        # The engine serves each adapter under its own model alias.
        "model": p.adapter_id or model,
        "max_tokens": p.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        "stream": stream,
        "temperature": (p.temperature if p.temperature is not None else 1.0) if sampling else 0.0,
        "top_k": p.top_k or 0,
        "top_p": p.top_p or 1.0,
        "min_p": 0.0,
        "repeat_penalty": p.repetition_penalty or 1.0,
    }
    # Log-probabilities of the chosen tokens fill the LoRAX token objects. Where the engine
    # makes them expensive they are computed only on explicit request (return_k_alternatives);
    # otherwise tokens report 0.0.
    if req.messages is not None:
        body["messages"] = req.messages
    else:
        body["prompt"] = req.inputs
        if cheap_logprobs or p.return_k_alternatives:
            body["logprobs"] = p.return_k_alternatives or 1
    if p.stop:
        body["stop"] = p.stop
    if p.seed is not None:
        body["seed"] = p.seed
    return body


def _finish_reason(reason: str | None, req: GenerateRequest) -> str:
    if reason == "length":
        return "length"
    return "stop_sequence" if req.parameters.stop else "eos_token"


def _path(req: GenerateRequest) -> str:
    return "/v1/chat/completions" if req.messages is not None else "/v1/completions"


def _tokens(choice: dict[str, Any]) -> list[Token]:
    if "delta" in choice or "message" in choice:  # chat: text only
        text = (choice.get("delta") or choice.get("message") or {}).get("content") or ""
        return [Token(UNKNOWN_TOKEN_ID, text, 0.0)] if text else []
    lp = choice.get("logprobs") or {}
    texts = lp.get("tokens") or []
    probs = lp.get("token_logprobs") or []
    if not texts:
        text = choice.get("text") or ""
        return [Token(UNKNOWN_TOKEN_ID, text, 0.0)] if text else []
    padded = [*probs[: len(texts)], *([None] * (len(texts) - len(probs)))]
    return [
        Token(UNKNOWN_TOKEN_ID, t, float(v) if v is not None else 0.0)
        for t, v in zip(texts, padded, strict=True)
    ]


class OpenAICompletions:
    async def generate(
        self,
        client: aiohttp.ClientSession,
        replica: ReplicaRecord,
        model: str,
        req: GenerateRequest,
    ) -> Generation:
        if req.parameters.details:
            # Per-token details come from the stream (one event per token); without
            # log-probabilities the non-streaming answer has no token boundaries.
            tokens: list[Token] = []
            async for item in self.stream(client, replica, model, req):
                if isinstance(item, Finish):
                    return Generation("".join(t.text for t in tokens), tokens, item)
                tokens += item
            raise UpstreamError("replica stream ended without a finish")
        body = completion_body(model, req, stream=False, cheap_logprobs=replica.cheap_logprobs)
        raw, _ = await post_json(client, f"{replica.url}{_path(req)}", body, replica.auth_headers())
        data = orjson.loads(raw)
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        tokens = _tokens(choice)
        finish = Finish(
            reason=_finish_reason(choice.get("finish_reason"), req),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            generated_tokens=int(usage.get("completion_tokens", len(tokens))),
            seed=req.parameters.seed,
        )
        return Generation(text="".join(t.text for t in tokens), tokens=tokens, finish=finish)

    async def stream(
        self,
        client: aiohttp.ClientSession,
        replica: ReplicaRecord,
        model: str,
        req: GenerateRequest,
    ) -> AsyncIterator[list[Token] | Finish]:
        body = completion_body(model, req, stream=True, cheap_logprobs=replica.cheap_logprobs)
        generated = 0
        reason: str | None = None
        prompt_tokens = 0
        try:
            async with replica_events(client, replica, _path(req), body) as events:
                async for chunks in events:
                    tokens: list[Token] = []
                    for chunk in chunks:
                        if chunk.get("usage"):
                            prompt_tokens = int(chunk["usage"].get("prompt_tokens", 0))
                        for choice in chunk.get("choices") or []:
                            tokens += _tokens(choice)
                            reason = choice.get("finish_reason") or reason
                    if tokens:
                        generated += len(tokens)
                        yield tokens
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise failed("replica stream failed", exc, before_first_byte=generated == 0) from exc
        if reason is None and generated == 0:
            # llama-cpp-python answers 200 and then closes an empty stream when it refuses the
            # request (a prompt longer than the context): ask once without streaming, which
            # answers the refusal with its status and reason.
            raise await self._why_empty(client, replica, model, req)
        yield Finish(
            reason=_finish_reason(reason, req),
            prompt_tokens=prompt_tokens,
            generated_tokens=generated,
            seed=req.parameters.seed,
        )

    async def _why_empty(
        self,
        client: aiohttp.ClientSession,
        replica: ReplicaRecord,
        model: str,
        req: GenerateRequest,
    ) -> UpstreamError:
        body = completion_body(model, req, stream=False, cheap_logprobs=replica.cheap_logprobs)
        body["max_tokens"] = 1
        for attempt in range(2):
            try:
                await post_json(client, f"{replica.url}{_path(req)}", body, replica.auth_headers())
                break
            except UpstreamError as exc:
                # The server closes the refused stream's connection after its last chunk, and
                # the pool hands out its newest connection first, that one: the request meets
                # a disconnect or a reset, whichever the race gives. Once more on another.
                if attempt or not isinstance(exc.__cause__, aiohttp.ClientConnectionError):
                    return exc
        return UpstreamError("replica stream ended before any token")
