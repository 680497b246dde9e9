"""`python -m app`: verify and load the artifact, then serve it with uvicorn; exit non-zero on a fatal error."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import uvicorn
from pydantic import ValidationError

from app.config import Settings
from app.logs import configure_logging
from app.main import create_app, runtime_options
from app.service import PredictionService, State
from artifact.errors import UserError
from artifact.runtime import Runtime, choose_artifact

log = logging.getLogger("app")


class DrainingServer(uvicorn.Server):
    """uvicorn, but /readyz turns 503 the moment SIGTERM arrives, while accepted requests still finish."""

    def __init__(self, config: uvicorn.Config, service: PredictionService) -> None:
        super().__init__(config)
        self._service = service

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._service.begin_shutdown()
        super().handle_exit(sig, frame)
        # uvicorn re-raises captured signals after shutting down, which would end the process "killed by SIGTERM";
        # a completed graceful drain is a clean exit (0), so SIGTERM is not re-raised.
        self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]


def _settings_problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    name = "PARASERVE_" + "_".join(str(p) for p in first.get("loc", ())).upper()
    return f"invalid setting {name}={first.get('input')!r}: {first.get('msg')}"


def main() -> int:
    """Load, serve, and return the process exit code."""
    try:
        settings = Settings()
    except ValidationError as exc:
        configure_logging("info", json_logs=False)
        log.critical("cannot start: %s", _settings_problem(exc))
        return 2
    configure_logging(settings.log_level, settings.json_logs)
    try:
        # Loaded here, before uvicorn starts, so a bad or tampered artifact is one clear line and exit 2.
        choice = choose_artifact(settings.artifact_dir)
        log.info("serving %s: %s", choice.folder, choice.reason)
        runtime = Runtime.load(choice.folder, **runtime_options(settings))
    except UserError as exc:
        log.critical("cannot start: %s", exc)
        return 2
    app = create_app(settings, runtime=runtime)
    service: PredictionService = app.state.service
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
        lifespan="on",
    )
    server = DrainingServer(config, service)
    server.run()
    if service.state is State.DEAD or service.drained is False:
        return 1  # the worker died, or accepted work was still queued when the grace period ended
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
