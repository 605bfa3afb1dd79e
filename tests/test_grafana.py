"""The Grafana dashboard (deploy/grafana/) asks only for series the gateway and the scaler export.

Every PromQL expression of the dashboard (panel targets and the `deployment` variable) is
parsed; each metric it selects must be a series that a running gateway's or scaler's /metrics
exposes (a family's name with the suffixes of its type: `_total` for counters, `_bucket`,
`_sum`, `_count` for histograms), and each label it matches on or aggregates by must be one
that series carries. The series come from a real sim stack that served a cold request, so
their labels are the ones the processes emit; families still without samples take their
labels from the metric definitions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from conftest import unused_database
from harness import Stack, wait_until
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from router.metrics import GatewayMetrics
from scaler.metrics import ScalerMetrics

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "wakegate.json"
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
FAST = ["--load-s", "0.2", "--ttft-s", "0.02", "--tps", "200", "--batch", "4"]

Exports = dict[str, frozenset[str]]  # series name -> its label names


# --- what the processes export ---------------------------------------------------------------


def defined_labels() -> dict[str, tuple[str, ...]]:
    """Label names of every metric the code defines, by family name."""
    labels: dict[str, tuple[str, ...]] = {}
    for owner in (GatewayMetrics(), ScalerMetrics()):
        for metric in vars(owner).values():
            if isinstance(metric, Counter | Gauge | Histogram):
                labels[metric._name] = tuple(metric._labelnames)
    return labels


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def series_of(metrics_text: str) -> Exports:
    """The series a /metrics page exposes, with their labels."""
    defined = defined_labels()
    exports: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics_text):
        if not family.name.startswith("wakegate_"):
            continue
        # A labelled family without samples yet: the series its type will have.
        for suffix in SUFFIXES.get(family.type, ("",)):
            base = set(defined.get(family.name, ()))
            exports.setdefault(family.name + suffix, set()).update(
                base | {"le"} if suffix == "_bucket" else base
            )
        for sample in family.samples:
            exports.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in exports.items()}


def metrics_page(stack: Stack, port: int) -> str:
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=stack.metrics_headers)
    assert r.status_code == 200, r.text
    return r.text


@pytest.fixture(scope="module")
def exports(infra: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exports]:
    """The series of a running gateway and scaler after one cold request to a deployment."""
    stack = Stack(
        tmp_path_factory.mktemp("grafana"),
        unused_database(infra),
        infra["mqtt_url"],
        backend="sim",
        sim_pool="a10_24gb=2,cpu=4",
    ).start()
    try:
        stack.create("dash", baseModel="sim-llm", customArgs=FAST, minReplicas=0, cooldownTime=600)
        assert stack.generate("dash").status_code == 200
        key = f'deployment="{stack.tenant}/dash"'
        # The scaler reports on its next pass: the replica it started and why.
        wait_until(
            lambda: (
                "wakegate_scaling_decisions_total{" in metrics_page(stack, stack.scaler_port)
                and f"wakegate_replicas{{{key}" in metrics_page(stack, stack.scaler_port)
            ),
            30,
            "the scaler's metrics of the deployment",
        )
        gateway = series_of(metrics_page(stack, stack.port))
        scaler = series_of(metrics_page(stack, stack.scaler_port))
        # The cold request left its series on the gateway.
        for series in ("wakegate_requests_total", "wakegate_time_to_first_token_seconds_bucket"):
            assert {"deployment"} <= gateway[series], series
        yield {**gateway, **scaler}
    finally:
        stack.stop()


# --- what the dashboard asks for -------------------------------------------------------------


def substitute(query: str) -> str:
    """Grafana's variables replaced by values PromQL parses: ranges for interval variables,
    a regex for the others (they stand in label values)."""
    return re.sub(
        r"\$\{?(\w+)\}?",
        lambda m: "5m" if m.group(1).startswith("__") else ".+",
        query,
    )


def children(node: Any) -> list[Any]:
    if isinstance(node, promql_parser.MatrixSelector):
        return [node.vector_selector]
    if isinstance(node, promql_parser.BinaryExpr):
        return [node.lhs, node.rhs]
    if isinstance(node, promql_parser.Call):
        return [a for a in node.args if isinstance(a, promql_parser.Expr)]
    if isinstance(
        node,
        promql_parser.AggregateExpr
        | promql_parser.ParenExpr
        | promql_parser.UnaryExpr
        | promql_parser.SubqueryExpr,
    ):
        return [node.expr]
    return []


def selectors(node: Any) -> Iterator[promql_parser.VectorSelector]:
    if isinstance(node, promql_parser.VectorSelector):
        yield node
    for child in children(node):
        yield from selectors(child)


def problems(query: str, exports: Exports) -> list[str]:
    """What in one PromQL expression names a series or a label the processes do not export."""
    found: list[str] = []

    def labels_of(node: Any, labels: set[str], why: str) -> None:
        # A label a node groups or matches by must be on every series under it.
        for sel in selectors(node):
            have = exports.get(sel.name or "", frozenset()) | TARGET_LABELS
            found.extend(
                f"{sel.name} has no label {lbl!r} ({why})" for lbl in sorted(labels - have)
            )

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name not in exports:
                found.append(f"no exported series {node.name!r}")
            else:
                used = {m.name for m in node.matchers.matchers} - {"__name__"}
                labels_of(node, used, "matcher")
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels_of(node.expr, set(node.modifier.labels), "by/without")
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            matching = node.modifier.matching
            if matching is not None:
                labels_of(node, set(matching.labels), "on/ignoring")
        for child in children(node):
            visit(child)

    visit(promql_parser.parse(substitute(query)))
    return found


def label_values(query: str) -> tuple[str, str]:
    """`label_values(selector, label)` of a Grafana query variable."""
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
    assert m, f"not a label_values query: {query}"
    return m.group(1), m.group(2)


def dashboard_queries() -> dict[str, str]:
    """Every PromQL expression of the dashboard, by where it is."""
    board = json.loads(DASHBOARD.read_text())
    queries: dict[str, str] = {}
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            queries[f"{panel['title']} {target['refId']}"] = target["expr"]
    for var in board["templating"]["list"]:
        selector, label = label_values(var["query"]["query"])
        # The variable's values are those of the label on that selector.
        queries[f"${var['name']}"] = f"count by ({label}) ({selector})"
    return queries


# --- tests -----------------------------------------------------------------------------------


def test_every_dashboard_query_names_exported_series_and_their_labels(exports: Exports) -> None:
    queries = dashboard_queries()
    assert len(queries) > 20
    found = {where: p for where, q in queries.items() if (p := problems(q, exports))}
    assert not found, found


def test_the_dashboard_covers_what_operators_watch(exports: Exports) -> None:
    """Queue depth, replicas by state, queue-wait and TTFT quantiles, cold starts, scaling
    decisions by reason, requests and errors: each a panel, each per deployment."""
    board = json.loads(DASHBOARD.read_text())
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in board["panels"]
             if p["type"] != "row"}  # fmt: skip
    wanted = {
        "Queue depth": "wakegate_queue_depth",
        "Replicas by state": "by (deployment, state)",
        "Queue wait": "histogram_quantile(0.95, sum by (deployment, le) "
        "(rate(wakegate_queue_wait_seconds_bucket",
        "Time to first token": "wakegate_time_to_first_token_seconds_bucket",
        "Cold starts": "wakegate_cold_start_seconds_count",
        "Scaling decisions by reason": "by (deployment, reason)",
        "Requests by status": "wakegate_requests_total",
        "Errors by status": 'code!="200"',
    }
    for title, part in wanted.items():
        assert part in exprs[title], title
    (variable,) = board["templating"]["list"]
    assert variable["name"] == "deployment" and variable["includeAll"]
    for title, expr in exprs.items():
        if "sku" not in expr:  # the pool panels are per SKU
            assert 'deployment=~"$deployment"' in expr, title
    # Every panel reads the provisioned data source.
    datasource = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (source,) = datasource["datasources"]
    assert source["url"] == "http://prometheus:9090"
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ("wakegate_queue_depth_total", "no exported series 'wakegate_queue_depth_total'"),
        ("rate(wakegate_requests[5m])", "no exported series 'wakegate_requests'"),
        ('wakegate_replicas{sku="a10"}', "wakegate_replicas has no label 'sku' (matcher)"),
        (
            "sum by (tenant) (rate(wakegate_requests_total[5m]))",
            "wakegate_requests_total has no label 'tenant' (by/without)",
        ),
        (
            "histogram_quantile(0.9, sum by (le) (rate(wakegate_ttft_seconds_bucket[5m])))",
            "no exported series 'wakegate_ttft_seconds_bucket'",
        ),
        (
            "wakegate_queue_depth / on (state) wakegate_in_flight",
            "wakegate_queue_depth has no label 'state' (on/ignoring)",
        ),
    ],
)
def test_the_check_refuses_unknown_series_and_labels(
    exports: Exports, query: str, complaint: str
) -> None:
    assert complaint in problems(query, exports)
