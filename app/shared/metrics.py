"""Every Prometheus metric of the service, on a registry passed in (tests use a fresh one). Base units."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0)
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
CLOSE_REASONS = ("idle", "keep_alive", "header_timeout", "body_timeout", "body_too_slow", "send_stalled", "headers_too_large",
                 "bad_request", "framing", "body_too_large", "too_many_connections", "client_connections", "pipelined",
                 "draining")  # fmt: skip
# The Open Inference Protocol's gRPC methods and gRPC health's (app/protocols/v2_grpc.py serves them; gRPC itself
# answers any other UNIMPLEMENTED).
GRPC_METHODS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer", "Check", "Watch")
# Why the gRPC edge refused or closed: the connection (app/transport/grpc_front.py) or the call (app/protocols/v2_grpc.py).
GRPC_REFUSALS = ("too_many_connections", "client_connections", "header_timeout", "bad_request", "headers_too_large", "upstream",
                 "request_timeout", "too_many_rpcs", "client_rpcs", "too_many_watches", "connection_watches")  # fmt: skip
# Label values a client cannot grow: anything else shares "other" (4,000 random methods once grew /metrics to 97 MB).
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
RATIO_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class Metrics:
    """The service's metrics, named paraserve_*."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "paraserve_http_requests",
            "HTTP requests by route template (or other), method (a standard one, or other) and status code.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "paraserve_http_request_duration_seconds",
            "Time from request start to response end.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.errors = Counter("paraserve_errors", "Error responses by error_type.", ["error_type"], registry=registry)
        self.predictions = Counter(
            "paraserve_predictions", "Pairs answered, by model and predicted label.", ["model", "label"], registry=registry
        )
        self.tokenize_duration = Histogram(
            "paraserve_tokenize_duration_seconds",
            "Tokenization time of one request's pairs.",
            ["model"],
            buckets=FAST_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "paraserve_queue_wait_seconds",
            "Time a pair waits from queueing to the start of its batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference_duration = Histogram(
            "paraserve_inference_duration_seconds",
            "Forward time of one padded batch.",
            ["model"],
            buckets=INFERENCE_BUCKETS,
            registry=registry,
        )
        self.batch_rows = Histogram(
            "paraserve_batch_rows", "Real pairs per batch (batch fill).", ["model"], buckets=tuple(range(1, 9)), registry=registry
        )
        self.batch_token_fill = Histogram(
            "paraserve_batch_token_fill_ratio",
            "Real tokens / padded tokens of each batch (1 - padding fraction).",
            ["model"],
            buckets=RATIO_BUCKETS,
            registry=registry,
        )
        self.batches_failed = Counter("paraserve_batches_failed", "Batches whose forward raised.", ["model"], registry=registry)
        self.queue_depth = Gauge("paraserve_queue_depth_pairs", "Pairs waiting for each model.", ["model"], registry=registry)
        self.queue_capacity = Gauge(
            "paraserve_queue_capacity_pairs", "Configured queue capacity of each model, in pairs.", ["model"], registry=registry
        )
        self.ready = Gauge("paraserve_ready", "1 when every model is warmed up and the workers are alive.", registry=registry)
        self.model_ready = Gauge(
            "paraserve_model_ready", "1 when this model (or both stages of a cascade) can answer.", ["model"], registry=registry
        )
        self.model_size = Gauge(
            "paraserve_model_size_bytes", "Size of each loaded model on disk (model file and weights).", ["model", "variant"],
            registry=registry,
        )  # fmt: skip
        self.model_info = Info("paraserve_model", "Each loaded artifact.", ["model"], registry=registry)
        self.cascade_pairs = Counter(
            "paraserve_cascade_pairs",
            "Pairs a cascade answered, by which of its models decided (its accurate model's count = escalations).",
            ["model", "decided_by"],
            registry=registry,
        )
        self.workers = Gauge("paraserve_workers", "Model workers (single-threaded, sharing one copy of the weights).", registry=registry)
        self.worker_busy = Counter(
            "paraserve_worker_busy_seconds",
            "Seconds each model worker spent running batches (rate = utilisation).",
            ["worker"],
            registry=registry,
        )
        self.worker_batches = Counter("paraserve_worker_batches", "Batches each model worker ran.", ["worker"], registry=registry)
        self.connections_open = Gauge("paraserve_connections_open", "Open HTTP connections.", registry=registry)
        self.connections_closed = Counter(
            "paraserve_connections_closed",
            "Connections the server closed, by reason: " + ", ".join(CLOSE_REASONS) + " (docs/reliability.md).",
            ["reason"],
            registry=registry,
        )
        for reason in CLOSE_REASONS:  # every series exists from the start, so rates and alerts see a 0 before the first
            self.connections_closed.labels(reason=reason)
        self.grpc_requests = Counter(
            "paraserve_grpc_requests",
            "gRPC calls (Open Inference Protocol v2) by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.grpc_duration = Histogram(
            "paraserve_grpc_request_duration_seconds", "Time from a gRPC call's start to its answer.", ["method"], buckets=LATENCY_BUCKETS,
            registry=registry,
        )  # fmt: skip
        for method in GRPC_METHODS:  # series at 0 from the start (status codes are a fixed set too)
            self.grpc_requests.labels(method=method, code="OK")
            self.grpc_duration.labels(method=method)
        self.grpc_connections_open = Gauge("paraserve_grpc_connections_open", "Open gRPC connections (the front's).", registry=registry)
        self.grpc_refused = Counter(
            "paraserve_grpc_refused",
            "gRPC connections and calls the edge refused or closed, by reason: " + ", ".join(GRPC_REFUSALS) + ".",
            ["reason"],
            registry=registry,
        )
        for reason in GRPC_REFUSALS:
            self.grpc_refused.labels(reason=reason)
        self.requests_unanswered = Counter(
            "paraserve_requests_unanswered",
            "Requests the server received at least one byte of and closed without answering (clients that left excluded). 0 expected.",
            registry=registry,
        )
        self.tokenize_pending = Gauge(
            "paraserve_tokenize_pending_pairs", "Pairs admitted and being tokenized (not yet queued).", ["model"], registry=registry
        )
        # process_resident_memory_bytes, CPU seconds, open fds: the load and reliability reports read them.
        ProcessCollector(registry=registry)
