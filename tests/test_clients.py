"""The real client libraries, unmodified, against a real llama.cpp replica."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stdout

from harness import Stack, wait_until
from lorax import Client as LoraxClient


def test_predibase_sdk_full_lifecycle(stack: Stack, name: str, predibase_env: None) -> None:
    from predibase import DeploymentConfig, Predibase, UpdateDeploymentConfig

    with redirect_stdout(io.StringIO()):
        pb = Predibase(api_token=os.environ["PREDIBASE_API_TOKEN"])
        created = pb.deployments.create(
            name=name,
            config=DeploymentConfig(
                base_model="gemma-3-270m",
                min_replicas=0,
                max_replicas=1,
                cooldown_time=30,
                scale_up_threshold=1,
            ),
            description="sdk test",
            block=True,
        )
    assert created.name == name
    got = pb.deployments.get(name)
    assert got.status == "ready"
    assert got.current_replicas == 0
    assert stack.replicas_started(name) == set()

    client = pb.deployments.client(name, serving_url_override=stack.base)
    with redirect_stdout(io.StringIO()):
        resp = client.generate("The capital of France is", max_new_tokens=12)
    assert isinstance(resp.generated_text, str) and resp.generated_text.strip()
    assert resp.details is not None and resp.details.generated_tokens > 0
    assert len(stack.replicas_started(name)) == 1

    with redirect_stdout(io.StringIO()):
        streamed = list(client.generate_stream("Once upon a time", max_new_tokens=8))
    texts = [r.token.text for r in streamed]
    assert len(texts) >= 2 and "".join(texts).strip()
    assert any(r.generated_text for r in streamed)

    assert name in [d.name for d in pb.deployments.list()]
    assert pb.deployments.get(name).current_replicas == 1

    with redirect_stdout(io.StringIO()):
        pb.deployments.update(
            deployment_ref=name, config=UpdateDeploymentConfig(max_replicas=2), block=True
        )
    updated = pb.deployments.get(name)
    assert updated.config.max_replicas == 2
    assert updated.config.cooldown_time == 30

    pb.deployments.delete(name)
    wait_until(lambda: not stack.replicas_running(name), 60, "replicas stopped after delete")
    assert name not in [d.name for d in pb.deployments.list()]


def test_lorax_client_generate_and_stream(stack: Stack, name: str) -> None:
    stack.create(name, minReplicas=0, maxReplicas=1, cooldownTime=30)
    client = LoraxClient(stack.deploy_url(name), headers=stack.headers, timeout=120)
    resp = client.generate("The capital of France is", max_new_tokens=10)
    assert resp.generated_text.strip()
    assert resp.details.finish_reason.value in ("length", "eos_token", "stop_sequence")
    assert resp.details.generated_tokens == len(resp.details.tokens)

    tokens = []
    final = None
    for r in client.generate_stream("The capital of France is", max_new_tokens=10):
        tokens.append(r.token.text)
        if r.generated_text is not None:
            final = r
    assert final is not None
    assert final.generated_text == "".join(tokens)
    assert final.details is not None and final.details.generated_tokens == len(tokens)
    # Greedy decoding by default: the stream and the one-shot answer agree.
    assert final.generated_text == resp.generated_text
    stack.delete(name)
