"""The `kubernetes` backend: replicas are Pods, managed through the Kubernetes API.

Two halves. The rendering half is pure: it turns a deployment spec, a replica id, an engine
and its launch plan into plain-dict manifests (the replica's Pod, the deployment's Secret),
and reads a listed Pod back into a RunningReplica; the tests validate its output against the
Kubernetes schemas, no cluster needed. The API half, `KubernetesBackend`, sends those
manifests with kubernetes_asyncio.

One bare Pod per replica (`restartPolicy: Never`) rather than a workload object: the scaler
drains and stops one chosen replica, and replaces failed ones with its own backoff. Labels
(`app.kubernetes.io/managed-by=wakegate`) let a restarted scaler list and adopt its Pods;
annotations keep the exact deployment key and replica id, which labels cannot always hold.

`start` returns once the Pod has an IP (scheduled, sandbox up), not once the engine is ready:
the scaler then probes `http://<pod IP>:8000` + the engine's health path, so the scaler and
gateways must reach Pod IPs (run them in the cluster). A Pod the scheduler finds no node for
(Unschedulable) is deleted at once, and `start` raises NoCapacity. The deployment's secrets
(`hf_token`) live in a Secret named after the deployment and reach the container through
`secretKeyRef`; their values never appear in a Pod manifest. The Secret is owned by the Pods
that use it, so Kubernetes' garbage collector deletes it with the last of them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from scaler.backends import NoCapacity, RunningReplica
from scaler.backends.kubernetes_launch import HF_TOKEN_ENV, REPLICA_KEY_ENV, pod_plan
from scaler.engines import Engine, LaunchPlan
from wakegate.catalog import ACCELERATORS, Accelerator, pool_units
from wakegate.engines import WAKEGATE_IMAGE, EngineProfile, EngineRefused
from wakegate.settings import Settings
from wakegate.spec import DeploymentSpec

log = logging.getLogger(__name__)

# --- names, labels and conventions ------------------------------------------------------------

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "wakegate"
SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
ENGINE_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
REPLICA_LABEL = "wakegate.dev/replica-id"
REVISION_LABEL = "wakegate.dev/revision"
TENANT_LABEL = "wakegate.dev/tenant"
DEPLOYMENT_LABEL = "wakegate.dev/deployment"
ACCELERATOR_LABEL = "wakegate.dev/accelerator"
# Exact values, where a label holds a label-safe form.
DEPLOYMENT_ANNOTATION = "wakegate.dev/deployment"
REPLICA_ANNOTATION = "wakegate.dev/replica-id"

COMPONENT_REPLICA = "replica"
CONTAINER_NAME = "engine"
CONTAINER_PORT = 8000
PORT_NAME = "http"
BIND_HOST = "0.0.0.0"
MODELS_MOUNT = "/models"
# The root filesystem is read-only: engines write caches under HOME, here a per-Pod emptyDir.
TMP_MOUNT = "/tmp"
# Engines run as this user, not as root (the official vLLM, TGI and LoRAX images and the
# wakegate image run as root by default, but need no root: they write only to /models and
# HOME). fsGroup makes the volumes writable for it.
REPLICA_UID = 1000
# Host resources per GPU of a GPU replica: a few cores for tokenisation and scheduling, and
# as much memory as the GPU has, to stage weights on their way to it.
CPUS_PER_GPU = 4
# The key of the replica's API key in its own Secret.
REPLICA_KEY_DATA = "api-key"
GPU_RESOURCE = "nvidia.com/gpu"
# GPU feature discovery (part of the NVIDIA GPU operator) labels each GPU node with the NVML
# product name, spaces as dashes; GKE labels its GPU nodes itself.
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
# Pods deleted by someone else (kubectl, a node drain) get this long after SIGTERM; the
# scaler's own stops pass their grace period with the delete.
TERMINATION_GRACE_S = 30
STARTUP_PROBE_PERIOD_S = 10
# Container waiting reasons that no retry by the kubelet will clear.
FATAL_WAITING_REASONS = frozenset({"InvalidImageName", "ErrImageNeverPull"})

# Node label values per GPU SKU, under each convention a node may follow. A Pod may land on a
# node that matches either convention (node selector terms are ORed), and any listed value
# within one: `a10_24gb` is the A10G on AWS and the A10 elsewhere, `a100_80gb` comes as SXM4
# or PCIe. GKE offers no A10, L40S or H100 PCIe, so those SKUs have no GKE value.
NODE_LABEL_VALUES: dict[str, dict[str, tuple[str, ...]]] = {
    "a10_24gb": {GPU_PRODUCT_LABEL: ("NVIDIA-A10G", "NVIDIA-A10")},
    "l4_24gb": {GPU_PRODUCT_LABEL: ("NVIDIA-L4",), GKE_ACCELERATOR_LABEL: ("nvidia-l4",)},
    "l40s_48gb": {GPU_PRODUCT_LABEL: ("NVIDIA-L40S",)},
    "a100_80gb": {
        GPU_PRODUCT_LABEL: ("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"),
        GKE_ACCELERATOR_LABEL: ("nvidia-a100-80gb",),
    },
    "h100_80gb_pcie": {GPU_PRODUCT_LABEL: ("NVIDIA-H100-PCIe",)},
    "h100_80gb_sxm": {
        GPU_PRODUCT_LABEL: ("NVIDIA-H100-80GB-HBM3",),
        GKE_ACCELERATOR_LABEL: ("nvidia-h100-80gb", "nvidia-h100-mega-80gb"),
    },
}
# Cloud GPU nodes are tainted so that only Pods that ask for GPUs land there.
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}

_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def label_value(text: str) -> str:
    """`text` if it is a valid label value, else a readable prefix plus a hash of it."""
    if len(text) <= 63 and _LABEL_VALUE.fullmatch(text):
        return text
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:54].strip("-_.")
    return f"{safe}-{_digest(text)}" if safe else _digest(text)


def dns_label(text: str) -> str:
    """`text` if it is a DNS-1123 label (a Pod name that is also a valid hostname), else a
    lower-cased prefix plus a hash of it."""
    if len(text) <= 63 and _DNS_LABEL.fullmatch(text):
        return text
    safe = re.sub(r"[^a-z0-9-]+", "-", text.lower())[:54].strip("-")
    return f"{safe}-{_digest(text)}" if safe else _digest(text)


def pod_name(replica_id: str) -> str:
    return dns_label(replica_id)


def replica_secret_name(replica_id: str) -> str:
    """The replica's own Secret (its API key), named after its Pod."""
    return f"{pod_name(replica_id)}-key"


def secret_name(spec: DeploymentSpec) -> str:
    # The hash keeps `a-b`/`c` and `a`/`b-c` apart.
    readable = re.sub(r"[^a-z0-9-]+", "-", f"{spec.tenant}-{spec.name}".lower()).strip("-")
    return f"wakegate-{readable[:200]}-{_digest(spec.key)}"


def replica_url(pod_ip: str, port: int = CONTAINER_PORT) -> str:
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    return f"http://{host}:{port}"


# --- placement ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where a replica of one accelerator id may run, and what it asks of the node."""

    gpus: int
    node_affinity: dict[str, Any] | None
    tolerations: list[dict[str, str]]


def placement(accelerator_id: str) -> Placement:
    try:
        acc = ACCELERATORS[accelerator_id]
    except KeyError:
        raise EngineRefused(
            "config.accelerator", f"unknown accelerator {accelerator_id!r}"
        ) from None
    if acc.gpu_count == 0:
        return Placement(0, None, [])
    conventions = NODE_LABEL_VALUES.get(acc.sku)
    if not conventions:
        raise EngineRefused(
            "config.accelerator",
            f"the kubernetes backend knows no node labels for {acc.sku!r} GPUs",
        )
    terms = [
        {"matchExpressions": [{"key": key, "operator": "In", "values": list(values)}]}
        for key, values in conventions.items()
    ]
    affinity = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}
    return Placement(acc.gpu_count, affinity, [dict(GPU_TOLERATION)])


def node_sku(labels: Mapping[str, str]) -> str | None:
    """The GPU SKU a node's labels name, under any known convention."""
    for sku, conventions in NODE_LABEL_VALUES.items():
        for key, values in conventions.items():
            if labels.get(key) in values:
                return sku
    return None


# --- launch plans -------------------------------------------------------------------------------


def engine_image(engine: EngineProfile, settings: Settings) -> str:
    """The engine's own container image, or the wakegate image for wakegate's engines."""
    image = getattr(engine, "image", None)
    if not image or image == WAKEGATE_IMAGE:
        return settings.kubernetes_wakegate_image
    return str(image)


def runs_in_wakegate_image(engine: EngineProfile, settings: Settings) -> bool:
    return engine_image(engine, settings) == settings.kubernetes_wakegate_image


def launch_plan(
    spec: DeploymentSpec, engine: Engine, settings: Settings, api_key: str | None = None
) -> LaunchPlan:
    """What the Pod's container runs. Engines of the wakegate image build their plan in the
    Pod (scaler/backends/kubernetes_launch.py), which gets the replica's key as
    WAKEGATE_REPLICA_KEY; engines with their own image are asked here, with the Pod's host,
    port and models path and the key, and must not touch this machine's disk."""
    if runs_in_wakegate_image(engine, settings):
        plan = pod_plan(
            spec,
            engine.name,
            engine.concurrency,
            BIND_HOST,
            CONTAINER_PORT,
            MODELS_MOUNT,
            settings.adapter_url,
        )
        if not api_key:
            return plan
        return LaunchPlan(
            plan.argv,
            {**plan.env, REPLICA_KEY_ENV: api_key},
            plan.secret_env | {REPLICA_KEY_ENV},
        )
    if spec.config.preloaded_adapters and getattr(engine, "adapter_files", True):
        raise EngineRefused(
            "config.preloadedAdapters",
            "the kubernetes backend cannot yet provide adapter files to engines that run "
            "from their own image",
        )
    return engine.launch(spec, BIND_HOST, CONTAINER_PORT, Path(MODELS_MOUNT), {}, api_key)


# --- manifests ----------------------------------------------------------------------------------


def key_vars(plan: LaunchPlan, api_key: str | None) -> frozenset[str]:
    """The plan's variables that hold the replica's key: they come from the replica's own
    Secret, not the deployment's, which every replica of the deployment shares."""
    if not api_key:
        return frozenset()
    return frozenset(n for n in plan.secret_env if plan.env.get(n) == api_key)


def secret_data(
    spec: DeploymentSpec, plan: LaunchPlan, api_key: str | None = None
) -> dict[str, str]:
    """Env var name -> secret value: the deployment's `hf_token` as HF_TOKEN, and every
    variable the engine's plan marks secret but the replica's key."""
    own = key_vars(plan, api_key)
    data = {n: plan.env[n] for n in plan.secret_env if n in plan.env and n not in own}
    token = spec.config.hf_token
    if token:
        data.setdefault(HF_TOKEN_ENV, str(token))
    return data


def _deployment_labels(spec: DeploymentSpec) -> dict[str, str]:
    return {
        MANAGED_BY_LABEL: MANAGED_BY,
        TENANT_LABEL: label_value(spec.tenant),
        DEPLOYMENT_LABEL: label_value(spec.name),
    }


def render_secret(
    spec: DeploymentSpec, plan: LaunchPlan, namespace: str, api_key: str | None = None
) -> dict[str, Any] | None:
    """The deployment's Secret, or None when it has no secrets."""
    data = secret_data(spec, plan, api_key)
    if not data:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name(spec),
            "namespace": namespace,
            "labels": _deployment_labels(spec),
            "annotations": {DEPLOYMENT_ANNOTATION: spec.key},
        },
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(data.items())},
    }


def render_replica_secret(
    spec: DeploymentSpec, replica_id: str, api_key: str, namespace: str
) -> dict[str, Any]:
    """The replica's own Secret: its API key. Owned by its Pod once that exists, so that the
    garbage collector deletes it with the Pod."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": replica_secret_name(replica_id),
            "namespace": namespace,
            "labels": {**_deployment_labels(spec), REPLICA_LABEL: label_value(replica_id)},
            "annotations": {DEPLOYMENT_ANNOTATION: spec.key, REPLICA_ANNOTATION: replica_id},
        },
        "type": "Opaque",
        "data": {REPLICA_KEY_DATA: base64.b64encode(api_key.encode()).decode()},
    }


def _env(
    spec: DeploymentSpec, plan: LaunchPlan, replica_id: str, api_key: str | None
) -> list[dict[str, Any]]:
    secret_vars = set(secret_data(spec, plan, api_key))
    own = key_vars(plan, api_key)
    # Hugging Face downloads go to the models volume (shared, with a PVC) unless the engine
    # says otherwise; other caches go under HOME, the one writable place besides it.
    values = {"HF_HOME": f"{MODELS_MOUNT}/huggingface", "HOME": TMP_MOUNT, **plan.env}
    env: list[dict[str, Any]] = []
    for name in sorted(set(values) | secret_vars):
        if name in own:
            ref = {"name": replica_secret_name(replica_id), "key": REPLICA_KEY_DATA}
            env.append({"name": name, "valueFrom": {"secretKeyRef": ref}})
        elif name in secret_vars:
            ref = {"name": secret_name(spec), "key": name}
            env.append({"name": name, "valueFrom": {"secretKeyRef": ref}})
        else:
            env.append({"name": name, "value": values[name]})
    env.append({"name": "WAKEGATE_REPLICA_ID", "value": replica_id})
    return env


def _command(argv: list[str]) -> list[str]:
    # A plan built on this machine names its Python by path; the image has its own.
    return ["python", *argv[1:]] if argv[0] == sys.executable else list(argv)


# Engines that answer their health path without the replica's key (vLLM guards /v1/* only;
# LoRAX checks no key). The kubelet cannot send a key it would have to hold in the Pod
# manifest, so the others get a TCP probe: they listen only once the model is loaded.
KEYLESS_HEALTH = frozenset({"vllm", "lorax"})


def _probe(engine: EngineProfile, keyed: bool, period_s: int, failures: int) -> dict[str, Any]:
    check: dict[str, Any] = (
        {"tcpSocket": {"port": PORT_NAME}}
        if keyed and engine.name not in KEYLESS_HEALTH
        else {"httpGet": {"path": engine.health_path, "port": PORT_NAME}}
    )
    return {
        **check,
        "periodSeconds": period_s,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def replica_resources(accelerator: Accelerator, settings: Settings) -> dict[str, Any]:
    """CPU and memory (and GPUs) a replica requests, and as much as its limits: a Guaranteed
    Pod, which neither starves its node's neighbours nor is evicted first. CPU replicas take
    the settings' amounts; GPU replicas CPUS_PER_GPU cores and their GPUs' memory."""
    if accelerator.gpu_count == 0:
        amounts = {
            "cpu": settings.kubernetes_cpu_replica_cpu,
            "memory": settings.kubernetes_cpu_replica_memory,
        }
    else:
        amounts = {
            "cpu": str(CPUS_PER_GPU * accelerator.gpu_count),
            "memory": f"{accelerator.memory_gib * accelerator.gpu_count}Gi",
            GPU_RESOURCE: str(accelerator.gpu_count),
        }
    return {"requests": dict(amounts), "limits": dict(amounts)}


# No privileges: no root, no escalation, no capabilities, the runtime's seccomp profile, and a
# read-only root filesystem (the engine writes to /models and /tmp only).
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": REPLICA_UID,
    "runAsGroup": REPLICA_UID,
    "fsGroup": REPLICA_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def render_pod(
    spec: DeploymentSpec,
    replica_id: str,
    engine: EngineProfile,
    plan: LaunchPlan,
    settings: Settings,
    api_key: str | None = None,
) -> dict[str, Any]:
    """The Pod that runs one replica of `spec` with `plan`; `api_key`: the key the plan
    holds, which the Pod reads from the replica's own Secret."""
    where = placement(spec.accelerator)
    command = _command(plan.argv)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": engine_image(engine, settings),
        "command": command[:1],
        "args": command[1:],
        "env": _env(spec, plan, replica_id, api_key),
        "ports": [{"name": PORT_NAME, "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
        # The engine may load weights for as long as the scaler waits for it; past that the
        # kubelet stops it, and the Pod fails (the scaler gave up on it already).
        "startupProbe": _probe(
            engine,
            bool(api_key),
            STARTUP_PROBE_PERIOD_S,
            max(1, math.ceil(settings.replica_start_timeout_s / STARTUP_PROBE_PERIOD_S)),
        ),
        "readinessProbe": _probe(engine, bool(api_key), 5, 3),
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_MOUNT},
            {"name": "tmp", "mountPath": TMP_MOUNT},
        ],
        "resources": replica_resources(ACCELERATORS[spec.accelerator], settings),
        "securityContext": dict(CONTAINER_SECURITY),
        # A failed engine's last log lines become the Pod's termination message.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    volumes: list[dict[str, Any]] = [
        {"name": "models", "persistentVolumeClaim": {"claimName": settings.kubernetes_models_pvc}}
        if settings.kubernetes_models_pvc
        else {"name": "models", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        # Replicas need neither the API nor environment variables for every Service.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "securityContext": dict(POD_SECURITY),
        "containers": [container],
        "volumes": volumes,
    }
    if where.gpus:
        # Engines that share tensors between processes (vLLM) need more than the 64 MiB
        # /dev/shm a container gets by default.
        container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        pod_spec["affinity"] = {"nodeAffinity": where.node_affinity}
        pod_spec["tolerations"] = where.tolerations
    labels = {
        **_deployment_labels(spec),
        ENGINE_LABEL: label_value(engine.name),
        COMPONENT_LABEL: COMPONENT_REPLICA,
        REPLICA_LABEL: label_value(replica_id),
        REVISION_LABEL: str(spec.revision),
        ACCELERATOR_LABEL: label_value(spec.accelerator),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(replica_id),
            "namespace": settings.kubernetes_namespace,
            "labels": labels,
            "annotations": {DEPLOYMENT_ANNOTATION: spec.key, REPLICA_ANNOTATION: replica_id},
        },
        "spec": pod_spec,
    }


# --- reading Pods back --------------------------------------------------------------------------


def _terminated_message(pod: Mapping[str, Any]) -> str:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated:
            return str(terminated.get("message") or terminated.get("reason") or "").strip()
    return ""


def _fatal_waiting(pod: Mapping[str, Any]) -> str | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in FATAL_WAITING_REASONS:
            return f"{waiting['reason']}: {waiting.get('message', '')}".strip(": ")
    return None


def pending_reason(pod: Mapping[str, Any]) -> str:
    """Why a Pod is not running yet, as Kubernetes says it (unschedulable, pulling...)."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return str(cond.get("message") or cond.get("reason") or "not scheduled")
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            return f"{waiting.get('reason', 'waiting')}: {waiting.get('message', '')}".strip(": ")
    return str(status.get("phase") or "pending")


def unschedulable(pod: Mapping[str, Any]) -> str | None:
    """The scheduler's message when it found no node for the Pod (condition PodScheduled
    False, reason Unschedulable); None while it is scheduled, or waits for anything else
    (a scheduling gate, a first attempt)."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            return str(cond.get("message") or "Unschedulable")
    return None


def replica_from_pod(pod: Mapping[str, Any]) -> RunningReplica | None:
    """A listed Pod (the API's JSON form) as a replica; None for Pods wakegate did not make."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    deployment = annotations.get(DEPLOYMENT_ANNOTATION)
    replica_id = annotations.get(REPLICA_ANNOTATION)
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY or not deployment or not replica_id:
        return None
    status = pod.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    port = CONTAINER_PORT
    for container in (pod.get("spec") or {}).get("containers") or []:
        for p in container.get("ports") or []:
            if p.get("name") == PORT_NAME:
                port = int(p["containerPort"])
    pod_ip = status.get("podIP")
    fatal = _fatal_waiting(pod)
    alive = (
        phase not in ("Failed", "Succeeded") and not meta.get("deletionTimestamp") and fatal is None
    )
    handle = {
        "pod": str(meta.get("name", "")),
        "namespace": str(meta.get("namespace", "")),
        "uid": str(meta.get("uid", "")),
        "phase": phase,
        "node": str((pod.get("spec") or {}).get("nodeName") or ""),
    }
    why = fatal or _terminated_message(pod)
    if why:
        handle["exit"] = why
    return RunningReplica(
        replica_id=str(replica_id),
        deployment=str(deployment),
        revision=int(labels.get(REVISION_LABEL, 0)),
        url=replica_url(pod_ip, port) if pod_ip else "",
        handle=handle,
        alive=alive,
    )


def _gpu_request(pod: Mapping[str, Any]) -> int:
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        amount = (resources.get("requests") or {}).get(GPU_RESOURCE) or (
            resources.get("limits") or {}
        ).get(GPU_RESOURCE)
        total += int(amount or 0)
    return total


def cpu_millis(quantity: object) -> int:
    """A Kubernetes CPU quantity ("2", "500m", "1.5") in millicores; 0 for none or nonsense."""
    text = str(quantity or "").strip()
    try:
        if text.endswith("m"):
            return max(0, int(float(text[:-1])))
        return max(0, int(float(text) * 1000))
    except ValueError:
        return 0


def _cpu_request(pod: Mapping[str, Any]) -> int:
    """Millicores the Pod's containers request (their limit where they request none)."""
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        amount = (resources.get("requests") or {}).get("cpu") or (
            resources.get("limits") or {}
        ).get("cpu")
        total += cpu_millis(amount)
    return total


def free_gpus(
    nodes: list[Mapping[str, Any]], pods: list[Mapping[str, Any]], cpu_replica: str
) -> dict[str, int]:
    """Unrequested GPUs by SKU on schedulable nodes with known GPU labels, and `cpu`: how many
    more CPU replicas (each requesting `cpu_replica` cores, render_pod) fit in the
    unrequested CPU of the schedulable nodes, node by node."""
    used: dict[str, int] = {}
    used_cpu: dict[str, int] = {}
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            used[node] = used.get(node, 0) + _gpu_request(pod)
            used_cpu[node] = used_cpu.get(node, 0) + _cpu_request(pod)
    per_replica = max(1, cpu_millis(cpu_replica))
    free: dict[str, int] = {"cpu": 0}
    for node in nodes:
        meta = node.get("metadata") or {}
        if (node.get("spec") or {}).get("unschedulable"):
            continue
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        name = meta.get("name", "")
        spare_cpu = cpu_millis(allocatable.get("cpu")) - used_cpu.get(name, 0)
        free["cpu"] += max(0, spare_cpu) // per_replica
        sku = node_sku(meta.get("labels") or {})
        if sku is None:
            continue
        gpus = int(allocatable.get(GPU_RESOURCE) or 0)
        free[sku] = free.get(sku, 0) + max(0, gpus - used.get(name, 0))
    return free


# --- the API ------------------------------------------------------------------------------------


def _body(manifest: dict[str, Any]) -> Any:
    """A rendered manifest as a request body: the client sends plain dicts as they are."""
    return manifest


class KubernetesApiError(RuntimeError):
    """The API server refused or failed a request; the message is the server's."""


def _api_error(action: str, exc: ApiException) -> KubernetesApiError:
    message = str(exc.reason)
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        message = json.loads(exc.body or b"{}").get("message") or message
    return KubernetesApiError(f"{action}: {exc.status} {message}")


async def connect(settings: Settings) -> client.ApiClient:
    """An API client: in-cluster credentials when running in a Pod and no kubeconfig context
    is named, else the kubeconfig (KUBECONFIG or ~/.kube/config) and its named or current
    context."""
    conf = client.Configuration()
    if settings.kubernetes_context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=conf)
    else:
        await config.load_kube_config(
            context=settings.kubernetes_context, client_configuration=conf, persist_config=False
        )
    return client.ApiClient(configuration=conf)


# How long a listing serves callers: the scaler asks for it every 0.25 s per starting replica.
LIST_TTL_S = 1.0
POLL_S = 1.0
# After a stop's grace period, how long the kubelet gets to confirm before a forced delete.
STOP_MARGIN_S = 15.0


class KubernetesBackend:
    name = "kubernetes"
    knows_whole_pool = True

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._namespace = settings.kubernetes_namespace
        self._api: client.ApiClient | None = None
        self._core: client.CoreV1Api | None = None
        self._connect_lock = asyncio.Lock()
        self._list_lock = asyncio.Lock()
        self._listed: tuple[float, list[RunningReplica]] | None = None

    async def _client(self) -> client.CoreV1Api:
        async with self._connect_lock:
            if self._core is None:
                self._api = await connect(self._settings)
                self._core = client.CoreV1Api(self._api)
            return self._core

    def _json(self, obj: Any) -> dict[str, Any]:
        assert self._api is not None
        data: dict[str, Any] = self._api.sanitize_for_serialization(obj)
        return data

    async def start(
        self,
        spec: DeploymentSpec,
        replica_id: str,
        engine: Engine,
        api_key: str | None = None,
    ) -> RunningReplica:
        """Create the Pod (and the deployment's Secret, and the replica's own with its key);
        return once the Pod has an IP."""
        plan = await asyncio.to_thread(launch_plan, spec, engine, self._settings, api_key)
        pod = render_pod(spec, replica_id, engine, plan, self._settings, api_key)
        secrets = [render_secret(spec, plan, self._namespace, api_key)]
        if api_key:
            secrets.append(render_replica_secret(spec, replica_id, api_key, self._namespace))
        owned = [s for s in secrets if s is not None]
        core = await self._client()
        name = pod["metadata"]["name"]
        for secret in owned:
            await self._upsert_secret(core, secret)
        try:
            created = await core.create_namespaced_pod(self._namespace, _body(pod))
        except ApiException as exc:
            raise _api_error(f"creating pod {name}", exc) from None
        self._listed = None
        log.info("created pod %s for replica %s of %s", name, replica_id, spec.key)
        try:
            for secret in owned:
                await self._own_secret(core, secret, name, created.metadata.uid)
            return await self._wait_for_ip(core, name)
        except Exception:
            with contextlib.suppress(KubernetesApiError):
                await self._delete(core, name, 0)
            raise

    async def _upsert_secret(self, core: client.CoreV1Api, secret: dict[str, Any]) -> None:
        name = secret["metadata"]["name"]
        try:
            await core.create_namespaced_secret(self._namespace, _body(secret))
        except ApiException as exc:
            if exc.status != 409:
                raise _api_error(f"creating secret {name}", exc) from None
            try:
                await core.patch_namespaced_secret(name, self._namespace, {"data": secret["data"]})
            except ApiException as exc2:
                raise _api_error(f"updating secret {name}", exc2) from None

    async def _own_secret(
        self, core: client.CoreV1Api, secret: dict[str, Any], pod: str, uid: str
    ) -> None:
        """Add the Pod to the Secret's owners (a strategic merge on `uid`), so that the garbage
        collector deletes the Secret with its last Pod."""
        owner = {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}
        name = secret["metadata"]["name"]
        try:
            await core.patch_namespaced_secret(
                name, self._namespace, {"metadata": {"ownerReferences": [owner]}}
            )
        except ApiException as exc:
            if exc.status != 404:
                raise _api_error(f"adding an owner to secret {name}", exc) from None
            # Collected meanwhile, with the last Pod that owned it: make it again, owned.
            owned = {**secret, "metadata": {**secret["metadata"], "ownerReferences": [owner]}}
            try:
                await core.create_namespaced_secret(self._namespace, _body(owned))
            except ApiException as exc2:
                raise _api_error(f"creating secret {name}", exc2) from None

    async def _wait_for_ip(self, core: client.CoreV1Api, name: str) -> RunningReplica:
        timeout_s = self._settings.replica_start_timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                data = self._json(await core.read_namespaced_pod(name, self._namespace))
            except ApiException as exc:
                raise _api_error(f"reading pod {name}", exc) from None
            replica = replica_from_pod(data)
            if replica is None:
                raise KubernetesApiError(f"pod {name} lost its wakegate labels or annotations")
            if not replica.alive:
                why = replica.handle.get("exit") or replica.handle["phase"]
                raise KubernetesApiError(f"pod {name} ended before it started: {why}")
            if replica.url:
                return replica
            no_node = unschedulable(data)
            if no_node is not None:
                # No waiting for room here: the scaler starts a replica only where it sees
                # room, and it retries when free_accelerators() shows some again. (A cluster
                # autoscaler would have needed the Pod to stay Pending: see docs/backends.md.)
                raise NoCapacity(f"pod {name} cannot be scheduled: {no_node}")
            if time.monotonic() >= deadline:
                raise KubernetesApiError(
                    f"pod {name} got no IP within {timeout_s:.0f}s: {pending_reason(data)}"
                )
            await asyncio.sleep(POLL_S)

    async def _delete(self, core: client.CoreV1Api, name: str, grace_s: int) -> bool:
        """Delete a Pod; False if it was already gone."""
        try:
            await core.delete_namespaced_pod(name, self._namespace, grace_period_seconds=grace_s)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise _api_error(f"deleting pod {name}", exc) from None
        finally:
            self._listed = None
        return True

    async def stop(self, replica: RunningReplica, grace_s: float) -> None:
        """Delete the Pod with `grace_s` between SIGTERM and SIGKILL, and wait until it is
        gone; force the deletion if the kubelet has not confirmed well after that."""
        core = await self._client()
        name = str(replica.handle.get("pod") or pod_name(replica.replica_id))
        # At least a second, so that the kubelet, not the API server, ends the container.
        grace = max(1, math.ceil(grace_s))
        if not await self._delete(core, name, grace):
            return
        deadline = time.monotonic() + grace + STOP_MARGIN_S
        while time.monotonic() < deadline:
            try:
                await core.read_namespaced_pod(name, self._namespace)
            except ApiException as exc:
                if exc.status == 404:
                    log.info("stopped replica %s of %s", replica.replica_id, replica.deployment)
                    return
                raise _api_error(f"reading pod {name}", exc) from None
            await asyncio.sleep(POLL_S)
        log.warning("pod %s outlived its grace period; deleting it by force", name)
        await self._delete(core, name, 0)

    async def list(self) -> list[RunningReplica]:
        # One request at a time: concurrent callers share its answer.
        async with self._list_lock:
            now = time.monotonic()
            if self._listed is not None and now - self._listed[0] < LIST_TTL_S:
                return list(self._listed[1])
            core = await self._client()
            try:
                pods = await core.list_namespaced_pod(self._namespace, label_selector=SELECTOR)
            except ApiException as exc:
                raise _api_error(f"listing pods in {self._namespace}", exc) from None
            replicas = [r for pod in pods.items if (r := replica_from_pod(self._json(pod)))]
            self._listed = (now, replicas)
            return list(replicas)

    async def free_accelerators(self) -> dict[str, int]:
        """Best effort: allocatable GPUs of schedulable nodes with known GPU labels, less what
        running Pods request, and the CPU replicas their unrequested CPU still holds. Needs to
        list nodes and Pods cluster-wide (a ClusterRole); without that, only `cpu` (-1: no
        count, the scheduler and the tenants' maxReplicasPerTenant bound CPU replicas) is
        reported. Ignores taints the Pods do not tolerate and nodes a cluster autoscaler
        could still add."""
        core = await self._client()
        try:
            nodes = await core.list_node()
            pods = await core.list_pod_for_all_namespaces(
                field_selector="status.phase!=Succeeded,status.phase!=Failed"
            )
        except ApiException as exc:
            log.warning("cannot count free GPUs: %s", _api_error("listing nodes and pods", exc))
            self.knows_whole_pool = False  # a SKU left out may well be there
            return {"cpu": -1}
        self.knows_whole_pool = True
        return free_gpus(
            [self._json(n) for n in nodes.items],
            [self._json(p) for p in pods.items],
            self._settings.kubernetes_cpu_replica_cpu,
        )

    def takes(self, spec: DeploymentSpec, engine_name: str) -> tuple[str, int]:
        # A Pod asks for its accelerator's GPUs whatever the engine: CPU engines too.
        return pool_units(spec.accelerator)

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None
            self._core = None
