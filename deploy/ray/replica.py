"""What one Ray Serve replica runs, without Ray: the settings it serves with and its ASGI app.

Kept apart from paraserve_ray.py (which needs Ray) so the test suite can start a replica's app exactly as Ray does,
lifespan and all, and check that it serves what `python -m app` serves on the same host (the AVX2 fallback included).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from app.core.service import State
from app.main import create_app
from app.shared.config import Settings


def replica_settings(args: dict[str, Any]) -> dict[str, Any]:
    """The config's `args` over one CPU per replica (ray_actor_options.num_cpus: 1); a bad setting raises here.

    gRPC is refused: every replica would bind the one port (Ray Serve's own gRPC proxy routes gRPC to replicas; this
    app's gRPC edge is `python -m app`'s). Several models (PARASERVE_MODELS) are served by each replica as by one
    process."""
    values = {"workers": 1, "torch_threads": 1, **args}
    settings = Settings(**values)
    if settings.grpc_port is not None:
        raise ValueError("grpc_port is not served under Ray Serve: each replica would bind it (use python -m app for gRPC)")
    return values


def replica_app(values: dict[str, Any]) -> FastAPI:
    """The replica's app: create_app, whose lifespan (run by Ray Serve in the replica) loads through app.core.start, as every
    launcher does. A dead model worker does not stop the process: `worker_died` tells check_health, and Ray replaces it."""
    return create_app(Settings(**values), stop_server=lambda: None)


def worker_died(app: FastAPI | None) -> bool:
    """Whether this replica's model worker died (Ray Serve's check_health then fails and the replica is replaced)."""
    return app is not None and app.state.service.state is State.DEAD
