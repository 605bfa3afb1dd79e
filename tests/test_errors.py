"""Every error is JSON in its API's shape with the right status: no route 404, wrong method
405, bad query times and over-nested JSON 400, a body that never arrives 408, Redis down 503
with Retry-After (review findings 10 and 13)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from harness import Stack, port_open, start_redis, wait_until

NESTED = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nope"), ("POST", "/v1/embeddings"), ("GET", "/v2/nope/deeper")],
    ids=["get-unknown", "post-unknown-openai", "get-unknown-below-v2"],
)
def test_an_unknown_route_is_a_json_404(stack: Stack, method: str, path: str) -> None:
    r = stack.api(method, path, json={})
    assert r.status_code == 404, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    # Below /v1/ (the gateway's OpenAI base URL) in OpenAI's error shape.
    assert path in (error["message"] if path.startswith("/v1/") else error)


def test_a_wrong_method_is_a_json_405_with_allow(stack: Stack) -> None:
    r = stack.api("PATCH", "/v2/deployments", json={})
    assert r.status_code == 405, r.text
    assert {"GET", "POST"} <= {m.strip() for m in r.headers["allow"].split(",")}
    assert "PATCH" in r.json()["error"]
    r = stack.api("DELETE", "/users/current")
    assert r.status_code == 405, r.text
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "HEAD"}


def test_data_plane_404_and_405_keep_their_api_shapes(stack: Stack, name: str) -> None:
    lorax = httpx.get(stack.deploy_url(name) + "/generate", headers=stack.headers)
    assert lorax.status_code == 405, lorax.text
    assert lorax.headers["allow"] == "POST"
    assert set(lorax.json()) >= {"error", "error_type"}
    openai = httpx.get(stack.deploy_url(name) + "/v1/chat/completions", headers=stack.headers)
    assert openai.status_code == 405, openai.text
    assert set(openai.json()["error"]) >= {"message", "type", "param"}
    missing = httpx.post(stack.deploy_url(name) + "/v1/embeddings", headers=stack.headers)
    assert missing.status_code == 404, missing.text
    assert "message" in missing.json()["error"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "inf"}, "start"),
        ({"end": "1e309"}, "end"),
        ({"start": "nan"}, "start"),
        ({"start": "-1"}, "start"),
        ({"end": "1e300"}, "end"),
        ({"start": "0001-01-01T00:00:00Z"}, "start"),
    ],
    ids=["start-inf", "end-1e309", "start-nan", "start-negative", "end-1e300", "start-year-1"],
)
def test_request_log_times_out_of_range_are_a_400_naming_them(
    stack: Stack, name: str, params: dict[str, str], field: str
) -> None:
    stack.create(name, baseModel="sim-llm")
    try:
        r = stack.api("GET", f"/v2/deployments/{name}/requests", params=params)
        assert r.status_code == 400, r.text
        assert r.json()["field"] == field
    finally:
        stack.delete(name)


def test_deeply_nested_json_is_a_400_on_every_api(stack: Stack, name: str) -> None:
    headers = {**stack.headers, "Content-Type": "application/json"}
    r = stack.api("POST", "/v2/deployments", content=NESTED, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "body"
    stack.create(name, baseModel="sim-llm")
    try:
        r = httpx.post(stack.deploy_url(name) + "/generate", content=NESTED, headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["field"] == "body" and r.json()["error_type"] == "validation"
        r = httpx.post(stack.deploy_url(name) + "/v1/completions", content=NESTED, headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "body"
        assert stack.queued(name) == 0
    finally:
        stack.delete(name)


def test_a_number_beyond_a_double_is_a_400_not_infinity(stack: Stack, name: str) -> None:
    stack.create(name, baseModel="sim-llm")
    try:
        raw = b'{"inputs": "hi", "parameters": {"temperature": 1e309}}'
        r = httpx.post(stack.deploy_url(name) + "/generate", content=raw, headers=stack.headers)
        assert r.status_code == 400, r.text
        assert r.json()["field"] == "body"
        assert stack.queued(name) == 0
    finally:
        stack.delete(name)


# --- a body that never arrives ------------------------------------------------------------------


def _silent_body(port: int, path: str, token: str, wait_s: float) -> tuple[str, dict[str, object]]:
    """Send the headers and one byte of a 100-byte body, then nothing; the response."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data or not _complete(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), json.loads(body)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def test_a_body_that_stops_arriving_is_a_408_within_the_deadline(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack(mqtt=False, body_timeout_s=1)
    stack.create(name, baseModel="sim-llm")
    for path, family_key in [
        ("/v2/deployments", "field"),
        (f"/{stack.tenant}/deployments/v2/llms/{name}/generate", "error_type"),
        (f"/{stack.tenant}/deployments/v2/llms/{name}/async", "error_type"),
        (f"/{stack.tenant}/deployments/v2/llms/{name}/v1/chat/completions", "error"),
    ]:
        # The socket's own timeout (20 s) is what fails this test without a deadline.
        status, body = _silent_body(stack.port, path, stack.token, wait_s=20)
        assert status.split(" ")[1] == "408", (path, status, body)
        assert family_key in body, (path, body)
    assert stack.queued(name) == 0
    assert stack.api("GET", "/v2/deployments").status_code == 200


# --- Redis unreachable --------------------------------------------------------------------------


def test_redis_down_is_a_503_with_retry_after_and_its_restart_needs_no_retry_by_clients(
    tmp_path: Path, name: str
) -> None:
    redis_proc, redis_url = start_redis(tmp_path / "own-redis")
    port = int(redis_url.rsplit(":", 1)[1])
    stack = Stack(tmp_path, redis_url + "/0", None).start()
    try:
        stack.create(name, baseModel="sim-llm")
        openai_url = stack.deploy_url(name) + "/v1/completions"

        redis_proc.stop()
        wait_until(lambda: not port_open(port), 15, "redis-server to stop")
        control = stack.api("GET", "/v2/deployments")
        assert control.status_code == 503, control.text
        assert int(control.headers["retry-after"]) > 0 and "error" in control.json()
        lorax = stack.generate(name, timeout=30)
        assert lorax.status_code == 503, lorax.text
        assert "retry-after" in lorax.headers and "error_type" in lorax.json()
        openai = httpx.post(openai_url, headers=stack.headers, json={"prompt": "hi"}, timeout=30)
        assert openai.status_code == 503, openai.text
        assert "retry-after" in openai.headers and "message" in openai.json()["error"]
        health = httpx.get(stack.base + "/healthz", timeout=30)
        assert health.status_code == 503, health.text

        redis_proc.start()
        wait_until(lambda: port_open(port), 15, "redis-server to restart")
        wait_until(lambda: httpx.get(stack.base + "/healthz").status_code == 200, 30, "health")
        assert name in [d["name"] for d in stack.api("GET", "/v2/deployments").json()["data"]]

        # A restart between two requests: the pooled connections are stale, and the next
        # request must not be the one that finds out.
        for _ in range(5):
            assert stack.api("GET", "/v2/deployments").status_code == 200
        redis_proc.stop()
        redis_proc.start()
        wait_until(lambda: port_open(port), 15, "redis-server to restart")
        first = stack.api("DELETE", f"/v2/deployments/{name}")
        assert first.status_code == 200, first.text
    finally:
        stack.stop()
        redis_proc.stop()


@pytest.mark.parametrize("seed", [-1, 2**64], ids=["negative", "beyond-u64"])
def test_an_openai_seed_out_of_range_is_a_400_naming_it(stack: Stack, name: str, seed: int) -> None:
    stack.create(name, baseModel="sim-llm")
    try:
        body = {"prompt": "hi", "seed": seed}
        url = stack.deploy_url(name) + "/v1/completions"
        r = httpx.post(url, headers=stack.headers, json=body, timeout=30)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "seed"
        assert stack.queued(name) == 0
    finally:
        stack.delete(name)
