"""Prometheus metrics, on a registry of the server's own (so several servers in one process,
as in the tests, do not share counts)."""

from __future__ import annotations

import prometheus_client
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               generate_latest)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Requests, errors, queue depth, batch sizes and latency histograms, per model."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        prometheus_client.disable_created_metrics()  # no *_created series beside each counter
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        self.requests = Counter("vlmedge_requests", "HTTP requests answered, by model, endpoint and status code.",
                                ["model", "endpoint", "code"], registry=r)
        self.errors = Counter("vlmedge_request_errors", "Requests answered with an error, by error code.",
                              ["model", "endpoint", "error"], registry=r)
        self.latency = Histogram("vlmedge_request_duration_seconds",
                                 "Time from receiving a request to answering it (inference endpoints).",
                                 ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("vlmedge_requests_in_flight", "Inference requests being handled.", registry=r)
        self.queue_depth = Gauge("vlmedge_queue_depth", "Requests waiting for a batch, per model.", ["model"],
                                 registry=r)
        self.rejected = Counter("vlmedge_queue_rejected", "Requests refused because the model's queue was full.",
                                ["model"], registry=r)
        self.queue_wait = Histogram("vlmedge_queue_wait_seconds", "Time a request waited before its batch ran.",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("vlmedge_batch_size",
                                    "Inputs (images, clips, captions) per batch: one pipeline call, run in model "
                                    "calls of at most --max-batch.",
                                    ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("vlmedge_batch_requests", "Requests merged into one model call.",
                                        ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("vlmedge_batch_duration_seconds", "Time of one batched model call.",
                                       ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.replica_failures = Counter("vlmedge_replica_failures",
                                        "Ray Serve: jobs whose replica died under them, by what followed "
                                        "(retried on another replica, or refused with 503).",
                                        ["model", "outcome"], registry=r)
        self.model_info = Gauge("vlmedge_model_info", "The models served (always 1).",
                                ["model", "task", "backend", "precision"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
