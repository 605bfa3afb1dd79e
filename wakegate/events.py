"""Deployment lifecycle events, in the shape the SDK's readiness poll reads (`ComputeEvents`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def event(event_type: str, revision: int, message: str = "") -> dict[str, Any]:
    """`eventType` and `timestamp` are what the SDK needs; `revision` scopes the readiness poll."""
    return {
        "eventType": event_type,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "revision": revision,
        "message": message,
    }
