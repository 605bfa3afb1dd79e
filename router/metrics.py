"""Prometheus metrics of one gateway, on a registry owned by its app.

Several workers on one port (`--workers`) keep their values in files of one folder, named by
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode): counters and histograms
are added up over the workers, in-flight gauges over the live ones, the queue depth (read
from Redis, the same for all) is the most recent. The workers' files keep a deleted
deployment's values until the gateway restarts (prometheus_client never rewrites them), so
the exposition leaves out the series of deployments that no longer exist.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


@dataclass(frozen=True)
class DeploymentSeries:
    """One deployment's series, looked up once (`labels()` costs a lock and a validation
    per call, several times per request on the hot path)."""

    queue_depth: Any
    in_flight: Any
    queue_wait: Any
    cold_start: Any
    ttft: Any
    duration: Any
    retries: Any
    wakes: Any
    wake_reaction: Any


class GatewayMetrics:
    def __init__(self) -> None:
        self._series: dict[str, DeploymentSeries] = {}
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "wakegate_requests",
            "Generate requests by outcome",
            ["deployment", "code"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "wakegate_queue_depth",
            "Requests waiting in the deployment's queue (all gateways)",
            ["deployment"],
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self.in_flight = Gauge(
            "wakegate_in_flight",
            "Requests this gateway is proxying to a replica",
            ["deployment"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.queue_wait = Histogram(
            "wakegate_queue_wait_seconds",
            "Time from enqueue to replica slot",
            ["deployment"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cold_start = Histogram(
            "wakegate_cold_start_seconds",
            "First request at a deployment without ready replicas: enqueue to first token",
            ["deployment"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "wakegate_time_to_first_token_seconds",
            "Arrival to first token",
            ["deployment"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.duration = Histogram(
            "wakegate_request_duration_seconds",
            "Arrival to last byte",
            ["deployment"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.retries = Counter(
            "wakegate_retries",
            "Requests retried on another replica before their first byte",
            ["deployment"],
            registry=self.registry,
        )
        self.wakes = Counter(
            "wakegate_wakes",
            "Wake events published for cold deployments",
            ["deployment"],
            registry=self.registry,
        )
        self.wake_reaction = Histogram(
            "wakegate_wake_reaction_seconds",
            "Request queued (enqueue called) to its wake event published",
            ["deployment"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    @property
    def multiprocess(self) -> bool:
        """Whether /metrics merges the files of several workers."""
        return bool(os.environ.get(MULTIPROC_ENV))

    def exposition(self, live: Collection[str] | None = None) -> bytes:
        """The text /metrics serves: this process's series, or every worker's; with `live`
        (the deployments that exist), only theirs among the per-deployment series."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        families = list(self._collected())
        if live is None:
            return self.text(families)
        kept = []
        for family in families:
            samples = [s for s in family.samples if s.labels.get("deployment", "") in live
                       or "deployment" not in s.labels]  # fmt: skip
            if samples or not family.samples:
                only = Metric(family.name, family.documentation, family.type, family.unit)
                only.samples = samples
                kept.append(only)
        return self.text(kept)

    def _collected(self) -> Iterable[Metric]:
        folder = os.environ.get(MULTIPROC_ENV)
        if not folder:
            return self.registry.collect()
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=folder)  # type: ignore[no-untyped-call]
        return merged.collect()

    def deployment_metrics(self, deployment: str) -> list[Metric]:
        """The series of one deployment (store key), as this gateway (all its workers) has
        them: what a deployment's own `/metrics` shows its tenant."""
        out = []
        for family in self._collected():
            samples = [s for s in family.samples if s.labels.get("deployment") == deployment]
            if samples:
                kept = Metric(family.name, family.documentation, family.type, family.unit)
                kept.samples = samples
                out.append(kept)
        return out

    @staticmethod
    def text(families: list[Metric]) -> bytes:
        """Prometheus text exposition of these families."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(families))
        return generate_latest(registry)

    def of(self, deployment: str) -> DeploymentSeries:
        series = self._series.get(deployment)
        if series is None:
            per_deployment = (
                self.queue_depth, self.in_flight, self.queue_wait, self.cold_start, self.ttft,
                self.duration, self.retries, self.wakes, self.wake_reaction,
            )  # fmt: skip
            series = DeploymentSeries(*(m.labels(deployment) for m in per_deployment))
            self._series[deployment] = series
        return series

    def forget(self, deployment: str) -> None:
        """Drop every series of a deleted deployment."""
        self._series.pop(deployment, None)
        for metric in (
            self.queue_depth,
            self.in_flight,
            self.queue_wait,
            self.cold_start,
            self.ttft,
            self.duration,
            self.retries,
            self.wakes,
            self.wake_reaction,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(deployment)
        for labels in list(self.requests._metrics):
            if labels[0] == deployment:
                with contextlib.suppress(KeyError):
                    self.requests.remove(*labels)


class _Fixed(Collector):
    """A collector of families already collected."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self._families)
