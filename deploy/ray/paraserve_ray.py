"""paraserve as a Ray Serve application: the same FastAPI app (routes, errors, limits, batcher) in every replica.

Each replica runs `app.main.create_app` as its ASGI ingress, so POST /predict, the v2 routes, /healthz, /readyz,
/model and /metrics behave exactly as in `python -m app`; Ray Serve runs the app's lifespan in the replica (load,
verify, warm up, drain). One single-threaded model worker per replica (`num_cpus: 1`), batching per replica;
Ray Serve's proxy spreads requests over the replicas and its autoscaler adds or removes them on ongoing requests
per replica (a queue-depth signal): see config.yaml. Ray's own replica metrics (ray_serve_*) are exported on each
node's metrics port for Prometheus.

    serve run deploy/ray/config.yaml          (or `serve deploy` to a running cluster)
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve

from app.config import Settings
from app.main import create_app
from app.service import State


def build(args: dict[str, Any]) -> Any:
    """Ray Serve application builder: `args` may set `artifact_dir` and any other paraserve setting by name."""
    values = {"workers": 1, "torch_threads": 1, **args}  # one CPU per replica (ray_actor_options.num_cpus)
    Settings(**values)  # a bad setting fails `serve deploy` here, in one message, not in every replica

    @serve.deployment
    @serve.ingress()  # the app is built in each replica (a FastAPI object does not pickle)
    class Paraserve:
        def __init__(self, settings: dict[str, Any]) -> None:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            self._settings = settings
            self._app: Any = None

        def __serve_build_asgi_app__(self) -> Any:
            # A dead model worker makes check_health fail and Ray Serve replaces the replica (no SIGTERM to itself).
            self._app = create_app(Settings(**self._settings), stop_server=lambda: None)
            return self._app

        def check_health(self) -> None:
            if self._app is not None and self._app.state.service.state is State.DEAD:
                raise RuntimeError("the model worker died")

    return Paraserve.bind(values)
