"""`python -m app`: verify and load the artifact, then serve it with uvicorn; exit non-zero on a fatal error."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import uvicorn

from app.config import Settings
from app.logs import configure_logging
from app.main import create_app, runtime_options
from app.runtime import Runtime
from model_build.errors import BuildError

log = logging.getLogger("app")


class DrainingServer(uvicorn.Server):
    """uvicorn, but /readyz turns 503 the moment SIGTERM arrives, while accepted requests still finish."""

    def __init__(self, config: uvicorn.Config, app: Any) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: Any) -> None:
        service = getattr(self._app.state, "service", None)
        if service is not None:
            service.begin_shutdown()
        super().handle_exit(sig, frame)
        # uvicorn re-raises captured signals after shutting down, which would end the process "killed by SIGTERM";
        # a completed graceful drain is a clean exit (0), so SIGTERM is not re-raised.
        self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]


def main() -> int:
    """Load, serve, and return the process exit code."""
    settings = Settings()
    configure_logging(settings.log_level, settings.json_logs)
    try:
        # Loaded here, before uvicorn starts, so a bad or tampered artifact is one clear line and exit 2.
        runtime = Runtime.load(settings.artifact_dir, **runtime_options(settings))
    except BuildError as exc:
        log.critical("cannot start: %s", exc)
        return 2
    app = create_app(settings, runtime=runtime)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
        lifespan="on",
    )
    server = DrainingServer(config, app)
    server.run()
    if app.state.fatal is not None or app.state.drained is False:
        return 1  # the worker died, or accepted work was still queued when the grace period ended
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
