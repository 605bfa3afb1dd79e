"""The kubernetes backend's manifests, rendered without a cluster and checked against the
Kubernetes schemas (kubernetes-validate, strict: unknown fields are errors) for every
accelerator of the catalogue, with an engine of the wakegate image and one with its own."""

from __future__ import annotations

import base64
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from scaler.backends import create_backend
from scaler.backends.kubernetes import (
    DEPLOYMENT_ANNOTATION,
    GPU_PRODUCT_LABEL,
    MANAGED_BY_LABEL,
    REPLICA_ANNOTATION,
    KubernetesBackend,
    free_gpus,
    launch_plan,
    pending_reason,
    placement,
    render_pod,
    render_secret,
    replica_from_pod,
    secret_name,
    unschedulable,
)
from scaler.backends.kubernetes_launch import LAUNCH_ENV, build, spec_in_pod
from scaler.engines import LaunchPlan
from scaler.engines.llamacpp import LlamaCppEngine
from scaler.engines.sim import SimEngine
from wakegate.catalog import ACCELERATORS
from wakegate.engines import EngineRefused
from wakegate.settings import Settings
from wakegate.spec import DeploymentConfig, DeploymentSpec

# The oldest release still common in managed clusters, and the newest the package knows.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version() + ".0")
TOKEN = "hf_test_5ecret_t0ken_value"
SETTINGS = Settings(kubernetes_namespace="llm", kubernetes_wakegate_image="wakegate:1.2.3")

# Written out here rather than read from the module: the GPU feature discovery product name
# each accelerator must select (NVML's name with dashes), and the GPUs it asks for.
EXPECTED_PRODUCT = {
    "a10_24gb_100": "NVIDIA-A10G",
    "a10_24gb_400": "NVIDIA-A10G",
    "l4_24gb_100": "NVIDIA-L4",
    "l40s_48gb_100": "NVIDIA-L40S",
    "a100_80gb_100": "NVIDIA-A100-SXM4-80GB",
    "a100_80gb_200": "NVIDIA-A100-SXM4-80GB",
    "h100_80gb_pcie_100": "NVIDIA-H100-PCIe",
    "h100_80gb_sxm_100": "NVIDIA-H100-80GB-HBM3",
}
EXPECTED_GPUS = {
    "cpu": 0,
    "a10_24gb_100": 1,
    "a10_24gb_400": 4,
    "l4_24gb_100": 1,
    "l40s_48gb_100": 1,
    "a100_80gb_100": 1,
    "a100_80gb_200": 2,
    "h100_80gb_pcie_100": 1,
    "h100_80gb_sxm_100": 1,
}


@dataclass(frozen=True)
class OwnImageEngine:
    """An engine that runs from its own image, like the vLLM profile: its plan carries the
    token as a secret variable."""

    name: str = "vllm"
    dialect: str = "openai"
    health_path: str = "/health"
    concurrency: int = 16
    cheap_logprobs: bool = True
    image: str = "vllm/vllm-openai:v0.6.3"

    def launch(
        self,
        spec: DeploymentSpec,
        host: str,
        port: int,
        models_dir: Path,
        adapters: dict[str, Path],
        api_key: str | None = None,
    ) -> LaunchPlan:
        argv = ["vllm", "serve", "org/model", "--host", host, "--port", str(port)]
        argv += ["--download-dir", str(models_dir)]
        env = {"VLLM_LOGGING_LEVEL": "INFO", "HUGGING_FACE_HUB_TOKEN": spec.config.hf_token or ""}
        return LaunchPlan(argv, env, frozenset({"HUGGING_FACE_HUB_TOKEN"}))


ENGINES = {"llamacpp": LlamaCppEngine(), "vllm": OwnImageEngine()}


def make_spec(accelerator: str, tenant: str = "acme", name: str = "chat", **config: Any) -> Any:
    cfg = {"base_model": "gemma-3-270m", "accelerator": accelerator, "hf_token": TOKEN, **config}
    return DeploymentSpec(
        tenant, name, "uuid-1", "a test", DeploymentConfig.from_dict(cfg), "ready", 3, 0.0, 0.0
    )


def rendered(accelerator: str, engine: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    spec = make_spec(accelerator)
    plan = launch_plan(spec, ENGINES[engine], SETTINGS)
    pod = render_pod(spec, "chat-0a1b2c3d", ENGINES[engine], plan, SETTINGS)
    return pod, render_secret(spec, plan, SETTINGS.kubernetes_namespace)


def container(pod: dict[str, Any]) -> dict[str, Any]:
    (c,) = pod["spec"]["containers"]
    return c  # type: ignore[no-any-return]


def env_of(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(pod)["env"]}


LABEL_NAME = re.compile(r"^[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
DNS_SUBDOMAIN = re.compile(
    r"^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*$"
)
DNS_LABEL = re.compile(r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$")


def assert_valid_labels(labels: dict[str, str]) -> None:
    """Kubernetes label syntax, which the JSON schemas do not check."""
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if prefix:
            assert len(prefix) <= 253 and DNS_SUBDOMAIN.match(prefix), key
        assert LABEL_NAME.match(name), key
        assert value == "" or (len(value) <= 63 and LABEL_NAME.match(value)), (key, value)


ALL = [(acc, engine) for acc in ACCELERATORS for engine in ENGINES]


@pytest.mark.parametrize(("accelerator", "engine"), ALL, ids=[f"{a}-{e}" for a, e in ALL])
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_pod_and_secret_validate_against_the_kubernetes_schemas(
    accelerator: str, engine: str, version: str
) -> None:
    pod, secret = rendered(accelerator, engine)
    assert secret is not None
    kubernetes_validate.validate(pod, version, strict=True)
    kubernetes_validate.validate(secret, version, strict=True)


def test_the_catalogue_is_covered() -> None:
    assert set(EXPECTED_GPUS) == set(ACCELERATORS)


@pytest.mark.parametrize("accelerator", list(ACCELERATORS), ids=list(ACCELERATORS))
def test_gpus_node_affinity_and_toleration_follow_the_accelerator(accelerator: str) -> None:
    pod, _ = rendered(accelerator, "vllm")
    spec, c = pod["spec"], container(pod)
    gpus = EXPECTED_GPUS[accelerator]
    assert gpus == ACCELERATORS[accelerator].gpu_count
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    if gpus == 0:
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
        assert "affinity" not in spec and "tolerations" not in spec
        assert "/dev/shm" not in mounts
        return
    assert c["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
    assert c["resources"]["requests"]["nvidia.com/gpu"] == str(gpus)
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    by_key = {t["matchExpressions"][0]["key"]: t["matchExpressions"][0] for t in terms}
    assert all(len(t["matchExpressions"]) == 1 for t in terms)
    product = by_key[GPU_PRODUCT_LABEL]
    assert product["operator"] == "In"
    assert EXPECTED_PRODUCT[accelerator] in product["values"]
    # Each term names GPUs of this accelerator only.
    other = {p for a, p in EXPECTED_PRODUCT.items() if p != EXPECTED_PRODUCT[accelerator]}
    assert not other & set(product["values"])
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert "/dev/shm" in mounts
    (dshm,) = [v for v in spec["volumes"] if v["name"] == "dshm"]
    assert dshm["emptyDir"] == {"medium": "Memory"}


@pytest.mark.parametrize(("accelerator", "engine"), ALL, ids=[f"{a}-{e}" for a, e in ALL])
def test_the_token_is_in_the_secret_and_never_in_the_pod(accelerator: str, engine: str) -> None:
    pod, secret = rendered(accelerator, engine)
    serialized = json.dumps(pod)
    assert TOKEN not in serialized
    assert base64.b64encode(TOKEN.encode()).decode() not in serialized
    assert secret is not None
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded["HF_TOKEN"] == TOKEN
    env = env_of(pod)
    secret_vars = {"HF_TOKEN"} | ({"HUGGING_FACE_HUB_TOKEN"} if engine == "vllm" else set())
    assert set(decoded) == secret_vars
    for var in secret_vars:
        assert env[var] == {
            "name": var,
            "valueFrom": {"secretKeyRef": {"name": secret["metadata"]["name"], "key": var}},
        }
        assert decoded[var] == TOKEN


def test_a_deployment_without_secrets_has_no_secret() -> None:
    spec = make_spec("cpu", hf_token=None)
    plan = launch_plan(spec, LlamaCppEngine(), SETTINGS)
    assert render_secret(spec, plan, "llm") is None
    pod = render_pod(spec, "chat-1", LlamaCppEngine(), plan, SETTINGS)
    assert "HF_TOKEN" not in env_of(pod)


def test_labels_are_valid_and_annotations_keep_the_exact_ids() -> None:
    tenant, name = "t" * 63, "d" * 62 + "x"
    spec = make_spec("l4_24gb_100", tenant=tenant, name=name)
    replica_id = f"{name}-0a1b2c3d"  # 72 characters: too long for a label or a Pod name
    plan = launch_plan(spec, ENGINES["vllm"], SETTINGS)
    pod = render_pod(spec, replica_id, ENGINES["vllm"], plan, SETTINGS)
    meta = pod["metadata"]
    assert_valid_labels(meta["labels"])
    assert meta["labels"][MANAGED_BY_LABEL] == "wakegate"
    assert meta["labels"]["app.kubernetes.io/name"] == "vllm"
    assert meta["labels"]["wakegate.dev/revision"] == "3"
    assert meta["labels"]["wakegate.dev/tenant"] == tenant
    assert meta["labels"]["wakegate.dev/deployment"] == name
    assert meta["annotations"][DEPLOYMENT_ANNOTATION] == f"{tenant}/{name}"
    assert meta["annotations"][REPLICA_ANNOTATION] == replica_id
    assert DNS_LABEL.match(meta["name"]) and meta["name"].startswith(name[:40])
    secret = render_secret(spec, plan, "llm")
    assert secret is not None
    assert_valid_labels(secret["metadata"]["labels"])
    assert DNS_SUBDOMAIN.match(secret["metadata"]["name"])
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)


@pytest.mark.parametrize("accelerator", list(ACCELERATORS), ids=list(ACCELERATORS))
def test_labels_are_valid_for_every_accelerator(accelerator: str) -> None:
    for engine in ENGINES:
        pod, secret = rendered(accelerator, engine)
        assert_valid_labels(pod["metadata"]["labels"])
        assert secret is not None
        assert_valid_labels(secret["metadata"]["labels"])
        assert pod["metadata"]["labels"]["wakegate.dev/accelerator"] == accelerator


def test_secret_names_differ_when_dashes_move_between_tenant_and_name() -> None:
    assert secret_name(make_spec("cpu", tenant="a-b", name="c")) != secret_name(
        make_spec("cpu", tenant="a", name="b-c")
    )


def test_an_own_image_engine_runs_its_argv_and_env_in_its_image() -> None:
    pod, _ = rendered("a100_80gb_200", "vllm")
    c = container(pod)
    assert c["image"] == "vllm/vllm-openai:v0.6.3"
    assert [*c["command"], *c["args"]] == [
        "vllm",
        "serve",
        "org/model",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--download-dir",
        "/models",
    ]
    assert env_of(pod)["VLLM_LOGGING_LEVEL"] == {"name": "VLLM_LOGGING_LEVEL", "value": "INFO"}
    assert env_of(pod)["WAKEGATE_REPLICA_ID"]["value"] == "chat-0a1b2c3d"
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for probe in ("readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    # Loading may take as long as the scaler waits for a replica.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["terminationGracePeriodSeconds"] > 0


def test_a_wakegate_engine_builds_its_plan_in_the_pod() -> None:
    """llama.cpp assembles its weights where it runs: the Pod runs the launcher with the spec,
    whose secrets stay in the Secret and come back from the environment."""
    pod, _ = rendered("cpu", "llamacpp")
    c = container(pod)
    assert c["image"] == "wakegate:1.2.3"
    assert [*c["command"], *c["args"]] == ["python", "-m", "scaler.backends.kubernetes_launch"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v1/models"
    payload = json.loads(env_of(pod)[LAUNCH_ENV]["value"])
    assert payload["engine"] == "llamacpp"
    assert (payload["host"], payload["port"], payload["models_dir"]) == ("0.0.0.0", 8000, "/models")
    assert "hf_token" not in payload["spec"]["config"]
    restored = spec_in_pod(payload, {"HF_TOKEN": TOKEN})
    assert restored == make_spec("cpu")
    assert spec_in_pod(payload, {}).config.hf_token is None


def test_the_launcher_reports_a_refusal_of_the_engine(tmp_path: Path) -> None:
    spec = make_spec("cpu", base_model="sim-llm")
    plan = launch_plan(spec, SimEngine(), SETTINGS)
    payload = json.loads(plan.env[LAUNCH_ENV])
    payload["models_dir"] = str(tmp_path / "models")
    with pytest.raises(EngineRefused, match="sim backend"):
        build(payload, {})


def test_a_plan_made_here_names_the_images_python() -> None:
    spec = make_spec("cpu")
    plan = LaunchPlan([sys.executable, "-m", "llama_cpp.server", "--port", "8000"])
    pod = render_pod(spec, "chat-1", LlamaCppEngine(), plan, SETTINGS)
    c = container(pod)
    assert c["command"] == ["python"]
    assert c["args"] == ["-m", "llama_cpp.server", "--port", "8000"]


def test_own_image_engines_cannot_preload_adapters_yet() -> None:
    spec = make_spec("l4_24gb_100", preloaded_adapters=["org/adapter/1"])
    with pytest.raises(EngineRefused) as info:
        launch_plan(spec, OwnImageEngine(), SETTINGS)
    assert info.value.field == "config.preloadedAdapters"
    # The wakegate image resolves them in the Pod, from WAKEGATE_ADAPTER_URL.
    settings = Settings(adapter_url="https://example.org/{id}.gguf")
    plan = launch_plan(spec, LlamaCppEngine(), settings)
    assert json.loads(plan.env[LAUNCH_ENV])["adapter_url"] == "https://example.org/{id}.gguf"


def test_unknown_accelerators_are_refused() -> None:
    with pytest.raises(EngineRefused):
        placement("tpu_v5e_100")


def test_a_models_pvc_replaces_the_empty_dir() -> None:
    settings = Settings(kubernetes_models_pvc="wakegate-models")
    spec = make_spec("cpu")
    pod = render_pod(
        spec, "chat-1", LlamaCppEngine(), launch_plan(spec, LlamaCppEngine(), settings), settings
    )
    (models,) = [v for v in pod["spec"]["volumes"] if v["name"] == "models"]
    assert models == {"name": "models", "persistentVolumeClaim": {"claimName": "wakegate-models"}}
    kubernetes_validate.validate(pod, K8S_VERSIONS[0], strict=True)


def with_status(pod: dict[str, Any], **status: Any) -> dict[str, Any]:
    return {**pod, "metadata": {**pod["metadata"], "uid": "u-1"}, "status": status}


def test_a_listed_pod_reads_back_as_the_replica_it_runs() -> None:
    pod, _ = rendered("l4_24gb_100", "vllm")
    running = replica_from_pod(with_status(pod, phase="Running", podIP="10.1.2.3"))
    assert running is not None
    assert (running.replica_id, running.deployment, running.revision) == (
        "chat-0a1b2c3d",
        "acme/chat",
        3,
    )
    assert running.url == "http://10.1.2.3:8000"
    assert running.alive
    assert running.handle["pod"] == pod["metadata"]["name"]
    assert running.handle["namespace"] == "llm"

    pending = replica_from_pod(with_status(pod, phase="Pending"))
    assert pending is not None and pending.alive and pending.url == ""
    ipv6 = replica_from_pod(with_status(pod, phase="Running", podIP="fd00::7"))
    assert ipv6 is not None and ipv6.url == "http://[fd00::7]:8000"

    failed = with_status(
        pod,
        phase="Failed",
        podIP="10.1.2.3",
        containerStatuses=[{"state": {"terminated": {"reason": "Error", "message": "OOM\n"}}}],
    )
    dead = replica_from_pod(failed)
    assert dead is not None and not dead.alive and dead.handle["exit"] == "OOM"
    deleting = with_status(pod, phase="Running", podIP="10.1.2.3")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    gone = replica_from_pod(deleting)
    assert gone is not None and not gone.alive
    bad_image = with_status(
        pod,
        phase="Pending",
        containerStatuses=[{"state": {"waiting": {"reason": "InvalidImageName"}}}],
    )
    stuck = replica_from_pod(bad_image)
    assert stuck is not None and not stuck.alive

    foreign = {**pod, "metadata": {**pod["metadata"], "annotations": {}}}
    assert replica_from_pod(foreign) is None


def test_pending_reason_says_why_a_pod_waits() -> None:
    unschedulable = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ],
        }
    }
    assert "Insufficient nvidia.com/gpu" in pending_reason(unschedulable)


GPU_SHORT = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."


def scheduled(status: str, reason: str | None = None, message: str | None = None) -> Any:
    condition = {"type": "PodScheduled", "status": status}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return {"status": {"phase": "Pending", "conditions": [condition]}}


@pytest.mark.parametrize(
    ("pod", "no_node"),
    [
        (scheduled("False", "Unschedulable", GPU_SHORT), GPU_SHORT),
        (scheduled("False", "Unschedulable"), "Unschedulable"),
        (scheduled("True"), None),
        (scheduled("False", "SchedulingGated", "waiting on a gate"), None),
        ({"status": {"phase": "Pending"}}, None),
        ({}, None),
        (
            {
                "status": {
                    "phase": "Pending",
                    "conditions": [
                        {"type": "Ready", "status": "False", "reason": "Unschedulable"},
                        {"type": "PodScheduled", "status": "True"},
                    ],
                }
            },
            None,
        ),
    ],
    ids=[
        "no-node-has-room-gives-the-schedulers-message",
        "unschedulable-without-a-message-says-so",
        "scheduled-pod-is-not",
        "gated-pod-waits-for-its-gate-not-for-room",
        "pod-the-scheduler-has-not-looked-at-yet-is-not",
        "pod-without-a-status-is-not",
        "only-the-pod-scheduled-condition-counts",
    ],
)
def test_unschedulable_pods_are_told_apart(pod: dict[str, Any], no_node: str | None) -> None:
    assert unschedulable(pod) == no_node


def test_cpu_replicas_take_the_settings_cpu_and_memory() -> None:
    pod, _ = rendered("cpu", "llamacpp")
    amounts = {"cpu": "2", "memory": "4Gi"}
    assert container(pod)["resources"] == {"requests": amounts, "limits": amounts}
    settings = Settings(kubernetes_cpu_replica_cpu="500m", kubernetes_cpu_replica_memory="1Gi")
    spec = make_spec("cpu")
    plan = launch_plan(spec, LlamaCppEngine(), settings)
    pod = render_pod(spec, "chat-1", LlamaCppEngine(), plan, settings)
    assert container(pod)["resources"]["limits"] == {"cpu": "500m", "memory": "1Gi"}


@pytest.mark.parametrize(("accelerator", "engine"), ALL, ids=[f"{a}-{e}" for a, e in ALL])
def test_replica_pods_run_unprivileged_with_cpu_memory_and_gpu_limits(
    accelerator: str, engine: str
) -> None:
    pod, _ = rendered(accelerator, engine)
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(pod)
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # The read-only root leaves /models and /tmp (HOME) writable.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert {"/models", "/tmp"} <= set(mounts)
    assert env_of(pod)["HOME"] == {"name": "HOME", "value": "/tmp"}
    resources = c["resources"]
    assert resources["requests"] == resources["limits"], "a Guaranteed Pod"
    assert {"cpu", "memory"} <= set(resources["limits"])
    gpus = EXPECTED_GPUS[accelerator]
    assert resources["limits"].get("nvidia.com/gpu", "0") == str(gpus)
    if gpus:
        memory_gib = ACCELERATORS[accelerator].memory_gib * gpus
        assert resources["limits"]["memory"] == f"{memory_gib}Gi"
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)


KEY = "replica-key-Zm9vYmFyYmF6cXV4cXV1eA"


@pytest.mark.parametrize(
    ("engine_name", "key_var", "probe"),
    [("llamacpp", "WAKEGATE_REPLICA_KEY", "tcpSocket"), ("vllm", "VLLM_API_KEY", "httpGet")],
    ids=["wakegate-image-llamacpp", "own-image-vllm"],
)
def test_the_replica_key_comes_from_the_replicas_own_secret_never_the_pod(
    engine_name: str, key_var: str, probe: str
) -> None:
    from scaler.backends.kubernetes import render_replica_secret, replica_secret_name
    from scaler.engines import get_engine

    model = "gemma-3-270m" if engine_name == "llamacpp" else "qwen3-8b"
    accelerator = "cpu" if engine_name == "llamacpp" else "l4_24gb_100"
    spec = make_spec(accelerator, base_model=model)
    engine = get_engine(engine_name, spec=spec)
    plan = launch_plan(spec, engine, SETTINGS, KEY)
    pod = render_pod(spec, "chat-0a1b2c3d", engine, plan, SETTINGS, KEY)
    deployment_secret = render_secret(spec, plan, "llm", KEY)
    replica_secret = render_replica_secret(spec, "chat-0a1b2c3d", KEY, "llm")
    for manifest in (pod, deployment_secret):
        assert KEY not in json.dumps(manifest)
        assert base64.b64encode(KEY.encode()).decode() not in json.dumps(manifest)
    ref = {"name": replica_secret_name("chat-0a1b2c3d"), "key": "api-key"}
    assert env_of(pod)[key_var] == {"name": key_var, "valueFrom": {"secretKeyRef": ref}}
    assert replica_secret["metadata"]["name"] == ref["name"]
    assert base64.b64decode(replica_secret["data"]["api-key"]).decode() == KEY
    assert_valid_labels(replica_secret["metadata"]["labels"])
    # The kubelet's probes cannot carry the key: engines that guard their health path get a
    # TCP probe.
    c = container(pod)
    assert probe in c["readinessProbe"] and probe in c["startupProbe"]
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
        kubernetes_validate.validate(replica_secret, version, strict=True)


def test_the_pod_launcher_hands_the_key_to_llamacpp_as_its_api_key(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    from wakegate.catalog import MODELS, ModelEntry

    MODELS["tiny-gguf"] = ModelEntry("tiny-gguf", "llamacpp", str(gguf), 8192, "cpu")
    try:
        spec = make_spec("cpu", base_model="tiny-gguf", hf_token=None)
        plan = launch_plan(spec, LlamaCppEngine(), SETTINGS, KEY)
        payload = json.loads(plan.env[LAUNCH_ENV])
        payload["models_dir"] = str(tmp_path / "models")
        built = build(payload, {"WAKEGATE_REPLICA_KEY": KEY})
    finally:
        del MODELS["tiny-gguf"]
    assert built.env == {"API_KEY": KEY}
    assert KEY not in built.argv


NETWORK_POLICY = (
    Path(__file__).resolve().parent.parent / "deploy" / "kubernetes" / "networkpolicy.yaml"
)


def test_the_network_policy_admits_only_gateways_and_scalers_to_replica_pods() -> None:
    (policy,) = [d for d in yaml.safe_load_all(NETWORK_POLICY.read_text()) if d]
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(policy, version, strict=True)
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    # It selects every replica Pod the backend renders...
    for engine in ENGINES:
        pod, _ = rendered("l4_24gb_100", engine)
        labels = pod["metadata"]["labels"]
        assert spec["podSelector"]["matchLabels"].items() <= labels.items()
    # ...and admits only gateway and scaler Pods, on the engine port.
    (rule,) = spec["ingress"]
    components = {
        p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in rule["from"]
    }
    assert components == {"gateway", "scaler"}
    assert all("namespaceSelector" not in p for p in rule["from"])
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]


def test_the_network_policy_lets_replicas_reach_dns_and_outside_https_only() -> None:
    """Review 2026-12b, finding 12: replicas (tenant-chosen weights) could reach Redis, the
    broker, the Kubernetes API and the cloud metadata endpoint."""
    (policy,) = [d for d in yaml.safe_load_all(NETWORK_POLICY.read_text()) if d]
    dns, https = policy["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    (dns_peer,) = dns["to"]
    assert dns_peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert https["ports"] == [{"protocol": "TCP", "port": 443}]
    (outside,) = https["to"]
    block = outside["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0"
    for private in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"):
        assert private in block["except"]


@pytest.mark.parametrize(
    ("accelerator", "engine", "takes"),
    [
        ("cpu", "llamacpp", ("cpu", 1)),
        ("a10_24gb_400", "vllm", ("a10_24gb", 4)),
        ("l4_24gb_100", "llamacpp", ("l4_24gb", 1)),
    ],
    ids=["cpu-takes-a-cpu-slot", "four-gpus-take-four", "a-cpu-engine-on-a-gpu-takes-the-gpu"],
)
def test_a_replica_takes_its_accelerators_gpus(
    accelerator: str, engine: str, takes: tuple[str, int]
) -> None:
    backend = create_backend(Settings(backend="kubernetes"))
    assert backend.takes(make_spec(accelerator), engine) == takes


def node(name: str, labels: dict[str, str], gpus: int, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "32"}},
    }


def gpu_pod(node_name: str, gpus: int, phase: str = "Running") -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return {
        "spec": {"nodeName": node_name, "containers": [{"resources": resources}]},
        "status": {"phase": phase},
    }


def test_free_gpus_are_allocatable_less_requested_by_sku() -> None:
    nodes = [
        node("a", {GPU_PRODUCT_LABEL: "NVIDIA-A10G"}, 4),
        node("b", {GPU_PRODUCT_LABEL: "NVIDIA-A10"}, 1),
        node("c", {"cloud.google.com/gke-accelerator": "nvidia-l4"}, 2),
        node("d", {GPU_PRODUCT_LABEL: "NVIDIA-H100-80GB-HBM3"}, 8, unschedulable=True),
        node("e", {GPU_PRODUCT_LABEL: "Tesla-T4"}, 1),
        node("f", {}, 0),
    ]
    pods = [gpu_pod("a", 3), gpu_pod("a", 2, "Succeeded"), gpu_pod("c", 2), gpu_pod("f", 0)]
    free = free_gpus(nodes, pods, "2")
    assert {k: v for k, v in free.items() if k != "cpu"} == {"a10_24gb": 2, "l4_24gb": 0}


def cpu_pod(node_name: str, cpu: str, phase: str = "Running") -> dict[str, Any]:
    resources = {"requests": {"cpu": cpu}, "limits": {"cpu": cpu}}
    return {
        "spec": {"nodeName": node_name, "containers": [{"resources": resources}]},
        "status": {"phase": phase},
    }


CPU_CAPACITY = [
    ("an-empty-cluster-holds-no-cpu-replica", [], [], "2", 0),
    ("allocatable-cpu-over-the-replica-request", [node("a", {}, 0)], [], "2", 16),
    ("requests-of-running-pods-are-used", [node("a", {}, 0)], [cpu_pod("a", "7")], "2", 12),
    ("finished-pods-free-their-cpu", [node("a", {}, 0)],
     [cpu_pod("a", "30", "Succeeded")], "2", 16),
    ("millicores-on-both-sides", [node("a", {}, 0)], [cpu_pod("a", "1500m")], "500m", 61),
    ("counted-node-by-node-no-replica-spans-two", [node("a", {}, 0), node("b", {}, 0)],
     [cpu_pod("a", "31"), cpu_pod("b", "31")], "2", 0),
    ("unschedulable-nodes-hold-none", [node("a", {}, 0, unschedulable=True)], [], "2", 0),
    ("gpu-nodes-hold-cpu-replicas-too",
     [node("g", {GPU_PRODUCT_LABEL: "NVIDIA-A10G"}, 1)], [], "4", 8),
]  # fmt: skip


@pytest.mark.parametrize(
    ("nodes", "pods", "per_replica", "expected"),
    [c[1:] for c in CPU_CAPACITY],
    ids=[c[0] for c in CPU_CAPACITY],
)
def test_cpu_capacity_is_unrequested_cpu_over_the_replica_request(
    nodes: list[dict[str, Any]], pods: list[dict[str, Any]], per_replica: str, expected: int
) -> None:
    """Review 2026-12b, finding 3: `cpu` was reported unlimited (-1)."""
    assert free_gpus(nodes, pods, per_replica)["cpu"] == expected


def test_the_registry_builds_the_backend_without_touching_a_cluster() -> None:
    backend = create_backend(Settings(backend="kubernetes"))
    assert isinstance(backend, KubernetesBackend)
    assert backend.name == "kubernetes"


RBAC = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes" / "rbac.yaml"


def test_the_rbac_manifests_validate() -> None:
    docs = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    assert {d["kind"] for d in docs} >= {"ServiceAccount", "Role", "RoleBinding"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)
    (role,) = [d for d in docs if d["kind"] == "Role"]
    verbs = {r["resources"][0]: set(r["verbs"]) for r in role["rules"]}
    assert verbs == {"pods": {"create", "get", "list", "delete"}, "secrets": {"create", "patch"}}


@pytest.mark.parametrize("engine_name", ["vllm", "lorax", "tgi"])
def test_gpu_engine_profiles_render_valid_pods_with_hub_adapters_and_secret_token(
    engine_name: str,
) -> None:
    from scaler.engines import get_engine

    spec = make_spec(
        "a100_80gb_200",
        base_model="qwen3-8b",
        preloaded_adapters=["acme/sql-lora"],
        hf_token="hf_secret_value",
    )
    engine = get_engine(engine_name, spec=spec)
    plan = launch_plan(spec, engine, SETTINGS)
    pod = render_pod(spec, "chat-7", engine, plan, SETTINGS)
    kubernetes_validate.validate(pod, K8S_VERSIONS[0], strict=True)
    c = container(pod)
    assert c["image"] == engine.image and c["image"] != SETTINGS.kubernetes_wakegate_image
    assert "acme/sql-lora" in " ".join(c["command"] + c.get("args", []))
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "2"
    assert "hf_secret_value" not in json.dumps(pod)
