"""The LoRAX API's JSON of a generation: the synchronous API's bodies (router/lorax_api.py)
and the results of async requests (router/jobs.py)."""

from __future__ import annotations

from typing import Any

from router.dialects import Finish, Generation, Token
from router.params import GenerateRequest


def token_json(t: Token) -> dict[str, Any]:
    return {"id": t.id, "text": t.text, "logprob": t.logprob, "special": t.special}


def details_json(finish: Finish, tokens: list[Token] | None) -> dict[str, Any]:
    d: dict[str, Any] = {
        "finish_reason": finish.reason,
        "prompt_tokens": finish.prompt_tokens,
        "generated_tokens": finish.generated_tokens,
        "seed": finish.seed,
    }
    if tokens is not None:
        d["prefill"] = []
        d["tokens"] = [token_json(t) for t in tokens]
    return d


def lorax_response(gen: Generation, req: GenerateRequest) -> dict[str, Any]:
    text = (req.inputs + gen.text) if req.parameters.return_full_text else gen.text
    out: dict[str, Any] = {"generated_text": text}
    if req.parameters.details:
        out["details"] = details_json(gen.finish, gen.tokens)
    return out
