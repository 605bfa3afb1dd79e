"""Prometheus metrics of the scaler, on a registry owned by one Scaler instance."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ScalerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.replicas = Gauge(
            "wakegate_replicas",
            "Replicas by state",
            ["deployment", "state"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "wakegate_scaler_queue_depth",
            "Queued requests seen by the scaler",
            ["deployment"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "wakegate_scaler_in_flight",
            "Requests in flight seen by the scaler",
            ["deployment"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "wakegate_scaling_decisions",
            "Scaling decisions that changed the replica count, by kind of reason",
            ["deployment", "reason"],
            registry=self.registry,
        )
        self.replica_start_seconds = Histogram(
            "wakegate_replica_start_seconds",
            "Time from launching a replica to its first successful health probe",
            ["deployment"],
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.replica_failures = Counter(
            "wakegate_replica_failures",
            "Replicas that failed to start or died",
            ["deployment"],
            registry=self.registry,
        )
        self.waiting = Gauge(
            "wakegate_waiting_for_capacity",
            "1 while the deployment wants replicas the pool or its tenant's quota cannot give",
            ["deployment"],
            registry=self.registry,
        )
        self.reclaims = Counter(
            "wakegate_reclaims",
            "Idle replicas drained to give their units to a deployment with queued requests",
            ["sku"],
            registry=self.registry,
        )
        self.pool_free = Gauge(
            "wakegate_pool_free_units",
            "Units (GPUs; cpu: replica slots) the backend can still start, -1: unlimited",
            ["sku"],
            registry=self.registry,
        )
        self.passes = Counter(
            "wakegate_scaler_passes",
            "Passes of the control loop (each over the deployments with something to do)",
            registry=self.registry,
        )
        self.sweep_seconds = Gauge(
            "wakegate_scaler_sweep_seconds",
            "Wall-clock duration of the latest full sweep over every deployment",
            registry=self.registry,
        )
        self.is_leader = Gauge(
            "wakegate_scaler_leader",
            "1 while this instance holds the lease",
            registry=self.registry,
        )

    def idle(self, deployment: str) -> None:
        """Drop the gauges of a deployment at zero with nothing to do: 10,000 idle
        deployments do not make 50,000 series of zeros (an absent series reads as zero)."""
        for metric in (self.queue_depth, self.in_flight, self.waiting):
            with contextlib.suppress(KeyError):
                metric.remove(deployment)
        for state in ("starting", "ready", "draining"):
            with contextlib.suppress(KeyError):
                self.replicas.remove(deployment, state)

    def forget(self, deployment: str) -> None:
        """Drop every series of a deleted deployment."""
        self.idle(deployment)
        with contextlib.suppress(KeyError):
            self.replica_failures.remove(deployment)
        with contextlib.suppress(KeyError):
            self.replica_start_seconds.remove(deployment)
        for labels in list(self.decisions._metrics):
            if labels[0] == deployment:
                self.decisions.remove(*labels)
