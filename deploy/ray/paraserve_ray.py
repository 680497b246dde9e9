"""paraserve as a Ray Serve application: the same FastAPI app (routes, errors, limits, batcher) in every replica.

Each replica runs `app.main.create_app` as its ASGI ingress (deploy/ray/replica.py), and Ray Serve runs the app's
lifespan in the replica: the same start as `python -m app` (app.core.start: process settings, the artifact this host can
run, warm-up), the same routes, errors, limits, batching and metrics. What Ray's proxy does instead of paraserve's
connection guards (app/transport/http11.py) is Ray's: timeouts and connection limits are its settings (config.yaml).
One single-threaded model worker per replica (`num_cpus: 1`), batching per replica;
Ray Serve's proxy spreads requests over the replicas and its autoscaler adds or removes them on ongoing requests
per replica (a queue-depth signal): see config.yaml. Ray's own replica metrics (ray_serve_*) are exported on each
node's metrics port for Prometheus.

    serve run deploy/ray/config.yaml          (or `serve deploy` to a running cluster)
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve

from deploy.ray.replica import replica_app, replica_settings, worker_died


def build(args: dict[str, Any]) -> Any:
    """Ray Serve application builder: `args` may set `artifact_dir` and any other paraserve setting by name."""
    values = replica_settings(args)  # a bad setting fails `serve deploy` here, in one message, not in every replica

    @serve.deployment
    @serve.ingress()  # the app is built in each replica (a FastAPI object does not pickle)
    class Paraserve:
        def __init__(self, settings: dict[str, Any]) -> None:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            self._settings = settings
            self._app: Any = None

        def __serve_build_asgi_app__(self) -> Any:
            self._app = replica_app(self._settings)
            return self._app

        def check_health(self) -> None:
            if worker_died(self._app):
                raise RuntimeError("the model worker died")

    return Paraserve.bind(values)
