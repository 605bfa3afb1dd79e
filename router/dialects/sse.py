"""Server-sent events from an aiohttp response, decoded by httpx-sse's spec decoders.

httpx-sse implements the WHATWG event-stream interpretation; its decoders are plain
line-in/event-out classes, so they serve aiohttp responses as well as httpx ones (the
gateway keeps one aiohttp session for every replica).

Events come in batches: those completed by one read from the replica. A relayed stream
makes an event per token, and each step of the relay (decode, map to tokens, render, write)
taken once per read instead of once per event is most of what relaying costs.
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
) -> AsyncGenerator[list[Any], None]:
    """POST a streaming request to a replica and yield the JSON data of the events of each
    read (never an empty list), skipping the `[DONE]` sentinel of OpenAI-style streams; an
    answer other than 200 raises UpstreamError.answered with the replica's own error. Iterate
    it inside `contextlib.aclosing`, so that a consumer that stops early (an error event, a
    client gone) closes the response at once and its connection goes back to the pool."""
    headers = {"Accept": "text/event-stream", **JSON_HEADERS, **(headers or {})}
    async with client.post(url, data=orjson.dumps(body), headers=headers) as resp:
        if resp.status != 200:
            raise UpstreamError.answered(resp.status, await resp.read())
        async for events in aiter_sse(resp):
            # Read on past `[DONE]` to the end: the connection is reused.
            data = [orjson.loads(sse.data) for sse in events if sse.data != "[DONE]"]
            if data:
                yield data


def replica_events(
    client: aiohttp.ClientSession, replica: ReplicaRecord, path: str, body: dict[str, Any]
) -> contextlib.aclosing[AsyncGenerator[list[Any], None]]:
    """`post_events` to `path` of a replica, with its key, closed on the way out."""
    return contextlib.aclosing(
        post_events(client, f"{replica.url}{path}", body, replica.auth_headers())
    )


async def aiter_sse(response: aiohttp.ClientResponse) -> AsyncIterator[list[ServerSentEvent]]:
    """The response's events, a list per read that completed any."""
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")
    lines = SSELineDecoder()
    decoder = SSEDecoder()
    async for chunk in response.content.iter_any():
        events = _decode(decoder, lines.decode(text.decode(chunk)))
        if events:
            yield events
    events = _decode(decoder, [*lines.decode(text.decode(b"", final=True) or "\n"), *lines.flush()])
    if events:
        yield events


def _decode(decoder: SSEDecoder, lines: list[str]) -> list[ServerSentEvent]:
    events = []
    for line in lines:
        event = decoder.decode(line)
        if event is not None:
            events.append(event)
    return events
