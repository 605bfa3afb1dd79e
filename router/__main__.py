"""`python -m router`: run one gateway instance."""

from __future__ import annotations

import uvloop
from aiohttp import web

from router.app import create_app
from wakegate.catalog import CatalogError
from wakegate.logs import setup_logging
from wakegate.sealing import SecretKeyError
from wakegate.settings import load_settings


def main() -> None:
    settings = load_settings()
    setup_logging(settings.log_level, "gateway")
    try:
        app = create_app(settings)
    except (CatalogError, SecretKeyError) as exc:
        raise SystemExit(str(exc)) from None
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        # A client that goes away cancels its handler, which takes it out of the queue.
        handler_cancellation=True,
        access_log=None,
        print=None,
        shutdown_timeout=10,
        # libuv's loop: the gateway spends most of its time in socket reads and writes, which
        # uvloop does in C (about a fifth of a warm request's CPU on the default loop).
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
