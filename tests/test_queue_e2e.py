"""Queue behaviour seen by clients: disconnects leave the queue, streams stay alive."""

from __future__ import annotations

import threading
import time

import httpx
from harness import Stack, wait_until


def busy_replica(stack: Stack, name: str) -> threading.Thread:
    """Occupy the deployment's only slot with a long generation; returns once it holds it."""
    t = threading.Thread(
        target=stack.generate,
        args=(name, "Write a long story about a dragon:", 400),
        daemon=True,
    )
    t.start()
    wait_until(lambda: stack.in_flight(name) == 1, 10, "the long request holds the slot")
    return t


def test_client_that_disconnects_leaves_the_queue(stack: Stack, name: str) -> None:
    stack.create(name, minReplicas=1, maxReplicas=1, cooldownTime=60)
    wait_until(lambda: stack.ready_replicas(name) == 1, 60, "replica ready")
    long_request = busy_replica(stack, name)
    try:
        httpx.post(
            stack.deploy_url(name) + "/generate",
            headers=stack.headers,
            json={"inputs": "hi", "parameters": {"max_new_tokens": 4}},
            timeout=1.5,
        )
        raise AssertionError("the request should still be queued behind the long one")
    except httpx.ReadTimeout:
        pass
    # Gone from the queue while the long generation still holds the only slot.
    wait_until(lambda: stack.queued(name) == 0, 5, "disconnected request leaves the queue")
    assert long_request.is_alive()
    long_request.join(120)
    assert stack.generate(name).status_code == 200
    stack.delete(name)


def test_queued_stream_gets_its_200_at_once_and_keep_alive_comments(
    stack: Stack, name: str
) -> None:
    stack.create(name, minReplicas=1, maxReplicas=1, cooldownTime=60)
    wait_until(lambda: stack.ready_replicas(name) == 1, 60, "replica ready")
    long_request = busy_replica(stack, name)
    started = time.monotonic()
    lines: list[str] = []
    with httpx.stream(
        "POST",
        stack.deploy_url(name),
        headers=stack.headers,
        timeout=120,
        json={"inputs": "hi", "parameters": {"max_new_tokens": 4}, "stream": True},
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert time.monotonic() - started < 1.0, "headers are sent before a slot is free"
        for line in resp.iter_lines():
            lines.append(line)
    long_request.join(120)
    comments = [ln for ln in lines if ln.startswith(":")]
    events = [ln for ln in lines if ln.startswith("data:")]
    assert comments, "keep-alive comments while queued"
    assert events and "generated_text" in events[-1]
    assert lines.index(comments[0]) < lines.index(events[0])
    stack.delete(name)
