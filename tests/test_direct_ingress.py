"""Direct ingress: a deployment with `directIngress: true` is served on the gateway's private
listener only; on the public one its data plane answers as a deployment that does not exist,
while its management stays there. Real gateway, real llama.cpp replica (gemma-3-270m), the
real Predibase SDK and lorax-client.
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml
from click.testing import CliRunner
from harness import ROOT, Proc, Stack, wait_until
from lorax import Client as LoraxClient

from wakegate.procs import free_port
from wakegate.settings import SettingsError, load_settings
from wakegate.tools.cli import main as cli_main

GENERATE = {"inputs": "The capital of France is", "parameters": {"max_new_tokens": 4}}
MISSING = "no-such-deployment"


def dep_path(stack: Stack, name: str) -> str:
    return f"/{stack.tenant}/deployments/v2/llms/{name}"


def data_plane_calls(stack: Stack, name: str) -> list[tuple[str, str, Any]]:
    """(method, path, JSON body) of every data-plane call that names deployment `name`."""
    dep = dep_path(stack, name)
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return [
        ("POST", dep, GENERATE),
        ("POST", dep + "/generate", GENERATE),
        ("POST", dep + "/generate_stream", GENERATE),
        ("POST", dep + "/async", GENERATE),
        ("GET", dep + "/async/0123456789abcdef0123456789abcdef", None),
        ("GET", dep + "/v1/models", None),
        ("POST", dep + "/v1/completions", {"prompt": "hi", "max_tokens": 4}),
        ("POST", dep + "/v1/chat/completions", chat),
        ("POST", "/v1/completions", {"model": name, "prompt": "hi", "max_tokens": 4}),
        ("POST", "/v1/chat/completions", {"model": name, **chat}),
        ("POST", "/v1/chat/completions", {"model": f"{name}/some-adapter", **chat}),
    ]


def call(stack: Stack, base: str, method: str, path: str, body: Any) -> httpx.Response:
    return httpx.request(method, base + path, headers=stack.headers, json=body, timeout=120)


def model_ids(stack: Stack, base: str) -> list[str]:
    r = httpx.get(base + "/v1/models", headers=stack.headers, timeout=30)
    assert r.status_code == 200, r.text
    return [m["id"] for m in r.json()["data"]]


def assert_hidden_on_public(stack: Stack, name: str) -> None:
    """Every data-plane call for `name` on the public listener answers what the same call
    for a deployment that does not exist answers (its name in place of the other's)."""
    for (method, path, body), (_, missing_path, missing_body) in zip(
        data_plane_calls(stack, name), data_plane_calls(stack, MISSING), strict=True
    ):
        got = call(stack, stack.base, method, path, body)
        unknown = call(stack, stack.base, method, missing_path, missing_body)
        assert got.status_code == unknown.status_code == 404, (path, got.text)
        assert got.headers["Content-Type"] == unknown.headers["Content-Type"]
        assert got.text == unknown.text.replace(MISSING, name), path
    assert name not in model_ids(stack, stack.base)


def cli(stack: Stack, *args: str) -> dict[str, Any]:
    """`wakegate ARGS --json` against the stack's public gateway, as its tenant."""
    env = {"WAKEGATE_URL": stack.base, "WAKEGATE_TOKEN": stack.token}
    out = CliRunner().invoke(cli_main, list(args), env=env, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    return dict(json.loads(out.stdout))


def put(stack: Stack, name: str, **config: Any) -> dict[str, Any]:
    r = stack.api("PUT", f"/v2/deployments/{name}", json={"config": config})
    assert r.status_code == 200, r.text
    return dict(r.json()["data"])


@pytest.fixture
def predibase_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    # The control plane stays the public listener: the SDK reads the deployment there.
    monkeypatch.setenv("PREDIBASE_GATEWAY", stack.base)
    monkeypatch.setenv("PREDIBASE_API_TOKEN", stack.token)
    monkeypatch.chdir(stack.tmp)  # no settings file of the developer's


def test_a_direct_ingress_deployment_is_served_on_the_private_listener_only(
    stack: Stack, name: str, predibase_env: None
) -> None:
    from predibase import Predibase

    created = stack.create(name, minReplicas=0, maxReplicas=1, cooldownTime=300,
                           directIngress=True)  # fmt: skip
    endpoint = {
        "servingUrl": stack.private_base,
        "url": stack.private_base + dep_path(stack, name),
    }
    assert created["config"]["directIngress"] is True
    assert created["privateEndpoint"] == endpoint

    # Served on the private listener: REST /generate wakes it from zero...
    r = call(stack, stack.private_base, "POST", dep_path(stack, name) + "/generate", GENERATE)
    assert r.status_code == 200, r.text
    assert r.json()["generated_text"].strip()
    # ...the Predibase SDK with the endpoint's serving base (its control-plane read of the
    # deployment goes to the public gateway)...
    pb = Predibase(api_token=stack.token)
    dep = pb.deployments.get(name)
    assert dep.config.direct_ingress is True
    client = pb.deployments.client(name, serving_url_override=endpoint["servingUrl"])
    with redirect_stdout(io.StringIO()):
        resp = client.generate("The capital of France is", max_new_tokens=6)
        streamed = list(client.generate_stream("Once upon a time", max_new_tokens=4))
    assert resp.generated_text.strip()
    assert any(s.generated_text for s in streamed)
    # ...lorax-client with the endpoint's URL, and the OpenAI routes of both base URLs.
    lorax = LoraxClient(endpoint["url"], headers=stack.headers, timeout=120)
    assert lorax.generate("The capital of France is", max_new_tokens=4).generated_text.strip()
    chat = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    r = call(stack, stack.private_base, "POST", "/v1/chat/completions", chat)
    assert r.status_code == 200, r.text
    assert name in model_ids(stack, stack.private_base)
    assert len(stack.replicas_started(name)) == 1

    # On the public listener it does not exist for the data plane...
    assert_hidden_on_public(stack, name)
    # ...while its management is there: get, list, update, events, request log.
    got = stack.api("GET", f"/v2/deployments/{name}")
    assert got.status_code == 200 and got.json()["data"]["privateEndpoint"] == endpoint
    listed = {d["name"]: d for d in stack.api("GET", "/v2/deployments").json()["data"]}
    assert listed[name]["privateEndpoint"] == endpoint
    assert put(stack, name, cooldownTime=240)["config"]["cooldownTime"] == 240
    events = stack.api("GET", f"/llms/{name}/events")
    assert events.status_code == 200 and events.json()["deploymentStatus"] == "ready"
    log = stack.api("GET", f"/v2/deployments/{name}/requests")
    assert log.status_code == 200

    # The private listener serves the data plane only: no control plane, operator or page
    # routes (404 as a path no route has), whatever the token; its tokens are checked.
    for method, path in [("GET", "/v2/deployments"), ("GET", f"/v2/deployments/{name}"),
                         ("DELETE", f"/v2/deployments/{name}"), ("GET", "/users/current"),
                         ("GET", f"/llms/{name}/events"), ("GET", "/v2/status"),
                         ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/ui"),
                         ("GET", "/admin/v1/quotas")]:  # fmt: skip
        r = httpx.request(method, stack.private_base + path, headers=stack.headers)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json() == {"error": f"no route {path}"}
    assert httpx.get(stack.private_base + "/healthz").status_code == 200
    anonymous = httpx.post(stack.private_base + dep_path(stack, name) + "/generate", json=GENERATE)
    assert anonymous.status_code == 401
    assert stack.api("GET", f"/v2/deployments/{name}").status_code == 200  # DELETE was refused

    # The CLI shows where it is served.
    out = CliRunner().invoke(
        cli_main, ["deployments", "get", name],
        env={"WAKEGATE_URL": stack.base, "WAKEGATE_TOKEN": stack.token},
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert endpoint["url"] in out.stdout and endpoint["servingUrl"] in out.stdout

    # Deleted through the public control plane: gone from the private listener too.
    assert stack.api("DELETE", f"/v2/deployments/{name}").status_code == 200
    r = call(stack, stack.private_base, "GET", dep_path(stack, name) + "/v1/models", None)
    assert r.status_code == 404


class Traffic:
    """Requests one after another on one listener until stopped; every answer is kept."""

    def __init__(self, stack: Stack, base: str, name: str) -> None:
        self.url = base + dep_path(stack, name) + "/generate"
        self.headers = stack.headers
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(headers=self.headers, timeout=120) as client:
            while not self._stop.is_set():
                self.statuses.append(client.post(self.url, json=GENERATE).status_code)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(150)


def stream_tokens(url: str, headers: dict[str, str], out: list[str]) -> None:
    body = {"inputs": "Count from 1 to 100: 1, 2, 3,", "parameters": {"max_new_tokens": 160}}
    with httpx.stream("POST", url, json=body, headers=headers, timeout=120) as r:
        out.append(str(r.status_code))
        for line in r.iter_lines():
            if line.startswith("data:"):
                out.append(line)


def test_turning_direct_ingress_on_and_off_keeps_the_replica_and_every_request_succeeds(
    stack: Stack, name: str
) -> None:
    stack.create(name, minReplicas=1, maxReplicas=1, cooldownTime=300)
    wait_until(lambda: stack.ready_replicas(name) == 1, 180, "its replica ready")
    replicas = set(stack.registry(name))
    started = stack.replicas_started(name)
    public = dep_path(stack, name) + "/generate"
    assert call(stack, stack.base, "POST", public, GENERATE).status_code == 200
    assert stack.api("GET", f"/v2/deployments/{name}").json()["data"]["privateEndpoint"] is None

    # The private listener serves every deployment: its traffic goes on throughout. A stream
    # that started on the public listener before the switch finishes.
    stream: list[str] = []
    streaming = threading.Thread(
        target=stream_tokens,
        args=(stack.base + dep_path(stack, name) + "/generate_stream", stack.headers, stream),
    )
    with Traffic(stack, stack.private_base, name) as private_traffic:
        streaming.start()
        wait_until(lambda: len(stream) > 2, 60, "the public stream's first tokens")
        # Turned on with the CLI (an update like any other), off below with the API.
        on = cli(stack, "deployments", "update", name, "--direct-ingress", "--json")
        assert streaming.is_alive()  # the stream is in flight across the switch
        assert on["status"] == "ready" and on["privateEndpoint"]["servingUrl"] == stack.private_base
        wait_until(
            lambda: call(stack, stack.base, "POST", public, GENERATE).status_code == 404,
            10, "the public listener to stop serving it",
        )  # fmt: skip
        streaming.join(120)
        assert_hidden_on_public(stack, name)
        wait_until(lambda: len(private_traffic.statuses) >= 3, 60, "private requests meanwhile")

        with Traffic(stack, stack.base, name) as public_traffic:
            off = put(stack, name, directIngress=False)
            assert off["status"] == "ready" and off["privateEndpoint"] is None
            wait_until(lambda: 200 in public_traffic.statuses, 30, "public requests served")
        # Once off, the public listener serves it from its next request on (before: 404).
        switched = public_traffic.statuses.index(200)
        assert set(public_traffic.statuses[:switched]) <= {404}
        assert set(public_traffic.statuses[switched:]) == {200}
    assert private_traffic.statuses and set(private_traffic.statuses) == {200}
    assert stream[0] == "200" and json.loads(stream[-1][5:])["generated_text"] is not None
    assert len(stream) > 20, len(stream)
    assert name in model_ids(stack, stack.base) and name in model_ids(stack, stack.private_base)

    # Neither switch touched the replica: the same one, never restarted.
    assert set(stack.registry(name)) == replicas
    assert stack.replicas_started(name) == started
    assert stack.replicas_running(name) == replicas
    stack.delete(name)


@pytest.fixture
def gateway_workers(stack: Stack) -> Iterator[tuple[str, str, Proc]]:
    """A second gateway of the shared stack: two worker processes on ports of its own."""
    port, private_port = free_port(), free_port()
    env = {**stack.env, "WAKEGATE_PORT": str(port), "WAKEGATE_PRIVATE_PORT": str(private_port)}
    proc = Proc("workers", [sys.executable, "-m", "router", "--workers", "2"],
                stack.tmp / "workers.log", env)  # fmt: skip
    proc.start()
    base, private = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{private_port}"
    try:
        wait_until(lambda: httpx.get(base + "/healthz").status_code == 200, 60, "workers")
        yield base, private, proc
    finally:
        proc.stop()


def listening_ports(pid: int) -> set[int]:
    conns = psutil.Process(pid).net_connections(kind="tcp")
    return {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN}


def test_every_gateway_worker_serves_the_private_listener(
    stack: Stack, name: str, gateway_workers: tuple[str, str, Proc]
) -> None:
    base, private, proc = gateway_workers
    assert proc.p is not None
    ports = {int(base.rsplit(":", 1)[1]), int(private.rsplit(":", 1)[1])}
    workers = psutil.Process(proc.p.pid).children()
    assert len(workers) == 2
    wait_until(lambda: all(listening_ports(w.pid) == ports for w in workers), 30,
               "both workers listening on both ports")  # fmt: skip
    stack.create(name, minReplicas=0, maxReplicas=1, directIngress=True)
    models = dep_path(stack, name) + "/v1/models"
    for _ in range(8):  # connections spread over the workers
        assert call(stack, private, "GET", models, None).status_code == 200
        assert call(stack, base, "GET", models, None).status_code == 404
    stack.delete(name)


def test_without_a_private_listener_direct_ingress_is_refused_and_nothing_changes(
    make_stack: Callable[..., Stack], name: str
) -> None:
    stack = make_stack(backend="sim", private_port="none")
    cfg = {"baseModel": "gemma-3-270m", "directIngress": True}
    r = stack.api("POST", "/v2/deployments", json={"name": name, "config": cfg})
    assert r.status_code == 400
    assert r.json()["field"] == "config.directIngress"
    assert stack.api("GET", f"/v2/deployments/{name}").status_code == 404
    stack.create(name)
    r = stack.api("PUT", f"/v2/deployments/{name}", json={"config": {"directIngress": True}})
    assert r.status_code == 400 and r.json()["field"] == "config.directIngress"
    dep = stack.api("GET", f"/v2/deployments/{name}").json()["data"]
    assert dep["config"].get("directIngress") is None and dep["privateEndpoint"] is None
    # A value of the wrong type is the API's ordinary 400, naming the field.
    r = stack.api("PUT", f"/v2/deployments/{name}", json={"config": {"directIngress": "yes"}})
    assert r.status_code == 400 and r.json()["field"] == "config.directIngress"


def test_the_private_endpoint_is_the_bind_address_unless_an_advertised_url_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("WAKEGATE_PRIVATE_HOST", "WAKEGATE_PRIVATE_PORT", "WAKEGATE_CONFIG",
                "WAKEGATE_PRIVATE_ADVERTISE_URL"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    assert load_settings().private_url() == "http://127.0.0.1:8082"
    monkeypatch.setenv("WAKEGATE_PRIVATE_HOST", "::1")
    monkeypatch.setenv("WAKEGATE_PRIVATE_PORT", "9000")
    assert load_settings().private_url() == "http://[::1]:9000"
    monkeypatch.setenv("WAKEGATE_PRIVATE_ADVERTISE_URL", "http://llm.ns.svc:8082/")
    assert load_settings().private_url() == "http://llm.ns.svc:8082"
    monkeypatch.setenv("WAKEGATE_PRIVATE_PORT", "none")
    assert load_settings().private_url() is None
    monkeypatch.setenv("WAKEGATE_PRIVATE_PORT", "70000")
    with pytest.raises(SettingsError, match="WAKEGATE_PRIVATE_PORT"):
        load_settings()
    monkeypatch.setenv("WAKEGATE_PRIVATE_PORT", "8082")
    monkeypatch.setenv("WAKEGATE_PRIVATE_ADVERTISE_URL", "llm.ns.svc:8082")
    with pytest.raises(SettingsError, match=r"WAKEGATE_PRIVATE_ADVERTISE_URL: .*http://"):
        load_settings()


def test_a_gateway_whose_private_port_is_its_public_one_stops_naming_both(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAKEGATE_")}
    env.update(WAKEGATE_PORT=str(port), WAKEGATE_PRIVATE_PORT=str(port),
               REDIS_URL="redis://127.0.0.1:9")  # fmt: skip
    proc = Proc("gateway", [sys.executable, "-m", "router"], tmp_path / "gw.log", env).start()
    assert proc.p is not None
    assert proc.p.wait(60) == 1
    assert "WAKEGATE_PRIVATE_PORT must differ from WAKEGATE_PORT" in proc.tail()


def test_compose_and_kubernetes_keep_the_private_listener_inside() -> None:
    import kubernetes_validate
    from test_kubernetes_render import K8S_VERSIONS

    gateway = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["gateway"]
    assert gateway["expose"] == ["8082"]
    assert gateway["environment"]["WAKEGATE_PRIVATE_PORT"] == "8082"
    assert not any("8082" in str(p) for p in gateway["ports"])  # never published on the host
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy/kubernetes/gateway-private.yaml")
                                          .read_text()) if d]  # fmt: skip
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [8082]
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    private_rule = next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 8082)
    assert private_rule["from"] == [{"namespaceSelector": {}}]  # Pods of the cluster only
