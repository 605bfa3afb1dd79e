"""The `lorax` and `tgi` dialects: request bodies as pure units, then generate and stream over
real HTTP against a simulated replica.

The sim replica (scaler/sim/replica.py, started in-process here) speaks the native LoRAX/TGI
API in the documented shapes: LoRAX's `/generate` answer and `/generate_stream` events,
TGI's validation of the sampling parameters (temperature > 0, 0 < top_p < 1, top_k > 0),
its `{"error", "error_type"}` bodies and events. Its token ids are synthetic. No real LoRAX
or TGI ran for these tests: the build machines have no GPU.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from router.dialects import Finish, Token, UpstreamError, get_dialect
from router.dialects.tgi import LORAX, TGI, NativeEngine, _token, chat_body, generate_body
from router.errors import ApiError
from router.openai_api import OpenAIStream
from router.params import GenerateRequest, Parameters
from scaler.sim.pool import Lease
from scaler.sim.replica import SIM_TOKEN_ID, TOKEN_LOGPROB, TOKEN_TEXT, ReplicaParams, SimReplica
from wakegate.engines import get_profile
from wakegate.procs import free_port
from wakegate.store import ReplicaRecord

PROMPT = "one two three"  # three prompt tokens for the sim (it counts words)


def native(**parameters: Any) -> GenerateRequest:
    return GenerateRequest(inputs=PROMPT, parameters=Parameters(**parameters))


def chat(**parameters: Any) -> GenerateRequest:
    # As the OpenAI chat route builds it: no inputs, the messages kept.
    messages = [{"role": "user", "content": "hi"}]
    return GenerateRequest.model_construct(
        inputs="", parameters=Parameters(**parameters), stream=False, messages=messages
    )


# --- request bodies -------------------------------------------------------------------------

BASE = {"max_new_tokens": 100, "details": True}

GENERATE_CASES: list[tuple[str, NativeEngine, dict[str, Any], dict[str, Any]]] = [
    ("greedy-omits-temperature-top-p-top-k", TGI, {}, BASE),
    ("temperature-zero-is-greedy-whatever-else-is-set", LORAX,
     {"do_sample": True, "temperature": 0.0, "top_p": 0.9, "top_k": 5}, BASE),
    ("sampling-forwards-its-parameters", TGI,
     {"do_sample": True, "temperature": 0.7, "top_k": 40, "top_p": 0.9, "typical_p": 0.95},
     {**BASE, "do_sample": True, "temperature": 0.7, "top_k": 40, "top_p": 0.9,
      "typical_p": 0.95}),
    ("a-sampling-parameter-alone-samples", LORAX, {"temperature": 0.5},
     {**BASE, "do_sample": True, "temperature": 0.5}),
    ("wakegate-only-and-gateway-rendered-params-dropped", LORAX,
     {"priority": 5, "api_token": "secret", "return_full_text": True, "details": False,
      "decoder_input_details": True, "adapter_source": "s3"}, BASE),
    ("adapter-id-forwarded-for-lorax", LORAX, {"adapter_id": "org/a"},
     {**BASE, "adapter_id": "org/a"}),
    ("adapter-id-forwarded-for-tgi-multi-lora", TGI, {"adapter_id": "org/a"},
     {**BASE, "adapter_id": "org/a"}),
    ("limits-and-seed-forwarded", TGI,
     {"max_new_tokens": 7, "stop": ["\n"], "seed": 3, "truncate": 50,
      "repetition_penalty": 1.1, "watermark": True},
     {**BASE, "max_new_tokens": 7, "stop": ["\n"], "seed": 3, "truncate": 50,
      "repetition_penalty": 1.1, "watermark": True}),
    ("lorax-extensions-forwarded-to-lorax", LORAX,
     {"ignore_eos_token": True, "return_k_alternatives": 2,
      "response_format": {"type": "json_object", "schema": {"type": "object"}}},
     {**BASE, "ignore_eos_token": True, "return_k_alternatives": 2,
      "response_format": {"type": "json_object", "schema": {"type": "object"}}}),
    ("tgi-takes-a-json-schema-as-its-grammar", TGI,
     {"return_k_alternatives": 2,
      "response_format": {"type": "json_object", "schema": {"type": "object"}}},
     {**BASE, "grammar": {"type": "json", "value": {"type": "object"}}}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("engine", "parameters", "expected"),
    [c[1:] for c in GENERATE_CASES],
    ids=[c[0] for c in GENERATE_CASES],
)
def test_generate_body(
    engine: NativeEngine, parameters: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert generate_body(engine, native(**parameters)) == {"inputs": PROMPT, "parameters": expected}


REFUSED_BY_TGI = [
    ("ignore-eos-token", {"ignore_eos_token": True}, "parameters.ignore_eos_token"),
    ("json-without-a-schema", {"response_format": {"type": "json_object"}},
     "parameters.response_format"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("parameters", "field"), [c[1:] for c in REFUSED_BY_TGI], ids=[c[0] for c in REFUSED_BY_TGI]
)
def test_tgi_refuses_what_it_cannot_honour(parameters: dict[str, Any], field: str) -> None:
    with pytest.raises(ApiError) as err:
        generate_body(TGI, native(**parameters))
    assert (err.value.status, err.value.field) == (422, field)


CHAT_MODEL_CASES = [
    ("lorax-base-model-is-empty", LORAX, None, ""),
    ("lorax-adapter-is-the-model", LORAX, "org/a", "org/a"),
    ("tgi-base-model-is-tgi", TGI, None, "tgi"),
    ("tgi-adapter-is-the-model", TGI, "org/a", "org/a"),
]


@pytest.mark.parametrize(
    ("engine", "adapter_id", "model"),
    [c[1:] for c in CHAT_MODEL_CASES],
    ids=[c[0] for c in CHAT_MODEL_CASES],
)
def test_chat_model_naming_per_engine(
    engine: NativeEngine, adapter_id: str | None, model: str
) -> None:
    body = chat_body(engine, chat(adapter_id=adapter_id), stream=True)
    assert body["model"] == model
    assert body["messages"] == [{"role": "user", "content": "hi"}] and body["stream"] is True


CHAT_SAMPLING_CASES = [
    # The OpenAI route turns temperature 0 into do_sample False; both engines' chat routes
    # read exactly 0 as greedy (omitting it would sample at temperature 1).
    ("greedy-sends-temperature-zero", {"do_sample": False, "temperature": 0.0},
     {"temperature": 0.0}),
    ("sampling-sends-temperature-and-top-p", {"do_sample": True, "temperature": 0.8, "top_p": 0.5},
     {"temperature": 0.8, "top_p": 0.5}),
    ("seed-and-stop-when-set", {"do_sample": True, "temperature": 1.0, "seed": 4, "stop": ["x"]},
     {"temperature": 1.0, "seed": 4, "stop": ["x"]}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [c[1:] for c in CHAT_SAMPLING_CASES],
    ids=[c[0] for c in CHAT_SAMPLING_CASES],
)
def test_chat_sampling(parameters: dict[str, Any], expected: dict[str, Any]) -> None:
    body = chat_body(TGI, chat(max_new_tokens=9, **parameters), stream=False)
    assert body == {"model": "tgi", "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 9, "stream": False, **expected}  # fmt: skip


def test_engine_tokens_map_to_tokens_special_and_null_logprob_included() -> None:
    raw = {"id": 2, "text": "</s>", "logprob": None, "special": True}
    assert _token(raw) == Token(2, "</s>", 0.0, special=True)


def test_openai_streams_show_no_special_token() -> None:
    renderer = OpenAIStream("cmpl-1", "m", chat=False, include_usage=False)
    sent = renderer.tokens([Token(2, "</s>", -0.1, special=True), Token(5, " hi", -0.1)])
    sent += renderer.tokens([Token(6, ' "there"', -0.1)])
    # The first token's chunk is made whole, the next from its template.
    assert [c["choices"][0]["text"] for c in sent[:1]] == [" hi"]
    second = json.loads(sent[1])
    assert second == {**sent[0], "choices": [{**sent[0]["choices"][0], "text": ' "there"'}]}


def test_lorax_and_tgi_profiles_use_their_native_dialects() -> None:
    assert (get_profile("lorax").dialect, get_profile("tgi").dialect) == ("lorax", "tgi")
    assert get_dialect("lorax") is not None and get_dialect("tgi") is not None


# --- over HTTP, against a sim replica -------------------------------------------------------

MakeReplica = Callable[..., Awaitable[ReplicaRecord]]


@pytest.fixture
async def replica() -> AsyncIterator[MakeReplica]:
    """Sim replicas served in this test's event loop, stopped afterwards."""
    made: list[SimReplica] = []

    async def make(dialect: str = "tgi", **params: Any) -> ReplicaRecord:
        rid = f"r-{uuid.uuid4().hex[:8]}"
        sim = SimReplica(
            replica_id=rid,
            deployment="acme/d",
            revision=1,
            accelerator="cpu",
            params=ReplicaParams(load_s=0.0, ttft_s=0.0, tps=2000.0, **params),
            time_scale=1.0,
            bind_host="127.0.0.1",
            advertise_host="127.0.0.1",
            lease=Lease(rid, "acme/d", "cpu", "cpu", 1, 0, time.time()),
        )
        await sim.start()
        made.append(sim)
        return ReplicaRecord(
            id=rid, deployment="acme/d", revision=1, state="ready", url=sim.url,
            dialect=dialect, concurrency=8, backend="sim",
        )  # fmt: skip

    yield make
    for sim in made:
        await sim.stop(0)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


SIM_TOKEN = Token(SIM_TOKEN_ID, TOKEN_TEXT, TOKEN_LOGPROB)


async def collect(
    client: aiohttp.ClientSession, rep: ReplicaRecord, req: GenerateRequest
) -> list[Token | Finish]:
    """The stream's tokens, one by one (the dialect yields those of a read together), then
    its finish."""
    items: list[Token | Finish] = []
    async for item in get_dialect(rep.dialect).stream(client, rep, "m", req):
        if isinstance(item, Finish):
            items.append(item)
        else:
            assert item, "a read's batch of tokens is never empty"
            items += item
    return items


@pytest.mark.parametrize("dialect", ["lorax", "tgi"])
async def test_generate_returns_the_tokens_and_finish_reason(
    replica: MakeReplica, client: aiohttp.ClientSession, dialect: str
) -> None:
    rep = await replica(dialect)
    gen = await get_dialect(dialect).generate(client, rep, "m", native(max_new_tokens=5))
    assert gen.text == TOKEN_TEXT * 5 and gen.tokens == [SIM_TOKEN] * 5
    assert gen.finish == Finish("length", prompt_tokens=3, generated_tokens=5, seed=None)


@pytest.mark.parametrize(
    "parameters",
    [
        {"temperature": 0.0},  # the OpenAI route's greedy
        {"do_sample": False},
        {"do_sample": True, "temperature": 1.0, "top_p": 0.9, "top_k": 5, "seed": 11},
    ],
    ids=["temperature-zero", "greedy", "sampling"],
)
async def test_requests_pass_the_engine_validation(
    replica: MakeReplica, client: aiohttp.ClientSession, parameters: dict[str, Any]
) -> None:
    rep = await replica("tgi")
    gen = await get_dialect("tgi").generate(
        client, rep, "m", native(max_new_tokens=2, **parameters)
    )
    assert gen.finish.generated_tokens == 2 and gen.finish.seed == parameters.get("seed")


async def test_the_sim_refuses_the_neutral_values_the_openai_dialect_sends(
    replica: MakeReplica, client: aiohttp.ClientSession
) -> None:
    rep = await replica()
    for neutral in ({"temperature": 0}, {"top_p": 1.0}, {"top_k": 0}):
        body = {"inputs": PROMPT, "parameters": neutral}
        async with client.post(rep.url + "/generate", json=body) as resp:
            assert resp.status == 422, neutral
            assert (await resp.json())["error_type"] == "validation"


@pytest.mark.parametrize("dialect", ["lorax", "tgi"])
async def test_stream_yields_each_token_then_the_finish(
    replica: MakeReplica, client: aiohttp.ClientSession, dialect: str
) -> None:
    rep = await replica(dialect)
    items = await collect(client, rep, native(max_new_tokens=4, seed=9, do_sample=True))
    assert items == [*[SIM_TOKEN] * 4, Finish("length", 3, 4, seed=9)]


async def test_an_error_event_mid_stream_raises_after_the_first_byte(
    replica: MakeReplica, client: aiohttp.ClientSession
) -> None:
    rep = await replica("lorax", fail_after_tokens=2)
    received: list[Token] = []
    with pytest.raises(UpstreamError) as err:
        async for item in get_dialect("lorax").stream(client, rep, "m", native(max_new_tokens=6)):
            assert not isinstance(item, Finish)
            received += item
    assert received == [SIM_TOKEN] * 2
    assert not err.value.before_first_byte and err.value.retryable
    assert "generation" in str(err.value)


async def test_a_generation_failure_answer_is_retried_elsewhere(
    replica: MakeReplica, client: aiohttp.ClientSession
) -> None:
    rep = await replica("tgi", fail_after_tokens=2)
    with pytest.raises(UpstreamError) as err:
        await get_dialect("tgi").generate(client, rep, "m", native(max_new_tokens=6))
    # 424 is the model failing, not the request: another replica may well serve it.
    assert err.value.retryable and err.value.status == 502
    assert "424" in str(err.value) and "simulated" in str(err.value)


async def test_a_422_answer_is_not_retryable(
    replica: MakeReplica, client: aiohttp.ClientSession
) -> None:
    rep = await replica("tgi", n_ctx=8)
    too_long = native(max_new_tokens=10)  # 3 prompt tokens + 10 > 8
    with pytest.raises(UpstreamError) as err:
        await get_dialect("tgi").generate(client, rep, "m", too_long)
    assert (err.value.status, err.value.retryable) == (422, False)
    assert "max_new_tokens" in str(err.value)


async def test_a_validation_event_refuses_a_stream_before_the_first_byte(
    replica: MakeReplica, client: aiohttp.ClientSession
) -> None:
    # TGI and LoRAX answer a stream's validation error with status 200 and one error event.
    rep = await replica("lorax", n_ctx=8)
    with pytest.raises(UpstreamError) as err:
        await collect(client, rep, native(max_new_tokens=10))
    assert (err.value.status, err.value.retryable, err.value.before_first_byte) == (
        422,
        False,
        True,
    )


@pytest.mark.parametrize("dialect", ["lorax", "tgi", "openai"])
async def test_an_unreachable_replica_is_named_without_its_address(
    replica: MakeReplica, client: aiohttp.ClientSession, dialect: str
) -> None:
    """Review 2026-12b, finding 13: the aiohttp error's repr (the replica's internal host and
    port) reached clients and the request log; it goes to the gateway's log only."""
    rep = dataclasses.replace(await replica(dialect), url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UpstreamError) as unary:
        await get_dialect(dialect).generate(client, rep, "m", native(max_new_tokens=2))
    with pytest.raises(UpstreamError) as stream:
        await collect(client, rep, native(max_new_tokens=2))
    for err in (unary.value, stream.value):
        assert err.retryable and err.before_first_byte
        assert "127.0.0.1" not in str(err) and "Error" not in str(err), str(err)
    assert str(unary.value) == "replica unreachable"
