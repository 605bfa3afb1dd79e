"""Logging set-up shared by every wakegate process: one line per record, named by process."""

from __future__ import annotations

import logging


def setup_logging(level: str, process: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s {process:<7} %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Per-request lines from the HTTP clients drown the decisions worth reading.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
