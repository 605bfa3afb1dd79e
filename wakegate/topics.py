"""Every MQTT topic wakegate publishes or consumes, and the payload of each.

Topics are `wakegate/v1/<tenant>/<name>/<kind>`. Events make reactions fast; they are never
the only path to correctness (the scaler reconciles from Redis, gateways poll), so publishing
is best effort and QoS 1 is plenty.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field

ROOT = "wakegate/v1"

Kind = Literal["wake", "load", "replica", "decision", "config", "capacity"]


def topic(deployment: str, kind: Kind) -> str:
    return f"{ROOT}/{deployment}/{kind}"


def all_of(kind: Kind) -> str:
    """Subscription filter for one kind of event across all deployments."""
    return f"{ROOT}/+/+/{kind}"


def parse_topic(name: str) -> tuple[str, str] | None:
    """`wakegate/v1/acme/my-llm/wake` -> ("acme/my-llm", "wake")."""
    parts = name.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != ROOT:
        return None
    return f"{parts[2]}/{parts[3]}", parts[4]


class Event(BaseModel):
    deployment: str
    at: float = Field(default_factory=time.time)


class Wake(Event):
    """A request is waiting for a deployment that has no ready replica."""

    queued: int


class LoadReport(Event):
    """Queue depth and requests in flight, as a gateway saw them."""

    queued: int
    in_flight: int


class ReplicaChanged(Event):
    replica_id: str
    state: Literal["starting", "ready", "draining", "stopped", "failed"]
    url: str | None = None


class ScaleDecided(Event):
    """The scaler changed a deployment's desired replica count (the policy's or a reclaim's)."""

    current: int
    desired: int
    reason: str


class ConfigChanged(Event):
    change: Literal["created", "updated", "deleted"]


class CapacityWait(Event):
    """A deployment began or stopped waiting for capacity (the pool or its tenant's quota)."""

    waiting: bool
    reason: str = ""
    wanted: int = 0  # replicas it wants more than it holds


PAYLOADS: dict[str, type[Event]] = {
    "wake": Wake,
    "load": LoadReport,
    "replica": ReplicaChanged,
    "decision": ScaleDecided,
    "config": ConfigChanged,
    "capacity": CapacityWait,
}
