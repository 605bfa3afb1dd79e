"""A simulated replica: its engine's parameters, its HTTP APIs and its simulated timing.

Each simulated replica is its own aiohttp server (AppRunner + site) on its own port and speaks
the OpenAI completions and chat completions APIs with llama-cpp-python's JSON shapes, so the
real gateway proxies to it unchanged (a chat's prompt is its messages' text, no template). It
also speaks the native LoRAX/TGI API (`POST /generate`, `/generate_stream`) in LoRAX's shapes,
with TGI's validation of the sampling parameters and its error bodies and events, so the
gateway's `lorax` and `tgi` dialects run against it over real HTTP. Every generated token is
TOKEN_TEXT; its id (SIM_TOKEN_ID) is synthetic, there is no tokenizer.
Timing is simulated with plain asyncio sleeps paced against absolute deadlines: an idle
replica costs nothing, a streaming sequence one wake-up per token at most. The sim host
(scaler/sim/host.py) runs every replica in its one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from typing import Any

from aiohttp import web

from scaler.sim.pool import Lease
from wakegate.engines.sim_timing import SimTiming

log = logging.getLogger("scaler.sim.replica")

TOKEN_TEXT = " tok"
TOKEN_LOGPROB = -0.1
SIM_TOKEN_ID = 4321  # synthetic: the sim has no vocabulary
NATIVE_DEFAULT_MAX_NEW_TOKENS = 100  # TGI's default
DEFAULT_MAX_TOKENS = 16  # llama-cpp-python's default
# Tokens due within this much of each other go out in one wake-up (never early, so measured
# durations are lower-bounded by the simulated ones). A non-streaming request only needs its
# end time, so it wakes rarely.
STREAM_TICK_S = 0.005
# Prefix-cache granularity: a prompt's KV cache is kept and matched in blocks of this many
# tokens (words), chained so that a block matches only after the same preceding blocks.
CACHE_BLOCK_TOKENS = 512
NONSTREAM_TICK_S = 0.1
_OFFSET_MARK = -987654321  # placeholder in the streamed chunk template
# What a replica with an API key answers without it (probes, counters), as vLLM does /health.
OPEN_PATHS = frozenset({"/health", "/stats"})
# Request bodies a replica accepts. Real engines (vLLM, LoRAX, llama.cpp's server) set no
# limit of their own: the gateway enforces `max_body_bytes` (8 MiB by default) before
# proxying, so the sim replica must accept whatever a gateway may be configured to pass on,
# not aiohttp's default of 1 MiB (a long prompt failed mid-replay with 413).
MAX_BODY_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True)
class ReplicaParams(SimTiming):
    """One simulated replica's engine: its timing (wakegate/engines/sim_timing.py), its model and
    context; `cache_blocks` counts blocks of CACHE_BLOCK_TOKENS."""

    model: str = "sim-llm"
    n_ctx: int = 32768
    # Native streams send a generation error event after this many tokens, and /generate
    # answers 424 (a replica failing mid-generation, for tests); 0: never.
    fail_after_tokens: int = 0

    @classmethod
    def from_json(cls, raw: Any) -> ReplicaParams:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ValueError("params must be an object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown params: {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for key, value in raw.items():
            default = getattr(cls, key)
            if isinstance(default, str):
                ok = isinstance(value, str)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, int | float) and not isinstance(value, bool)
                value = float(value) if ok else value
            if not ok:
                raise ValueError(f"params.{key} has the wrong type")
            values[key] = value
        params = cls(**values)
        flag = params.out_of_range()
        if flag is not None:
            raise ValueError(f"params.{flag[2:].replace('-', '_')} is out of range")
        if params.n_ctx < 1:
            raise ValueError("params: n_ctx must be >= 1")
        if params.fail_after_tokens < 0:
            raise ValueError("params: fail_after_tokens must be >= 0")
        return params


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    # FastAPI's shape ({"detail": ...}), which llama-cpp-python's server answers with.
    return web.json_response({"detail": message, **extra}, status=status)


def _native_error(status: int, message: str, error_type: str) -> web.Response:
    # LoRAX's and TGI's error body (their ErrorResponse).
    return web.json_response({"error": message, "error_type": error_type}, status=status)


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if port:  # a fixed port: rebind across restarts; never for port 0 (see below)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}  # fmt: skip
NATIVE_TOKEN = {"id": SIM_TOKEN_ID, "text": TOKEN_TEXT, "logprob": TOKEN_LOGPROB, "special": False}
# Every native stream event but the last is these same bytes.
NATIVE_TOKEN_EVENT = _sse({"token": NATIVE_TOKEN, "generated_text": None, "details": None})


@dataclass
class _Request:
    prompt: str
    prompt_tokens: int
    max_tokens: int
    stream: bool
    logprobs: bool
    include_usage: bool
    cached_tokens: int = 0
    chat: bool = False
    # Native API only.
    details: bool = False
    seed: int | None = None


def _id_prefix(req: _Request) -> str:
    return "chatcmpl" if req.chat else "cmpl"


def prefix_blocks(prompt: str) -> list[bytes]:
    """Chained hashes of the prompt's full blocks: block i matches only with blocks 0..i-1."""
    words = prompt.split()
    out: list[bytes] = []
    previous = b""
    for start in range(0, len(words) - CACHE_BLOCK_TOKENS + 1, CACHE_BLOCK_TOKENS):
        block = " ".join(words[start : start + CACHE_BLOCK_TOKENS]).encode()
        previous = hashlib.sha1(previous + block, usedforsecurity=False).digest()
        out.append(previous)
    return out


class SimReplica:
    """One simulated engine: a real HTTP server inside the host's event loop."""

    def __init__(
        self,
        *,
        replica_id: str,
        deployment: str,
        revision: int,
        accelerator: str,
        params: ReplicaParams,
        time_scale: float,
        bind_host: str,
        advertise_host: str,
        lease: Lease,
        totals: dict[str, list[int]] | None = None,
        api_key: str | None = None,
    ) -> None:
        self.replica_id = replica_id
        # Like an engine's --api-key: every route but /health and /stats wants it.
        self._api_key = api_key
        self.deployment = deployment
        self.revision = revision
        self.accelerator = accelerator
        self.params = params
        self.time_scale = time_scale
        self.lease = lease
        self._bind_host = bind_host
        self._advertise_host = advertise_host
        self._loop = asyncio.get_running_loop()
        self._ready_at = self._loop.time() + params.load_s / time_scale
        self._slots = asyncio.Semaphore(params.batch)  # FIFO
        self._idle = asyncio.Event()
        self._idle.set()
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.stopping = False
        self.stopped = False
        # Counters for tests and benchmarks (GET /stats).
        self.active = 0
        self.waiting = 0
        self.served = 0
        self.disconnected = 0
        self.rejected = 0
        self.tokens = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.max_concurrent = 0
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        # Per-deployment [prompt tokens, cached tokens], kept by the host beyond this replica.
        self._totals = totals if totals is not None else {}

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._loop.time() >= self._ready_at

    @property
    def state(self) -> str:
        if self.stopped:
            return "stopped"
        if self.stopping:
            return "draining"
        return "ready" if self.ready else "loading"

    @web.middleware
    async def _check_key(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self._api_key and request.path not in OPEN_PATHS:
            expected = f"Bearer {self._api_key}".encode()
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return json_error(401, "invalid or missing API key")
        return await handler(request)

    async def start(self) -> None:
        app = web.Application(middlewares=[self._check_key], client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_post("/generate", self._generate)
        app.router.add_post("/generate_stream", self._generate_stream)
        # After the host's own grace period, whatever still runs is cut off quickly.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = bind_socket(self._bind_host, 0)
        port = int(sock.getsockname()[1])
        try:
            await web.SockSite(self._runner, sock, backlog=256).start()
        except BaseException:
            sock.close()
            await self._runner.cleanup()
            raise
        self.url = f"http://{self._advertise_host}:{port}"

    async def stop(self, grace_s: float) -> None:
        """Refuse new requests, let in-flight ones finish for up to `grace_s`, then close."""
        self.stopping = True
        if grace_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
        if self._runner is not None:
            await self._runner.cleanup()
        self.stopped = True

    def crash(self) -> None:
        """Die as a killed engine does: refuse new requests and reset every open connection
        at once, so that nothing in flight finishes (DELETE /replicas/{id}?crash=1)."""
        self.stopping = True
        server = self._runner.server if self._runner is not None else None
        for handler in server.connections if server is not None else []:
            if handler.transport is not None:
                handler.transport.abort()

    def describe(self) -> dict[str, Any]:
        return {
            "replica_id": self.replica_id,
            "deployment": self.deployment,
            "revision": self.revision,
            "url": self.url,
            "accelerator": self.accelerator,
            "state": self.state,
            "requested_at": self.lease.requested_at,
            "acquired_at": self.lease.acquired_at,
            "params": asdict(self.params),
        }

    def stats(self) -> dict[str, Any]:
        return {
            "replica_id": self.replica_id,
            "state": self.state,
            "requests": self.served,
            "disconnected": self.disconnected,
            "rejected": self.rejected,
            "active": self.active,
            "waiting": self.waiting,
            "max_concurrent": self.max_concurrent,
            "tokens_generated": self.tokens,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
        }

    # --- HTTP -------------------------------------------------------------------------------

    def _unavailable(self, native: bool = False) -> web.Response | None:
        if self.stopping:
            why = "replica is shutting down"
        elif not self.ready:
            why = "model is loading"
        else:
            return None
        return _native_error(503, why, "unhealthy") if native else json_error(503, why)

    async def _health(self, _: web.Request) -> web.Response:
        refusal = self._unavailable()
        return refusal or web.json_response({"status": "ok"})

    async def _models(self, _: web.Request) -> web.Response:
        refusal = self._unavailable()
        model = {"id": self.params.model, "object": "model", "owned_by": "me", "permissions": []}
        return refusal or web.json_response({"object": "list", "data": [model]})

    async def _stats(self, _: web.Request) -> web.Response:
        return web.json_response(self.stats())

    def _parse(self, body: Any) -> _Request:
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        chat = "messages" in body
        if chat:
            messages = body["messages"]
            if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
            ):
                raise ValueError("messages must be a list of objects with a string content")
            prompt = "\n".join(m["content"] for m in messages)
        else:
            prompt = body.get("prompt", "")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ValueError("prompt must be a string")
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            max_tokens = DEFAULT_MAX_TOKENS
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ValueError("max_tokens must be an integer >= 1")
        logprobs = body.get("logprobs")
        if logprobs is not None and (not isinstance(logprobs, int) or logprobs < 0):
            raise ValueError("logprobs must be a non-negative integer")
        options = body.get("stream_options") or {}
        return _Request(
            prompt=prompt,
            prompt_tokens=len(prompt.split()),
            max_tokens=max_tokens,
            stream=bool(body.get("stream")),
            logprobs=logprobs is not None,
            include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
            chat=chat,
        )

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        refusal = self._unavailable()
        if refusal is not None:
            self.rejected += 1
            return refusal
        try:
            body = await request.json()
        except ValueError:
            return json_error(400, "request body is not valid JSON")
        try:
            req = self._parse(body)
        except ValueError as exc:
            return json_error(422, str(exc))
        total = req.prompt_tokens + req.max_tokens
        if total > self.params.n_ctx:
            return json_error(
                400,
                f"Requested tokens ({total}) exceed context window of {self.params.n_ctx}",
            )
        if req.stream:
            return await self._serve(req, partial(self._stream, request, req))
        return await self._serve(req, partial(self._complete, req))

    async def _serve(
        self, req: _Request, work: Callable[[], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Wait for a batch slot (FIFO), then generate, counting the request and its tokens."""
        self.waiting += 1
        self._idle.clear()
        try:
            await self._slots.acquire()
        except BaseException:
            self.waiting -= 1
            self._check_idle()
            raise
        self.waiting -= 1
        self.active += 1
        self.max_concurrent = max(self.max_concurrent, self.active)
        req.cached_tokens = self._use_cache(req.prompt)
        self.prompt_tokens += req.prompt_tokens
        self.cached_tokens += req.cached_tokens
        totals = self._totals.setdefault(self.deployment, [0, 0])
        totals[0] += req.prompt_tokens
        totals[1] += req.cached_tokens
        try:
            return await work()
        finally:
            self.active -= 1
            self._slots.release()
            self._check_idle()

    # --- the native LoRAX/TGI API ----------------------------------------------------------

    @staticmethod
    def _parse_native(body: Any, stream: bool) -> _Request:
        """A /generate(_stream) body, validated as TGI's validation.rs does (its messages)."""
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        inputs = body.get("inputs")
        if not isinstance(inputs, str) or not inputs:
            raise ValueError("`inputs` cannot be empty")
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise ValueError("`parameters` must be an object")

        def number(key: str) -> float | None:
            value = params.get(key)
            if value is not None and (
                not isinstance(value, int | float) or isinstance(value, bool)
            ):
                raise ValueError(f"`{key}` must be a number")
            return value

        temperature, top_p, top_k = number("temperature"), number("top_p"), number("top_k")
        if temperature is not None and temperature <= 0:
            raise ValueError("`temperature` must be strictly positive")
        if top_p is not None and not 0 < top_p < 1:
            raise ValueError("`top_p` must be > 0.0 and < 1.0")
        if top_k is not None and (top_k <= 0 or top_k != int(top_k)):
            raise ValueError("`top_k` must be strictly positive")
        max_new = params.get("max_new_tokens")
        if max_new is None:
            max_new = NATIVE_DEFAULT_MAX_NEW_TOKENS
        if not isinstance(max_new, int) or isinstance(max_new, bool) or max_new < 1:
            raise ValueError("`max_new_tokens` must be strictly positive")
        if stream and params.get("decoder_input_details"):
            raise ValueError(
                "`decoder_input_details` == true is not supported when streaming tokens"
            )
        seed = params.get("seed")
        return _Request(
            prompt=inputs,
            prompt_tokens=len(inputs.split()),
            max_tokens=max_new,
            stream=stream,
            logprobs=False,
            include_usage=False,
            details=bool(params.get("details")),
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        )

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        return await self._native(request, stream=False)

    async def _generate_stream(self, request: web.Request) -> web.StreamResponse:
        return await self._native(request, stream=True)

    async def _native(self, request: web.Request, stream: bool) -> web.StreamResponse:
        refusal = self._unavailable(native=True)
        if refusal is not None:
            self.rejected += 1
            return refusal
        try:
            req = self._parse_native(await request.json(), stream)
            total = req.prompt_tokens + req.max_tokens
            if total > self.params.n_ctx:
                raise ValueError(
                    f"`inputs` tokens + `max_new_tokens` must be <= {self.params.n_ctx}. Given: "
                    f"{req.prompt_tokens} `inputs` tokens and {req.max_tokens} `max_new_tokens`"
                )
        except ValueError as exc:
            message = f"Input validation error: {exc}"
            if not stream:
                return _native_error(422, message, "validation")
            # A stream reports its validation error as its one event, with status 200.
            resp = web.StreamResponse(headers=SSE_HEADERS)
            await resp.prepare(request)
            await resp.write(_sse({"error": message, "error_type": "validation"}))
            await resp.write_eof()
            return resp
        if stream:
            return await self._serve(req, partial(self._native_stream, request, req))
        return await self._serve(req, partial(self._native_complete, req))

    def _use_cache(self, prompt: str) -> int:
        """Tokens of the prompt's prefix already in this replica's KV cache; the prompt's
        blocks become the most recently used (LRU eviction at `cache_blocks`)."""
        capacity = self.params.cache_blocks
        if capacity <= 0:
            return 0
        blocks = prefix_blocks(prompt)
        hits = 0
        for block in blocks:
            if block not in self._cache:
                break
            hits += 1
        for block in blocks:
            self._cache[block] = None
            self._cache.move_to_end(block)
        while len(self._cache) > capacity:
            self._cache.popitem(last=False)
        return hits * CACHE_BLOCK_TOKENS

    def _check_idle(self) -> None:
        if self.active == 0 and self.waiting == 0:
            self._idle.set()

    # --- generation -------------------------------------------------------------------------

    def _interval(self) -> float:
        p = self.params
        return (1.0 + p.batch_slowdown * max(self.active - 1, 0)) / (p.tps * self.time_scale)

    async def _token_clock(self, req: _Request, tick: float) -> AsyncIterator[int]:
        """Yields how many tokens are due, as they come due: the first after the time to first
        token, then one per (degraded) token interval, several per wake-up when they fall
        within `tick` of each other or the loop is late."""
        p = self.params
        first = (
            p.ttft_s + (req.prompt_tokens - req.cached_tokens) / p.prefill_tps
        ) / self.time_scale
        due = self._loop.time() + first
        left = req.max_tokens
        first_out = True
        while left > 0:
            now = self._loop.time()
            # The first token goes out alone, so the time to first token stays exact.
            horizon = max(due + (0.0 if first_out else tick), now)
            first_out = False
            n, last = 1, due
            nxt = due + self._interval()
            while n < left and nxt <= horizon:
                n, last = n + 1, nxt
                nxt += self._interval()
            if last > now:
                await asyncio.sleep(last - now)
            left -= n
            due = nxt
            self.tokens += n
            yield n

    def _head(self, cid: str, created: int, req: _Request, stream: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if stream else "chat.completion") if req.chat else None
        return {
            "id": cid,
            "object": kind or "text_completion",
            "created": created,
            "model": self.params.model,
        }

    @staticmethod
    def _choice(
        req: _Request, text: str, logprobs: Any, finish: str | None, stream: bool
    ) -> dict[str, Any]:
        if not req.chat:
            return {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}
        if stream:
            return {"index": 0, "delta": {"content": text}, "finish_reason": finish}
        message = {"role": "assistant", "content": text}
        return {"index": 0, "message": message, "finish_reason": finish}

    @staticmethod
    def _logprobs(prompt: str, count: int) -> dict[str, Any]:
        step = len(TOKEN_TEXT)
        return {
            "tokens": [TOKEN_TEXT] * count,
            "text_offset": [len(prompt) + i * step for i in range(count)],
            "token_logprobs": [TOKEN_LOGPROB] * count,
            "top_logprobs": [{TOKEN_TEXT: TOKEN_LOGPROB}] * count,
        }

    def _usage(self, req: _Request) -> dict[str, Any]:
        return {
            "prompt_tokens": req.prompt_tokens,
            "completion_tokens": req.max_tokens,
            "total_tokens": req.prompt_tokens + req.max_tokens,
            "prompt_tokens_details": {"cached_tokens": req.cached_tokens},
        }

    async def _complete(self, req: _Request) -> web.Response:
        cid, created = f"{_id_prefix(req)}-{uuid.uuid4()}", int(time.time())
        async for _ in self._token_clock(req, NONSTREAM_TICK_S):
            pass
        lp = self._logprobs(req.prompt, req.max_tokens) if req.logprobs else None
        choice = self._choice(req, TOKEN_TEXT * req.max_tokens, lp, "length", stream=False)
        self.served += 1
        head = self._head(cid, created, req, stream=False)
        body = {**head, "choices": [choice], "usage": self._usage(req)}
        return web.json_response(body)

    async def _stream(self, request: web.Request, req: _Request) -> web.StreamResponse:
        cid, created = f"{_id_prefix(req)}-{uuid.uuid4()}", int(time.time())
        head = self._head(cid, created, req, stream=True)
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )

        # Every chunk is the same bytes but for its text offset and the last one's finish
        # reason: build two templates once, not one JSON document per token.
        def template(finish: str | None) -> tuple[bytes, bytes]:
            lp = None
            if req.logprobs:
                lp = {
                    "tokens": [TOKEN_TEXT],
                    "text_offset": [_OFFSET_MARK],
                    "token_logprobs": [TOKEN_LOGPROB],
                    "top_logprobs": [{TOKEN_TEXT: TOKEN_LOGPROB}],
                }
            choice = self._choice(req, TOKEN_TEXT, lp, finish, stream=True)
            before, _, after = _sse({**head, "choices": [choice]}).partition(
                str(_OFFSET_MARK).encode()
            )
            return before, after

        middle, final = template(None), template("length")
        base, step = len(req.prompt), len(TOKEN_TEXT)

        def chunk(index: int) -> bytes:
            before, after = final if index == req.max_tokens - 1 else middle
            if not after:  # no offset in it
                return before
            return before + str(base + index * step).encode() + after

        def merged(first: int, n: int) -> bytes:
            # One chunk carrying n tokens (stream_interval_s > 0).
            last = first + n >= req.max_tokens
            lp = None
            if req.logprobs:
                lp = {
                    "tokens": [TOKEN_TEXT] * n,
                    "text_offset": [base + (first + i) * step for i in range(n)],
                    "token_logprobs": [TOKEN_LOGPROB] * n,
                    "top_logprobs": [{TOKEN_TEXT: TOKEN_LOGPROB}] * n,
                }
            choice = self._choice(req, TOKEN_TEXT * n, lp, "length" if last else None, True)
            return _sse({**head, "choices": [choice]})

        interval = self.params.stream_interval_s / self.time_scale
        sent = 0
        try:
            await resp.prepare(request)
            async for n in self._token_clock(req, max(STREAM_TICK_S, interval)):
                if interval > 0:
                    await resp.write(merged(sent, n))
                else:
                    await resp.write(b"".join(chunk(i) for i in range(sent, sent + n)))
                sent += n
            if req.include_usage:
                await resp.write(_sse({**head, "choices": [], "usage": self._usage(req)}))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            self.served += 1
        except ConnectionError:
            self.disconnected += 1  # the client went away; the sequence ends with it
        return resp

    def _native_details(self, req: _Request, generated: int) -> dict[str, Any]:
        return {
            "finish_reason": "length",
            "prompt_tokens": req.prompt_tokens,
            "generated_tokens": generated,
            "seed": req.seed,
        }

    def _failing(self, req: _Request) -> _Request | None:
        """The part of `req` generated before the simulated failure, if it fails."""
        fail_after = self.params.fail_after_tokens
        if 0 < fail_after < req.max_tokens:
            return replace(req, max_tokens=fail_after)
        return None

    async def _native_complete(self, req: _Request) -> web.Response:
        failing = self._failing(req)
        async for _ in self._token_clock(failing or req, NONSTREAM_TICK_S):
            pass
        self.served += 1
        if failing is not None:
            return _native_error(424, "Request failed during generation: simulated", "generation")
        body: dict[str, Any] = {"generated_text": TOKEN_TEXT * req.max_tokens}
        if req.details:
            details = self._native_details(req, req.max_tokens)
            body["details"] = {**details, "prefill": [], "tokens": [NATIVE_TOKEN] * req.max_tokens}
        return web.json_response(body)

    async def _native_stream(self, request: web.Request, req: _Request) -> web.StreamResponse:
        """One event per token (never merged: the API has no multi-token event); the last one
        carries the text and, when asked, the details."""
        resp = web.StreamResponse(headers=SSE_HEADERS)
        failing = self._failing(req)
        details = self._native_details(req, req.max_tokens) if req.details else None
        last = _sse({"token": NATIVE_TOKEN, "generated_text": TOKEN_TEXT * req.max_tokens,
                     "details": details})  # fmt: skip
        interval = self.params.stream_interval_s / self.time_scale
        sent = 0
        try:
            await resp.prepare(request)
            async for n in self._token_clock(failing or req, max(STREAM_TICK_S, interval)):
                sent += n
                done = sent == req.max_tokens
                await resp.write(
                    NATIVE_TOKEN_EVENT * (n - 1 if done else n) + (last if done else b"")
                )
            if failing is not None:
                error = "Request failed during generation: simulated"
                await resp.write(_sse({"error": error, "error_type": "generation"}))
            await resp.write_eof()
            self.served += 1
        except ConnectionError:
            self.disconnected += 1  # the client went away; the sequence ends with it
        return resp
