"""The floor of the gateway's own stack: aiohttp's server and client, and nothing else.

    python bench/bare_proxy.py --port PORT --upstream http://HOST:PORT --key KEY

One process on uvloop (as the gateway runs), one route: any POST is sent on to the same path
of `--upstream` with the replica's key, through one pooled aiohttp client session (the
gateway's settings), and the answer relayed: a whole body, or a stream's bytes as they come.
No authentication, queue, Redis, validation or metrics: what any gateway built on aiohttp pays
per request before its own work. `bench/gateway.py` measures it beside the gateway.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

UPSTREAM = web.AppKey("upstream", aiohttp.ClientSession)


def make_app(upstream: str, key: str) -> web.Application:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[UPSTREAM] = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=600.0),
            connector=aiohttp.TCPConnector(limit=2000, keepalive_timeout=2.0),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        yield
        await app[UPSTREAM].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        url = upstream + request.path
        async with request.app[UPSTREAM].post(url, data=body, headers=headers) as up:
            kind = up.headers.get("Content-Type", "application/json")
            if not kind.startswith("text/event-stream"):
                return web.Response(body=await up.read(), status=up.status, content_type=None,
                                    headers={"Content-Type": kind})  # fmt: skip
            resp = web.StreamResponse(status=up.status, headers={"Content-Type": kind})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{path:.*}", relay)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the replica's base URL")
    parser.add_argument("--key", required=True, help="the replica's key")
    args = parser.parse_args()
    web.run_app(
        make_app(args.upstream.rstrip("/"), args.key),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
