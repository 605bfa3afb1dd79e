"""Every method of the real Predibase SDK's deployments collection (`pb.deployments`), and of
the clients it returns, against wakegate; generation on a real llama.cpp replica.

What a self-hosted platform cannot do answers a clear error: embeddings and classification
(`embed`, `classify`) are 422 with the reason, which the clients raise as
`UnprocessableEntityError`.
The async client's `metrics()` fails inside the SDK before it sends anything.
`get`, `create` (config object and dict form), `delete` and the synchronous client's
`generate`/`generate_stream` are also in tests/test_clients.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import zipfile
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import use_predibase
from harness import Stack
from lora import ADAPTER
from openai import OpenAI


@pytest.fixture
def pb(predibase_env: None) -> Any:
    from predibase import Predibase

    with redirect_stdout(io.StringIO()):
        return Predibase(api_token=os.environ["PREDIBASE_API_TOKEN"])


def quiet(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The SDK prints progress; tests do not need it."""
    with redirect_stdout(io.StringIO()):
        return call(*args, **kwargs)


def test_recommended_config_comes_from_the_catalogue_and_creates_as_is(
    stack: Stack, pb: Any, name: str
) -> None:
    from predibase import DeploymentConfig

    rec = pb.deployments.get_recommended_config("gemma-3-270m")
    config = DeploymentConfig.model_validate(rec)
    assert config.base_model == "gemma-3-270m"
    assert config.accelerator == "cpu"  # the catalogue's default for the llama.cpp model
    assert config.max_total_tokens == 32768  # its context window
    assert (config.min_replicas, config.max_replicas) == (0, 1)
    assert config.cooldown_time == 3600 and config.scale_up_threshold == 1
    assert config.quantization is None

    gpu = pb.deployments.get_recommended_config("qwen3-8b", accelerator="a100_80gb_100",
                                                quantization="fp8")  # fmt: skip
    assert (gpu["baseModel"], gpu["accelerator"], gpu["quantization"]) == (
        "qwen3-8b", "a100_80gb_100", "fp8")  # fmt: skip
    assert gpu["maxTotalTokens"] == 32768

    # What the catalogue or the engine refuses names the parameter; nothing is created.
    for kwargs, field in (
        ({"base_model": "gpt-17"}, "baseModel"),
        ({"base_model": "gemma-3-270m", "accelerator": "tpu_v9"}, "accelerator"),
        ({"base_model": "gemma-3-270m", "quantization": "fp8"}, "quantization"),
    ):
        with pytest.raises(RuntimeError, match="status code 400") as refused:
            pb.deployments.get_recommended_config(**kwargs)
        r = stack.api("GET", "/v2/deployments/recommended-config",
                      params={camel(k): v for k, v in kwargs.items()})  # fmt: skip
        assert r.status_code == 400 and r.json()["field"] == field, r.text
        assert r.json()["error"] in str(refused.value)
    missing = stack.api("GET", "/v2/deployments/recommended-config")
    assert missing.status_code == 400 and missing.json()["field"] == "baseModel"

    # The recommendation is a config create takes unchanged.
    created = quiet(pb.deployments.create, name=name, config=config, block=True)
    assert created.config.base_model == "gemma-3-270m" and created.accelerator == "cpu"
    assert created.config.max_total_tokens == 32768 and created.status == "ready"
    # The path segment is no deployment's name: creating one so named is refused.
    with pytest.raises(RuntimeError, match="reserved"):
        quiet(pb.deployments.create, name="recommended-config", config=config, block=False)
    assert "recommended-config" not in [d.name for d in pb.deployments.list()]
    pb.deployments.delete(name)


def camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.title() for p in rest)


def test_list_by_type_update_description_and_the_urls_the_sdk_builds(
    stack: Stack, pb: Any, name: str
) -> None:
    # Dict form, converted by the SDK (convert_dict_to_deployment_config).
    quiet(pb.deployments.create, name=name, block=True, description="first",
          config={"base_model": "gemma-3-270m", "max_replicas": 1, "cooldown_time": 60,
                  "scale_up_threshold": 2})  # fmt: skip
    got = pb.deployments.get(name)
    assert got.description == "first" and got.config.scale_up_threshold == 2

    # Every wakegate deployment is a private (dedicated) one.
    for kind in ("private", "dedicated", "PRIVATE"):
        assert name in [d.name for d in pb.deployments.list(type=kind)]
    for kind in ("shared", "serverless"):
        assert pb.deployments.list(type=kind) == []
    with pytest.raises(ValueError, match="Type filter"):  # the SDK's own check
        pb.deployments.list(type="spot")
    bad = stack.api("GET", "/v2/deployments", params={"type": "spot"})
    assert bad.status_code == 400 and bad.json()["field"] == "type"

    # update() with a description only: the config stays as it was. It returns None.
    assert quiet(pb.deployments.update, name, description="second", block=True) is None
    after = pb.deployments.get(name)
    assert after.description == "second"
    assert after.config.model_dump() == got.config.model_dump()
    # A Deployment object is a reference too.
    quiet(pb.deployments.update, after, description="third", block=False)
    assert pb.deployments.get(name).description == "third"

    deploy_url = f"{stack.base}/{stack.tenant}/deployments/v2/llms/{name}"
    assert pb.deployments.build_serving_url(name, stack.base) == deploy_url
    assert pb.deployments.openai_compatible_endpoint(after, serving_url=stack.base) == (
        deploy_url + "/v1"
    )
    assert pb.deployments.async_client(name, serving_url=stack.base).base_url == deploy_url
    assert pb.deployments.client(after, serving_url_override=stack.base).base_url == deploy_url

    pb.deployments.delete(after)
    with pytest.raises(RuntimeError, match="404"):
        pb.deployments.get(name)
    with pytest.raises(RuntimeError, match="404"):
        quiet(pb.deployments.update, name, description="gone", block=False)


def test_clients_async_generate_openai_endpoint_metrics_and_what_is_not_served(
    stack: Stack, pb: Any, name: str
) -> None:
    from predibase.resources.lorax.errors import UnprocessableEntityError

    stack.create(name, minReplicas=0, maxReplicas=1, cooldownTime=60)
    prompt = "The capital of France is"
    aclient = pb.deployments.async_client(name, serving_url=stack.base)

    async def generate() -> tuple[Any, list[Any]]:
        one = await aclient.generate(prompt, max_new_tokens=8, details=True)
        streamed = [r async for r in aclient.generate_stream(prompt, max_new_tokens=8)]
        return one, streamed

    one, streamed = asyncio.run(generate())  # the first one wakes a replica
    assert one.generated_text.strip() and one.details.generated_tokens > 0
    assert streamed[-1].generated_text == "".join(r.token.text for r in streamed)
    assert streamed[-1].generated_text == one.generated_text, "greedy: both agree"

    endpoint = pb.deployments.openai_compatible_endpoint(name, stack.base)
    openai = OpenAI(api_key=stack.token, base_url=endpoint, max_retries=0, timeout=120)
    out = openai.completions.create(model="", prompt=prompt, max_tokens=8, temperature=0)
    assert out.choices[0].text == one.generated_text

    # metrics(): the deployment's own series, of no other deployment.
    client = pb.deployments.client(name, serving_url_override=stack.base)
    text = client.metrics()
    key = f"{stack.tenant}/{name}"
    series = [line for line in text.splitlines() if not line.startswith("#")]
    assert any(line.startswith("wakegate_requests_total{") for line in series), text
    assert all(f'deployment="{key}"' in line for line in series), text
    as_json = client.metrics(format="json")
    assert as_json["deployment"] == name
    assert {s["labels"]["deployment"] for s in as_json["samples"]} == {key}
    requests = [s for s in as_json["samples"] if s["name"] == "wakegate_requests_total"]
    assert [(s["labels"]["code"], s["value"]) for s in requests] == [("200", 3.0)]
    # The async client's metrics() fails in the SDK itself, before any request (predibase
    # 2025.10.3 never sets its `metrics_endpoint`): nothing a server answers can help.
    with pytest.raises(AttributeError, match="metrics_endpoint"):
        asyncio.run(aclient.metrics())

    # Embeddings and classification: 422 with the reason, raised by the clients.
    with pytest.raises(UnprocessableEntityError, match=r"^sequence classification is not served"):
        client.classify("some text")
    with pytest.raises(UnprocessableEntityError, match=r"^embeddings is not served"):
        asyncio.run(aclient.embed("some text"))
    with pytest.raises(UnprocessableEntityError, match=r"^sequence classification is not served"):
        asyncio.run(aclient.classify("some text"))
    r = stack.api("POST", f"/{stack.tenant}/deployments/v2/llms/{name}/classify_batch",
                  json={"inputs": ["a"]})  # fmt: skip
    assert r.status_code == 422 and r.json()["error_type"] == "unsupported", r.text
    assert stack.api("POST", f"/{stack.tenant}/deployments/v2/llms/nope/embed").status_code == 404
    stack.delete(name)


def read_zip(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifest and the entries of a downloaded request log, in file order (one file per
    UTC hour, in order)."""
    entries = []
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        manifest = json.loads(zf.read("manifest.json"))
        names = [n for n in zf.namelist() if n != "manifest.json"]
        assert names == manifest["files"] and zf.namelist()[-1] == "manifest.json"
        for file in names:
            hour = re.fullmatch(r"requests-(\d{4}-\d\d-\d\dT\d\d)\.jsonl", file)
            assert hour is not None, file
            lines = [json.loads(line) for line in zf.read(file).splitlines()]
            # Filed by the hour it was logged in, at or after the request's arrival (`time`).
            assert lines and all(e["time"][:13] <= hour[1] for e in lines)
            entries += lines
    assert manifest["requests"] == len(entries) and names == sorted(set(names))
    return manifest, entries


@pytest.fixture
def logged_stack(
    make_stack: Callable[..., Stack], adapter_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Stack]:
    stack = make_stack(adapter_dir=adapter_dir)
    use_predibase(stack, monkeypatch)
    yield stack


def test_download_request_logs_is_a_zip_of_the_window_and_adapter(
    logged_stack: Stack, name: str, tmp_path: Path
) -> None:
    from predibase import Predibase

    stack = logged_stack
    pb = quiet(Predibase, api_token=stack.token)
    quiet_name = name + "-quiet"
    stack.create(name, minReplicas=0, maxReplicas=1, cooldownTime=120,
                 requestLoggingEnabled=True, preloadedAdapters=[ADAPTER])  # fmt: skip
    stack.create(quiet_name, minReplicas=0, maxReplicas=1)
    # The SDK's own format: naive UTC ISO times, put in the URL unescaped.
    start = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=5)
    client = pb.deployments.client(name, serving_url_override=stack.base)
    base = quiet(client.generate, "The ocean is", max_new_tokens=8).generated_text
    tuned = quiet(client.generate, "The ocean is", max_new_tokens=8,
                  adapter_id=ADAPTER).generated_text  # fmt: skip
    assert base.strip() and tuned.strip()
    end = datetime.now(UTC) + timedelta(seconds=5)

    # dest without ".zip" gets it; `to` with an offset whose "+" the URL turns into a space.
    quiet(pb.deployments.download_request_logs, name, str(tmp_path / "all"),
          from_=start.isoformat(), to=end.isoformat())  # fmt: skip
    manifest, entries = read_zip(tmp_path / "all.zip")
    assert [(e["prompt"], e["adapter"], e["output"]) for e in entries] == [
        ("The ocean is", None, base), ("The ocean is", ADAPTER, tuned)]  # fmt: skip
    assert all(e["status"] == 200 and e["replica"] for e in entries)
    assert manifest["deployment"] == name and manifest["adapterId"] is None
    assert manifest["requestLoggingEnabled"] is True

    # One adapter's requests only.
    dest = str(tmp_path / "tuned.zip")
    quiet(pb.deployments.download_request_logs, name, dest, adapter_id=ADAPTER,
          from_=start.isoformat(), to=end.isoformat())  # fmt: skip
    manifest, entries = read_zip(Path(dest))
    assert [(e["adapter"], e["output"]) for e in entries] == [(ADAPTER, tuned)]
    assert manifest["adapterId"] == ADAPTER

    # An empty window, and a deployment that logs nothing: an archive that says so.
    later = (end + timedelta(hours=1)).isoformat()
    quiet(pb.deployments.download_request_logs, name, str(tmp_path / "later.zip"),
          from_=later, to=(end + timedelta(hours=2)).isoformat())  # fmt: skip
    assert read_zip(tmp_path / "later.zip")[0]["files"] == []
    quiet(pb.deployments.download_request_logs, quiet_name, str(tmp_path / "q.zip"),
          from_=start.isoformat(), to=end.isoformat())  # fmt: skip
    manifest, entries = read_zip(tmp_path / "q.zip")
    assert entries == [] and manifest["requestLoggingEnabled"] is False

    # Bad input: the SDK raises the message, which names the parameter; nothing is written.
    for kwargs, field in (
        ({"from_": "yesterday"}, "from"),
        ({"from_": end.isoformat(), "to": start.isoformat()}, "to"),
        ({"adapter_id": "../etc"}, "adapterId"),
    ):
        target = tmp_path / f"bad-{field}.zip"
        with pytest.raises(RuntimeError, match=f"^{field}: "):
            quiet(pb.deployments.download_request_logs, name, str(target), **kwargs)
        assert not target.exists()
    with pytest.raises(RuntimeError, match="not found"):
        quiet(pb.deployments.download_request_logs, "nope", str(tmp_path / "nope.zip"))
    r = stack.api("GET", f"/v2/deployments/{name}/request-logs", params={"to": "soon"})
    message = "to: use ISO 8601 or seconds since the epoch"
    assert r.status_code == 400
    assert r.json() == {"error": {"message": message, "field": "to"}}

    # The JSON-lines route reads the same log.
    lines = stack.api("GET", f"/v2/deployments/{name}/requests").text.splitlines()
    assert [json.loads(line)["output"] for line in lines] == [base, tuned]
    stack.delete(name)
    stack.delete(quiet_name)
