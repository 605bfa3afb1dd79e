"""The deployment status transitions the scaler makes: failed, rollout done, first Ready.

Each changes only the status of the spec it read, compare-and-set on that spec's revision and
status (wakegate/store.py `replace_deployment`): a user's update or DELETE made meanwhile
wins, and the transition, now about a spec that no longer is, is dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from wakegate.events import event
from wakegate.spec import DeploymentSpec
from wakegate.store import Store

log = logging.getLogger(__name__)


async def mark_failed(store: Store, spec: DeploymentSpec, why: str) -> None:
    """`failed` with the reason, unless it already is or is being deleted."""
    current = await store.get_deployment(spec.key)
    if current is None or current.status in ("failed", "deleting"):
        return
    if not await store.replace_deployment(
        current, replace(current, status="failed", updated_at=time.time())
    ):
        return
    await store.append_events(spec.key, [event("Failed", current.revision, why)])
    log.error("%s failed: %s", spec.key, why)


async def finish_rollout(store: Store, spec: DeploymentSpec) -> None:
    """`ready` again once a rolling update to `spec`'s revision has replaced everything."""
    current = await store.get_deployment(spec.key)
    if current is None or current.status != "updating" or current.revision != spec.revision:
        return
    if not await store.replace_deployment(
        current, replace(current, status="ready", updated_at=time.time())
    ):
        return
    await store.append_events(spec.key, [event("Ready", spec.revision, "rolling update complete")])
    log.info("%s: rolling update to revision %d complete", spec.key, spec.revision)


async def announce_ready(store: Store, key: str) -> None:
    """Deployments that wait for a replica (min_replicas > 0) get their Ready event now."""
    spec = await store.get_deployment(key)
    if spec is None:
        return
    events = [e for e in await store.events(key) if e.get("revision") == spec.revision]
    if not any(e["eventType"] == "Ready" for e in events):
        await store.append_events(key, [event("Ready", spec.revision, "first replica is ready")])
