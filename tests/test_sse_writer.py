"""EventWriter against a real aiohttp server and client: the events of a read, written
together, arrive whole and in order, whatever the pace of the relay."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from aiohttp_sse import EventSourceResponse
from harness import free_port

from router.sse_writer import EventWriter


async def test_events_arrive_whole_and_in_order() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = EventSourceResponse(sep="\n")
        await resp.prepare(request)
        events = EventWriter(request, resp, 10)
        await events.send([f"burst-{i}" for i in range(50)])  # one read of the replica
        for i in range(5):  # the relay waiting between tokens
            await asyncio.sleep(0)
            await events.send([f"paced-{i}"])
        await events.send(["two\nlines", {"json": "made here"}])
        await resp.send("[DONE]")
        resp.stop_streaming()
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/") as r,
        ):
            body = (await r.read()).decode()
    finally:
        await runner.cleanup()
    expected = [f"data: burst-{i}" for i in range(50)] + [f"data: paced-{i}" for i in range(5)]
    expected += ["data: two\ndata: lines", 'data: {"json":"made here"}', "data: [DONE]"]
    assert body.split("\n\n") == [*expected, ""]
