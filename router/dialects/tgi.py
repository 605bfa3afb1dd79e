"""Engines that speak the LoRAX/TGI native API: LoRAX and Hugging Face TGI.

Generate requests go to `/generate` and `/generate_stream` in the shapes the gateway's own
LoRAX API already uses (TGI's shapes, which LoRAX forked), so parameters pass through nearly
unchanged. What changes on the way:

- Nothing neutral is invented. TGI refuses `temperature <= 0` (LoRAX takes exactly 0 as
  greedy since its PR #467), both refuse `top_p` outside (0, 1) and `top_k <= 0`, and both
  sample as soon as any of them is given, so "not set" is sent as absent, and greedy
  (`temperature: 0`, or no sampling parameter) sends no sampling parameter at all.
- `details` is always asked for: the answer then carries the tokens, the finish reason and
  the token counts. `return_full_text` is left to the gateway, which renders it itself, and
  `decoder_input_details` is dropped (TGI refuses it on streams; prefill is not rendered).
- `priority` and `api_token` are wakegate's own. `adapter_source` is dropped too: the
  gateway admits only adapters listed in `preloadedAdapters`, which are Hub repositories,
  LoRAX's default source.
- TGI lacks some LoRAX parameters: `response_format` becomes TGI's `grammar` (JSON schema),
  `ignore_eos_token: true` is refused, `return_k_alternatives` is dropped (the gateway's
  tokens carry no alternatives). Both take an adapter as `adapter_id` (TGI since 2.0.6,
  adapters listed with `--lora-adapters`).

Chat requests go to the engine's `/v1/chat/completions`, which applies the model's chat
template. There `model` names the adapter; the base model is `""` on LoRAX and `"tgi"` on
TGI, and `temperature: 0` is how both ask for greedy decoding.

Errors: a non-200 answer carries `{"error", "error_type"}`; inside a stream the same object
arrives as an event (TGI and LoRAX report validation errors of a stream that way, with
status 200), and becomes an UpstreamError like the status would.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from router.dialects import Finish, Generation, Token, UpstreamError, failed, post_json
from router.dialects.openai import (
    DEFAULT_MAX_NEW_TOKENS,
    _finish_reason,
    _tokens,
)
from router.dialects.sse import replica_events
from router.errors import ApiError
from router.params import GenerateRequest, Parameters
from wakegate.store import ReplicaRecord

FINISH_REASONS = frozenset({"length", "eos_token", "stop_sequence"})
# TGI's /generate reports the prompt length in a header; LoRAX in details.prompt_tokens.
PROMPT_TOKENS_HEADER = "x-prompt-tokens"
VALIDATION = "validation"


@dataclass(frozen=True)
class NativeEngine:
    """What differs between the two engines on the wire."""

    name: str
    # Chat `model` that selects the base model, not an adapter.
    base_chat_model: str
    # LoRAX's extensions of TGI's parameters (ignore_eos_token, return_k_alternatives,
    # response_format) are understood as such.
    lorax_parameters: bool


LORAX = NativeEngine("lorax", base_chat_model="", lorax_parameters=True)
TGI = NativeEngine("tgi", base_chat_model="tgi", lorax_parameters=False)


def samples(p: Parameters) -> bool:
    """Whether the request samples: temperature 0 is greedy whatever else is set; otherwise
    `do_sample` or any sampling parameter turns sampling on, as on the engines."""
    if p.temperature == 0:
        return False
    return bool(p.do_sample) or any(
        v is not None for v in (p.temperature, p.top_k, p.top_p, p.typical_p)
    )


def generate_body(engine: NativeEngine, req: GenerateRequest) -> dict[str, Any]:
    """The `/generate` and `/generate_stream` request body."""
    p = req.parameters
    params: dict[str, Any] = {
        "max_new_tokens": p.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        "details": True,
    }
    if samples(p):
        params["do_sample"] = True
        for key in ("temperature", "top_k", "top_p", "typical_p"):
            if getattr(p, key) is not None:
                params[key] = getattr(p, key)
    for key in ("adapter_id", "repetition_penalty", "seed", "truncate", "best_of"):
        if getattr(p, key) is not None:
            params[key] = getattr(p, key)
    if p.stop:
        params["stop"] = p.stop
    if p.watermark:
        params["watermark"] = True
    if engine.lorax_parameters:
        if p.ignore_eos_token:
            params["ignore_eos_token"] = True
        if p.return_k_alternatives is not None:
            params["return_k_alternatives"] = p.return_k_alternatives
        if p.response_format is not None:
            params["response_format"] = p.response_format.model_dump(
                by_alias=True, exclude_none=True
            )
    else:
        if p.ignore_eos_token:
            raise _unsupported(engine, "ignore_eos_token", "it always stops at end of sequence")
        if p.response_format is not None:
            if p.response_format.schema_ is None:
                raise _unsupported(engine, "response_format", "it needs a JSON schema")
            params["grammar"] = {"type": "json", "value": p.response_format.schema_}
    return {"inputs": req.inputs, "parameters": params}


def chat_body(engine: NativeEngine, req: GenerateRequest, stream: bool) -> dict[str, Any]:
    """The `/v1/chat/completions` request body for a chat request (`req.messages` set)."""
    p = req.parameters
    body: dict[str, Any] = {
        "model": p.adapter_id or engine.base_chat_model,
        "messages": req.messages,
        "max_tokens": p.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        "stream": stream,
    }
    if not samples(p):
        body["temperature"] = 0.0  # exactly 0: greedy on both engines' chat route
    else:
        if p.temperature is not None:
            body["temperature"] = p.temperature
        if p.top_p is not None:
            body["top_p"] = p.top_p
    if p.seed is not None:
        body["seed"] = p.seed
    if p.stop:
        body["stop"] = p.stop
    return body


def _unsupported(engine: NativeEngine, field: str, why: str) -> ApiError:
    return ApiError(
        422,
        f"parameters.{field}: not supported by {engine.name.upper()} ({why})",
        field=f"parameters.{field}",
        error_type=VALIDATION,
    )


def _token(raw: Mapping[str, Any]) -> Token:
    logprob = raw.get("logprob")  # null where the engine has none (NaN)
    return Token(
        id=int(raw.get("id", -1)),
        text=str(raw.get("text") or ""),
        logprob=float(logprob) if logprob is not None else 0.0,
        special=bool(raw.get("special", False)),
    )


def _reason(raw: Any, req: GenerateRequest) -> str:
    return raw if raw in FINISH_REASONS else _finish_reason(raw, req)


def _prompt_tokens(details: Mapping[str, Any], header: str | None = None) -> int:
    if details.get("prompt_tokens") is not None:
        return int(details["prompt_tokens"])
    if details.get("prefill"):
        return len(details["prefill"])
    return int(header) if header is not None and header.isdigit() else 0


def _finish(
    details: Mapping[str, Any], req: GenerateRequest, generated: int, prompt_tokens: int
) -> Finish:
    seed = details.get("seed")
    return Finish(
        reason=_reason(details.get("finish_reason"), req),
        prompt_tokens=prompt_tokens,
        generated_tokens=int(details.get("generated_tokens", generated)),
        seed=int(seed) if seed is not None else req.parameters.seed,
    )


def _event_error(data: Mapping[str, Any], generated: int) -> UpstreamError:
    """An error event inside a stream: a validation error is the request's fault (another
    replica would refuse it too); anything else is the replica's."""
    error_type = str(data.get("error_type") or "")
    message = f"replica stream failed ({error_type or 'error'}): {data.get('error')}"
    if error_type == VALIDATION:
        return UpstreamError(message, status=422, before_first_byte=generated == 0, retryable=False)
    return UpstreamError(message, before_first_byte=generated == 0)


class NativeGenerate:
    """The dialect of one engine (LORAX or TGI)."""

    def __init__(self, engine: NativeEngine) -> None:
        self.engine = engine

    def _call(self, req: GenerateRequest, stream: bool) -> tuple[str, dict[str, Any]]:
        if req.messages is not None:
            return "/v1/chat/completions", chat_body(self.engine, req, stream)
        path = "/generate_stream" if stream else "/generate"
        return path, generate_body(self.engine, req)

    async def generate(
        self,
        client: aiohttp.ClientSession,
        replica: ReplicaRecord,
        model: str,
        req: GenerateRequest,
    ) -> Generation:
        path, body = self._call(req, stream=False)
        raw, headers = await post_json(client, f"{replica.url}{path}", body, replica.auth_headers())
        prompt_header = headers.get(PROMPT_TOKENS_HEADER)
        try:
            data = json.loads(raw)
            if req.messages is not None:
                return _chat_generation(data, req)
            details = data.get("details") or {}
            tokens = [_token(t) for t in details.get("tokens") or []]
            finish = _finish(details, req, len(tokens), _prompt_tokens(details, prompt_header))
            return Generation(str(data.get("generated_text") or ""), tokens, finish)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            raise failed("replica answered an unreadable body", exc) from exc

    async def stream(
        self,
        client: aiohttp.ClientSession,
        replica: ReplicaRecord,
        model: str,
        req: GenerateRequest,
    ) -> AsyncIterator[list[Token] | Finish]:
        path, body = self._call(req, stream=True)
        chat = req.messages is not None
        generated = 0
        finish: Finish | None = None
        chat_reason: str | None = None
        prompt_tokens = 0
        try:
            async with replica_events(client, replica, path, body) as events:
                async for batch in events:
                    tokens: list[Token] = []
                    error: UpstreamError | None = None
                    for data in batch:
                        if data.get("error") is not None:
                            # The tokens before it still go out.
                            error = _event_error(data, generated + len(tokens))
                            break
                        if chat:
                            if data.get("usage"):
                                prompt_tokens = int(data["usage"].get("prompt_tokens") or 0)
                            for choice in data.get("choices") or []:
                                tokens += _tokens(choice)
                                chat_reason = choice.get("finish_reason") or chat_reason
                            continue
                        if data.get("token") is not None:
                            tokens.append(_token(data["token"]))
                        details = data.get("details")
                        if details is not None:
                            count = generated + len(tokens)
                            finish = _finish(details, req, count, _prompt_tokens(details))
                        elif data.get("generated_text") is not None:  # the last, no details
                            finish = _finish({}, req, generated + len(tokens), 0)
                    if tokens:
                        generated += len(tokens)
                        yield tokens
                    if error is not None:
                        raise error
        except (aiohttp.ClientError, TimeoutError, ValueError, TypeError, AttributeError) as exc:
            raise failed("replica stream failed", exc, before_first_byte=generated == 0) from exc
        if chat and chat_reason is not None:
            reason = _finish_reason(chat_reason, req)
            finish = Finish(reason, prompt_tokens, generated, req.parameters.seed)
        if finish is None:
            raise UpstreamError(
                "replica stream ended without a finish", before_first_byte=generated == 0
            )
        yield finish


def _chat_generation(data: Mapping[str, Any], req: GenerateRequest) -> Generation:
    choice = data["choices"][0]
    usage = data.get("usage") or {}
    tokens = _tokens(choice)
    finish = Finish(
        reason=_finish_reason(choice.get("finish_reason"), req),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        generated_tokens=int(usage.get("completion_tokens") or len(tokens)),
        seed=req.parameters.seed,
    )
    return Generation(text="".join(t.text for t in tokens), tokens=tokens, finish=finish)
