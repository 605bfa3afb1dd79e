"""The user's model catalogue file: validated entry by entry, merged into the catalogue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from router.app import create_app
from wakegate.catalog import ENGINES, MODELS, CatalogError, load_models_file
from wakegate.engines import EngineRefused, engine_names, validate_spec
from wakegate.settings import Settings
from wakegate.spec import DeploymentConfig, DeploymentSpec, InvalidSpec, parse_create

GOOD = """
[models."my-llama"]
engine = "vllm"
weights = "meta-llama/Llama-3.2-3B-Instruct"
context_window = 131072
default_accelerator = "a10_24gb_100"
"""


@pytest.fixture(autouse=True)
def catalogue() -> Iterator[None]:
    """Each test may add entries; the catalogue is module state, so put it back."""
    saved = dict(MODELS)
    yield
    MODELS.clear()
    MODELS.update(saved)


def models_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def spec_of(**config: object) -> DeploymentSpec:
    req = parse_create({"name": "d", "config": config})
    return DeploymentSpec(
        "acme", "d", "uuid-d", None, DeploymentConfig.from_update(req.config), "ready", 1, 0, 0
    )


def test_a_user_entry_becomes_a_deployable_base_model(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec):
        spec_of(baseModel="my-llama")
    load_models_file(models_file(tmp_path, GOOD))
    spec = spec_of(baseModel="my-llama")
    assert MODELS["my-llama"].weights == "meta-llama/Llama-3.2-3B-Instruct"
    assert spec.accelerator == "a10_24gb_100"
    validate_spec(spec)


def test_an_entry_names_a_chat_template_by_name_or_by_file(tmp_path: Path) -> None:
    template = tmp_path / "mine.jinja"
    template.write_text("{{ messages[-1]['content'] }}")
    load_models_file(models_file(tmp_path, GOOD + 'chat_template = "gemma3"\n'))
    assert MODELS["my-llama"].chat_template == "gemma3"
    load_models_file(models_file(tmp_path, GOOD + f'chat_template = "{template}"\n'))
    assert MODELS["my-llama"].chat_template == str(template)
    load_models_file(models_file(tmp_path, GOOD))
    assert MODELS["my-llama"].chat_template is None, "none named: the weights' own"


def test_an_entry_can_serve_built_in_weights_with_another_engine(tmp_path: Path) -> None:
    load_models_file(
        models_file(
            tmp_path,
            GOOD.replace('"my-llama"', "qwen3-8b").replace('"vllm"', '"tgi"'),
        )
    )
    assert MODELS["qwen3-8b"].engine == "tgi"
    # Only TGI refuses to turn chunked prefill off: the refusal shows which engine serves it.
    with pytest.raises(EngineRefused) as err:
        validate_spec(spec_of(baseModel="qwen3-8b", chunkedPrefill=False))
    assert err.value.field == "config.chunkedPrefill"


def test_the_catalogue_names_every_engine_that_has_a_profile() -> None:
    assert engine_names() == ENGINES


def test_no_models_file_changes_nothing() -> None:
    before = dict(MODELS)
    assert load_models_file(None) == {}
    assert before == MODELS


BAD_FILES = [
    pytest.param(GOOD.replace('"vllm"', '"sglang"'), "models.my-llama.engine", id="unknown-engine"),
    pytest.param(
        GOOD.replace('"a10_24gb_100"', '"tpu_v9"'),
        "models.my-llama.default_accelerator",
        id="unknown-accelerator",
    ),
    pytest.param(
        GOOD.replace("context_window = 131072\n", ""),
        "models.my-llama.context_window: required",
        id="missing-key",
    ),
    pytest.param(
        GOOD.replace("131072", "0"), "models.my-llama.context_window", id="zero-context-window"
    ),
    pytest.param(
        GOOD.replace("131072", "true"), "models.my-llama.context_window", id="bool-context-window"
    ),
    pytest.param(
        GOOD.replace('"meta-llama/Llama-3.2-3B-Instruct"', '""'),
        "models.my-llama.weights",
        id="empty-weights",
    ),
    pytest.param(
        GOOD + 'quantization = "fp8"\n',
        "models.my-llama.quantization: unknown key",
        id="unknown-key",
    ),
    pytest.param(
        GOOD.replace('"vllm"', '["vllm"]'), "models.my-llama.engine", id="engine-not-a-string"
    ),
    pytest.param(
        "[models]\nbroken = 3\n", "models.broken: must be a table", id="entry-not-a-table"
    ),
    pytest.param(
        GOOD + 'chat_template = "no-such-template"\n',
        "models.my-llama.chat_template: 'no-such-template' is neither a built-in template",
        id="unknown-chat-template",
    ),
    pytest.param(
        GOOD.replace('"vllm"', '"tgi"') + 'chat_template = "gemma3"\n',
        "models.my-llama.chat_template: tgi reads the template from the model's tokenizer",
        id="chat-template-on-an-engine-that-takes-none",
    ),
    pytest.param('[model."x"]\nengine = "vllm"\n', "unknown table 'model'", id="misspelt-table"),
    pytest.param('[models."x"\n', "models file", id="not-toml"),
]


@pytest.mark.parametrize(("text", "says"), BAD_FILES)
def test_a_bad_entry_is_refused_naming_it_and_adds_nothing(
    tmp_path: Path, text: str, says: str
) -> None:
    path = models_file(tmp_path, GOOD.replace("my-llama", "first-ok") + text)
    before = dict(MODELS)
    with pytest.raises(CatalogError) as err:
        load_models_file(path)
    assert says in str(err.value)
    assert str(path) in str(err.value)
    assert before == MODELS


def test_a_missing_file_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="models file"):
        load_models_file(tmp_path / "absent.toml")


def test_the_gateway_loads_the_models_file_when_it_is_built(tmp_path: Path) -> None:
    create_app(Settings(models_file=models_file(tmp_path, GOOD)))
    assert "my-llama" in MODELS
