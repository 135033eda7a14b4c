"""Prometheus metrics of one server, in their own registry (``detops_*``, low cardinality).

Labels stay bounded: ``route`` is the route template (``/v1/detect``, not the URL), ``status``
the HTTP code, ``model_version`` a ``NAME@vN`` the server has loaded, ``reason`` one of a fixed
set of rejection reasons.
"""

from __future__ import annotations

from collections.abc import Iterable

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

# the outcomes of the prediction log's and the review queue's asynchronous writers
WRITE_OUTCOMES = ("written", "dropped_full", "dropped_store_error", "dropped_error")

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.010, 0.013, 0.016, 0.020, 0.025, 0.032,
    0.040, 0.050, 0.065, 0.080, 0.100, 0.150, 0.250, 0.500, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


def _zeroed(counter: Counter, values: Iterable[str]) -> Counter:
    """``counter`` (one label) with a series for each of ``values``, exported as 0 until used."""
    for value in values:
        counter.labels(value)
    return counter


def _outcomes(name: str, what: str, registry: CollectorRegistry) -> Counter:
    """A counter of an asynchronous writer's items by outcome (``WRITE_OUTCOMES``)."""
    return _zeroed(
        Counter(
            name,
            f"{what} by outcome ({', '.join(WRITE_OUTCOMES)})",
            ["outcome"],
            registry=registry,
        ),
        WRITE_OUTCOMES,
    )


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
        # requests being handled: a plain int the middleware counts and the request path reads
        # (deciding where to decode); the gauge reports it at scrape time
        self.active = 0
        self.in_flight = Gauge("detops_in_flight_requests", "requests being handled", registry=r)
        self.in_flight.set_function(lambda: self.active)
        stages = {
            "decode": "decode + pre-processing (+ input features when decoded in the pool)",
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
        self.rejections = _zeroed(
            Counter("detops_rejections", "refused requests by reason", ["reason"], registry=r),
            REJECTION_REASONS,
        )
        self.log_records = _outcomes("detops_prediction_log_records", "prediction-log records", r)
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
        # -- degrees of automation and the human review queue
        self.automation_level = Gauge(
            "detops_automation_level", "1 for the automation level in force", ["level"], registry=r
        )
        self.review_items = _outcomes("detops_review_items", "requests queued for review", r)
        self.review_queue = Gauge(
            "detops_review_queue", "review items waiting to be written", registry=r
        )
        self.review_pending = Gauge(
            "detops_review_pending", "items in the store waiting for a reviewer", registry=r
        )
        self.review_feedback = _zeroed(
            Counter(
                "detops_review_feedback",
                "reviews submitted to this server, by whether the boxes changed",
                ["changed"],
                registry=r,
            ),
            ("true", "false"),
        )
        self.review_override_rate = Gauge(
            "detops_review_override_rate",
            "share of reviewed served requests whose boxes the reviewer changed (whole store; "
            "NaN: none)",
            registry=r,
        )
        self.review_override_rate.set(float("nan"))
        # -- rollouts (a server serving a deployment)
        self.rollout_state = Gauge(
            "detops_rollout_state",
            "1 for the deployment's rollout state as this replica applies it",
            ["deployment", "state"],
            registry=r,
        )
        self.rollout_step = Gauge(
            "detops_rollout_step", "canary step index (0-based)", ["deployment"], registry=r
        )
        self.rollout_share = Gauge(
            "detops_rollout_traffic_share",
            "share of requests each side answers (candidate: canary share; shadow copies "
            "answer nobody)",
            ["deployment", "target"],
            registry=r,
        )
        self.rollout_decisions = Counter(
            "detops_rollout_decisions",
            "rollout decisions made by this replica (controller or admin API), by reason",
            ["decision", "reason"],
            registry=r,
        )
        self.rollout_controller = Gauge(
            "detops_rollout_controller",
            "1 while this replica holds the deployment's controller lease",
            ["deployment"],
            registry=r,
        )
        self.rollout_revision = Gauge(
            "detops_rollout_revision",
            "deployment revision this replica applies",
            ["deployment"],
            registry=r,
        )
        shadow_outcomes = ("compared", "error", "shed_busy", "shed_full", "not_loaded")
        self.shadow_requests = _zeroed(
            Counter(
                "detops_shadow_requests",
                f"shadow copies by outcome ({', '.join(shadow_outcomes)})",
                ["outcome"],
                registry=r,
            ),
            shadow_outcomes,
        )

    def reject(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
