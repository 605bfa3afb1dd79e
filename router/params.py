"""LoRAX/TGI generate requests: parsed and validated before anything is queued."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from router.errors import ApiError
from wakegate.spec import MAX_TOKENS

Prob = Annotated[float, Field(gt=0, lt=1)]
# Token counts are bounded here whatever the deployment (router/pipeline.py `check_length`
# bounds max_new_tokens by the deployment's own limit); seeds fit the engines' u64.
TokenCount = Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS)]
MAX_SEED = 2**64 - 1


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["json_object"]
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")


class MergedAdapters(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ids: list[StrictStr] = Field(min_length=1)
    weights: list[float] = Field(min_length=1)
    merge_strategy: Literal["linear", "ties", "dare_linear", "dare_ties"] | None = None
    density: Annotated[float, Field(ge=0, le=1)] = 1.0
    majority_sign_method: Literal["total", "frequency"] | None = None

    @model_validator(mode="after")
    def _same_length(self) -> MergedAdapters:
        if len(self.ids) != len(self.weights):
            raise ValueError("ids and weights must have the same length")
        return self


class Parameters(BaseModel):
    # Unknown keys are ignored: clients add parameters faster than servers learn them.
    model_config = ConfigDict(extra="ignore")

    adapter_id: StrictStr | None = None
    adapter_source: Literal["hub", "local", "s3", "pbase"] | None = None
    merged_adapters: MergedAdapters | None = None
    api_token: StrictStr | None = None
    do_sample: StrictBool | None = False
    max_new_tokens: TokenCount | None = None
    ignore_eos_token: StrictBool | None = False
    repetition_penalty: Annotated[float, Field(gt=0)] | None = None
    return_full_text: StrictBool | None = False
    stop: list[StrictStr] | None = None
    seed: Annotated[StrictInt, Field(ge=0, le=MAX_SEED)] | None = None
    temperature: Annotated[float, Field(ge=0)] | None = None
    top_k: TokenCount | None = None
    top_p: Prob | None = None
    truncate: TokenCount | None = None
    typical_p: Prob | None = None
    best_of: Annotated[StrictInt, Field(gt=0, le=MAX_TOKENS)] | None = None
    watermark: StrictBool | None = False
    details: StrictBool | None = False
    decoder_input_details: StrictBool | None = False
    return_k_alternatives: TokenCount | None = None
    response_format: ResponseFormat | None = None
    # wakegate extension: higher is served first.
    priority: Annotated[StrictInt, Field(ge=-1000, le=1000)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Parameters:
        if self.adapter_id and self.merged_adapters:
            raise ValueError("give adapter_id or merged_adapters, not both")
        if self.best_of and self.best_of > 1:
            raise ValueError("best_of > 1 is not supported")
        return self


class GenerateRequest(BaseModel):
    """The neutral generate request every public API becomes (LoRAX's shape)."""

    model_config = ConfigDict(extra="ignore")
    inputs: Annotated[StrictStr, Field(min_length=1)]
    parameters: Parameters = Field(default_factory=Parameters)
    stream: StrictBool = False
    # Chat requests keep their messages (`inputs` is empty then): the engine applies the
    # model's own chat template. Set only by the OpenAI chat route (model_construct), never
    # parsed from a body: a LoRAX client's "messages" is an unknown key, ignored like others.
    messages: SkipJsonSchema[list[dict[str, str]] | None] = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _no_messages(cls, data: Any) -> Any:
        if isinstance(data, dict) and "messages" in data:
            data = {k: v for k, v in data.items() if k != "messages"}
        return data


def parse_generate(body: Any) -> GenerateRequest:
    if not isinstance(body, dict):
        raise ApiError(
            422, "request body must be a JSON object", field="body", error_type="validation"
        )
    try:
        return GenerateRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        msg = err["msg"].removeprefix("Value error, ")
        raise ApiError(422, f"{field}: {msg}", field=field, error_type="validation") from None
