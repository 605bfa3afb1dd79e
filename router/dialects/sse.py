"""Server-sent events from an aiohttp response, decoded by httpx-sse's spec decoders.

httpx-sse implements the WHATWG event-stream interpretation; its decoders are plain
line-in/event-out classes, so they serve aiohttp responses as well as httpx ones (the
gateway keeps one aiohttp session for every replica).
"""

from __future__ import annotations

import codecs
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
import orjson
from httpx_sse import ServerSentEvent
from httpx_sse._decoders import SSEDecoder, SSELineDecoder

from router.dialects import JSON_HEADERS, UpstreamError
from wakegate.store import ReplicaRecord


async def post_events(
    client: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> AsyncGenerator[Any, None]:
    """POST a streaming request to a replica and yield each event's JSON data, skipping the
    `[DONE]` sentinel of OpenAI-style streams; an answer other than 200 raises
    UpstreamError.answered with the replica's own error. Iterate it inside
    `contextlib.aclosing`, so that a consumer that stops early (an error event, a client gone)
    closes the response at once and its connection goes back to the pool."""
    headers = {"Accept": "text/event-stream", **JSON_HEADERS, **(headers or {})}
    async with client.post(url, data=orjson.dumps(body), headers=headers) as resp:
        if resp.status != 200:
            raise UpstreamError.answered(resp.status, await resp.read())
        async for sse in aiter_sse(resp):
            if sse.data != "[DONE]":  # read on to the end: the connection is reused
                yield orjson.loads(sse.data)  # C: a stream parses one event per token


def replica_events(
    client: aiohttp.ClientSession, replica: ReplicaRecord, path: str, body: dict[str, Any]
) -> contextlib.aclosing[AsyncGenerator[Any, None]]:
    """`post_events` to `path` of a replica, with its key, closed on the way out."""
    return contextlib.aclosing(
        post_events(client, f"{replica.url}{path}", body, replica.auth_headers())
    )


async def aiter_sse(response: aiohttp.ClientResponse) -> AsyncIterator[ServerSentEvent]:
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")
    lines = SSELineDecoder()
    events = SSEDecoder()
    async for chunk in response.content.iter_any():
        for line in lines.decode(text.decode(chunk)):
            event = events.decode(line)
            if event is not None:
                yield event
    for line in [*lines.decode(text.decode(b"", final=True) or "\n"), *lines.flush()]:
        event = events.decode(line)
        if event is not None:
            yield event
