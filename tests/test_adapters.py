"""LoRA adapters on real llama.cpp replicas: loaded at start, visible in the output, routed
to the replica that served them last unless it is busy."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from harness import Stack, wait_until
from lora import ADAPTER
from openai import OpenAI

PROMPT = "The three most important things about the ocean are"


def text(stack: Stack, name: str, adapter: str | None = None) -> str:
    params = {"adapter_id": adapter} if adapter else {}
    r = stack.generate(name, PROMPT, 16, **params)
    assert r.status_code == 200, r.text
    return str(r.json()["generated_text"])


def test_preloaded_adapter_is_loaded_at_start_and_changes_the_output(
    make_stack: Callable[..., Stack], name: str, adapter_dir: Path
) -> None:
    stack = make_stack(adapter_dir=adapter_dir)
    stack.create(name, minReplicas=1, maxReplicas=1, preloadedAdapters=[ADAPTER])
    wait_until(lambda: stack.ready_replicas(name) == 1, 90, "replica ready")
    (record,) = stack.registry(name).values()
    assert record["adapters"] == [ADAPTER]
    argv = Path(f"/proc/{record['handle']['pid']}/cmdline").read_bytes().split(b"\0")
    config = json.loads(Path(argv[argv.index(b"--config_file") + 1].decode()).read_text())
    loaded = {m["model_alias"]: m.get("lora_path") for m in config["models"]}
    assert loaded["gemma-3-270m"] is None and loaded[ADAPTER].endswith(f"{ADAPTER}.gguf")

    base, tuned = text(stack, name), text(stack, name, ADAPTER)
    assert base.strip() and tuned.strip() and base != tuned
    assert text(stack, name) == base, "greedy and deterministic: the base is unchanged"
    openai = OpenAI(api_key=stack.token, base_url=stack.deploy_url(name) + "/v1", max_retries=0)
    out = openai.completions.create(model=ADAPTER, prompt=PROMPT, max_tokens=16, temperature=0)
    assert out.choices[0].text == tuned, "the OpenAI model name selects the adapter"

    missing = stack.generate(name, PROMPT, 4, adapter_id="acme/unknown-1")
    assert missing.status_code == 404 and "preloadedAdapters" in missing.json()["error"]


def test_adapter_requests_stay_on_one_replica_unless_it_is_busy(
    make_stack: Callable[..., Stack], name: str, adapter_dir: Path
) -> None:
    stack = make_stack(adapter_dir=adapter_dir)
    stack.create(name, minReplicas=2, maxReplicas=2, preloadedAdapters=[ADAPTER],
                 requestLoggingEnabled=True, cooldownTime=600)  # fmt: skip
    wait_until(lambda: stack.ready_replicas(name) == 2, 120, "two replicas ready")
    start = time.time()
    for _ in range(4):
        text(stack, name, ADAPTER)
    threads = [threading.Thread(target=text, args=(stack, name, ADAPTER)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    log = stack.api("GET", f"/v2/deployments/{name}/requests", params={"start": start - 1})
    replicas = [json.loads(line)["replica"] for line in log.text.splitlines()]
    assert len(replicas) == 8
    sequential, burst = replicas[:4], replicas[4:]
    assert len(set(sequential)) == 1, "one replica keeps the adapter while it has room"
    assert set(burst) == set(stack.registry(name)), "a busy replica's overflow goes elsewhere"
