"""Prometheus metrics of one server, in their own registry (``detops_*``, low cardinality).

Labels stay bounded: ``route`` is the route template (``/v1/detect``, not the URL), ``status``
the HTTP code, ``model_version`` a ``NAME@vN`` the server has loaded, ``reason`` one of a fixed
set of rejection reasons.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

# the only values the `reason` label takes
REJECTION_REASONS = (
    "body_too_large",
    "too_many_pixels",
    "bad_image",
    "empty_body",
    "unsupported_media_type",
    "bad_request",
    "overloaded",
    "timeout",
    "unauthorized",
    "forbidden",
    "not_ready",
    "model_error",
)

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.010, 0.013, 0.016, 0.020, 0.025, 0.032,
    0.040, 0.050, 0.065, 0.080, 0.100, 0.150, 0.250, 0.500, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class ServeMetrics:
    """Every metric the server exports; one instance per app."""

    def __init__(self, max_batch_size: int = 8) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total
        self.requests = Counter(
            "detops_requests",
            "HTTP requests by route template, status and the model version that answered",
            ["route", "status", "model_version"],
            registry=r,
        )
        self.in_flight = Gauge("detops_in_flight_requests", "requests being handled", registry=r)
        stages = {
            "decode": "decode + input features + pre-processing",
            "queue": "waiting in the batch queue",
            "inference": "the batch's ONNX Runtime run",
            "total": "whole request, received to response",
        }
        self.latency = {
            stage: Histogram(
                f"detops_{stage}_seconds", f"latency: {doc}", buckets=_LATENCY_BUCKETS, registry=r
            )
            for stage, doc in stages.items()
        }
        self.batch_size = Histogram(
            "detops_batch_size",
            "rows per ONNX Runtime run",
            buckets=[b for b in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64) if b < max_batch_size]
            + [max_batch_size],
            registry=r,
        )
        self.queue_depth = Gauge(
            "detops_queue_depth", "jobs waiting for the model", ["model_version"], registry=r
        )
        self.rejections = Counter(
            "detops_rejections", "refused requests by reason", ["reason"], registry=r
        )
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason)
        self.log_records = Counter(
            "detops_prediction_log_records",
            "prediction-log records by outcome (written, dropped_full, dropped_store_error)",
            ["outcome"],
            registry=r,
        )
        for outcome in ("written", "dropped_full", "dropped_store_error"):
            self.log_records.labels(outcome)
        self.log_queue = Gauge(
            "detops_prediction_log_queue", "records waiting to be written", registry=r
        )
        self.samples = Counter(
            "detops_image_samples", "request images kept in the artifact store", registry=r
        )
        self.model_info = Gauge(
            "detops_model_info",
            "1 for the version serving live traffic, with its batching policy",
            ["model_version", "batch_policy"],
            registry=r,
        )
        self.swaps = Counter("detops_model_swaps", "hot swaps to a new version", registry=r)
        self.load_errors = Counter(
            "detops_model_load_errors", "failed attempts to load a version", registry=r
        )

    def reject(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
