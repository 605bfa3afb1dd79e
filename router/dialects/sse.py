"""Server-sent events from an aiohttp response, decoded by httpx-sse's spec decoders.

httpx-sse implements the WHATWG event-stream interpretation; its decoders are plain
line-in/event-out classes, so they serve aiohttp responses as well as httpx ones (the
gateway keeps one aiohttp session for every replica).
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator

import aiohttp
from httpx_sse import ServerSentEvent
from httpx_sse._decoders import SSEDecoder, SSELineDecoder


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
