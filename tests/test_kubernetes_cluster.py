"""The kubernetes backend's API calls against a real cluster, end to end.

Runs only where a cluster is named explicitly: KUBECONFIG set (never a fallback to
~/.kube/config, so that a test run cannot touch a cluster by accident) or inside a Pod; it is
skipped otherwise, and when the API server does not answer. It needs:

- the wakegate image in the cluster: WAKEGATE_KUBERNETES_WAKEGATE_IMAGE (default
  `wakegate:latest`; with kind, `docker build -t wakegate:latest . && kind load docker-image
  wakegate:latest`);
- a namespace where it may create, read and delete Pods and Secrets:
  WAKEGATE_KUBERNETES_NAMESPACE (default `wakegate-test`; created when missing, if allowed);
- optionally WAKEGATE_KUBERNETES_CONTEXT, a kubeconfig context other than the current one.

The replica is a real llama.cpp engine (Gemma 3 270M on CPU, the weights ship in the image);
its readiness is read through the API, so the test also works from outside the cluster's Pod
network.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from scaler.backends import NoCapacity
from scaler.backends.kubernetes import (
    GPU_RESOURCE,
    KubernetesBackend,
    connect,
    pending_reason,
    pod_name,
    secret_name,
)
from scaler.engines.llamacpp import LlamaCppEngine
from wakegate.settings import Settings
from wakegate.spec import DeploymentConfig, DeploymentSpec

pytestmark = pytest.mark.timeout(900)

TOKEN = "hf_cluster_test_" + uuid.uuid4().hex
READY_TIMEOUT_S = 600.0  # pulling the image onto a fresh node may take minutes


class Cluster:
    def __init__(self, settings: Settings, api: Any) -> None:
        self.settings = settings
        self.api = api
        self.core = client.CoreV1Api(api)
        self.namespace = settings.kubernetes_namespace
        self.tenant = f"k8stest-{uuid.uuid4().hex[:6]}"

    def spec(self, name: str, accelerator: str = "cpu") -> DeploymentSpec:
        config = {"base_model": "gemma-3-270m", "accelerator": accelerator, "hf_token": TOKEN}
        return DeploymentSpec(
            self.tenant,
            name,
            "uuid-" + name,
            None,
            DeploymentConfig.from_dict(config),
            "ready",
            2,
            0,
            0,
        )

    async def pod(self, name: str) -> dict[str, Any] | None:
        try:
            pod = await self.core.read_namespaced_pod(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data: dict[str, Any] = self.api.sanitize_for_serialization(pod)
        return data


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    if not (os.environ.get("KUBECONFIG") or os.environ.get("KUBERNETES_SERVICE_HOST")):
        pytest.skip("no Kubernetes cluster: set KUBECONFIG (or run in a Pod) to run this test")
    settings = Settings(
        kubernetes_namespace=os.environ.get("WAKEGATE_KUBERNETES_NAMESPACE", "wakegate-test"),
        kubernetes_context=os.environ.get("WAKEGATE_KUBERNETES_CONTEXT") or None,
        kubernetes_wakegate_image=os.environ.get(
            "WAKEGATE_KUBERNETES_WAKEGATE_IMAGE", "wakegate:latest"
        ),
        replica_start_timeout_s=300.0,
    )
    try:
        api = await asyncio.wait_for(connect(settings), 10)
    except Exception as exc:
        pytest.skip(f"no usable kubeconfig: {exc}")
    try:
        await asyncio.wait_for(client.VersionApi(api).get_code(), 10)
    except Exception as exc:
        await api.close()
        pytest.skip(f"the Kubernetes API server does not answer: {exc!r}")
    c = Cluster(settings, api)
    try:
        body: Any = {"metadata": {"name": c.namespace}}
        await c.core.create_namespace(body)
    except ApiException as exc:
        if exc.status not in (403, 409):  # exists, or not ours to create: use it as it is
            raise
    try:
        yield c
    finally:
        # Whatever a failed test left behind.
        selector = f"wakegate.dev/tenant={c.tenant}"
        await c.core.delete_collection_namespaced_pod(
            c.namespace, label_selector=selector, grace_period_seconds=0
        )
        await c.core.delete_collection_namespaced_secret(c.namespace, label_selector=selector)
        await api.close()


async def wait_for(what: str, check: Any, timeout_s: float, detail: Any = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(2)
    extra = f": {await detail()}" if detail else ""
    raise AssertionError(f"{what} not within {timeout_s:.0f}s{extra}")


async def test_a_replica_pod_starts_is_adopted_by_a_new_scaler_and_stops(
    cluster: Cluster,
) -> None:
    spec = cluster.spec("gemma")
    replica_id = f"gemma-{uuid.uuid4().hex[:8]}"
    name = pod_name(replica_id)
    backend = KubernetesBackend(cluster.settings)
    try:
        running = await backend.start(spec, replica_id, LlamaCppEngine())
        assert running.url.startswith("http://") and running.url.endswith(":8000")
        assert running.handle["pod"] == name

        # A restarted scaler finds it by its labels and reads the exact ids back.
        restarted = KubernetesBackend(cluster.settings)
        try:
            listed = {r.replica_id: r for r in await restarted.list()}
            adopted = listed[replica_id]
            assert (adopted.deployment, adopted.revision) == (spec.key, 2)
            assert adopted.alive and adopted.url == running.url
            free = await restarted.free_accelerators()
            assert free["cpu"] == -1
        finally:
            await restarted.close()

        # The token is in the Secret, owned by the Pod, and nowhere in the Pod.
        pod = await cluster.pod(name)
        assert pod is not None
        assert TOKEN not in json.dumps(pod)
        secret = await cluster.core.read_namespaced_secret(secret_name(spec), cluster.namespace)
        assert base64.b64decode(secret.data["HF_TOKEN"]).decode() == TOKEN
        owners = {o.uid for o in secret.metadata.owner_references or []}
        assert pod["metadata"]["uid"] in owners

        # The engine loads and passes its readiness probe.
        async def ready() -> bool:
            current = await cluster.pod(name)
            assert current is not None, "the pod vanished"
            assert current["status"].get("phase") not in ("Failed", "Succeeded"), current
            conditions = current["status"].get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        async def why() -> str:
            current = await cluster.pod(name)
            return pending_reason(current) if current else "gone"

        await wait_for(f"pod {name} ready", ready, READY_TIMEOUT_S, why)

        await backend.stop(running, grace_s=5)
        assert await cluster.pod(name) is None
        later = KubernetesBackend(cluster.settings)
        try:
            assert replica_id not in {r.replica_id for r in await later.list()}
        finally:
            await later.close()
        await backend.stop(running, grace_s=5)  # idempotent

        # The garbage collector removes the Secret with its last owner.
        async def secret_gone() -> bool:
            try:
                await cluster.core.read_namespaced_secret(secret_name(spec), cluster.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return True
                raise
            return False

        await wait_for("secret collected", secret_gone, 120)
    finally:
        await backend.close()


async def test_an_unschedulable_replica_is_no_capacity_at_once_and_leaves_no_pod(
    cluster: Cluster,
) -> None:
    nodes = await cluster.core.list_node()
    if any(int((n.status.allocatable or {}).get(GPU_RESOURCE, 0)) for n in nodes.items):
        pytest.skip("the cluster has GPUs: an H100 replica might be scheduled")
    settings = Settings(
        kubernetes_namespace=cluster.namespace,
        kubernetes_context=cluster.settings.kubernetes_context,
        kubernetes_wakegate_image=cluster.settings.kubernetes_wakegate_image,
        # Far longer than the scheduler takes to say so: a timeout would fail differently.
        replica_start_timeout_s=300.0,
    )
    backend = KubernetesBackend(settings)
    replica_id = f"h100-{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(NoCapacity, match="cannot be scheduled"):
            await backend.start(
                cluster.spec("h100", "h100_80gb_sxm_100"), replica_id, LlamaCppEngine()
            )
        assert replica_id not in {r.replica_id for r in await backend.list()}
    finally:
        await backend.close()
