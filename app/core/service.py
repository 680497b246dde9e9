"""The prediction service: the models this server answers with (a model repository, as Triton's and TorchServe's users
expect), the shared model workers, and the one lifecycle state.

Every protocol calls `score` (validation, admission, tokenization, batching, the client-left rule, counting) on the
model a call names (`get`; the first configured model when none is named); routes and health checks ask the service
(`state`, `require_ready`, each model's readiness); nothing else keeps lifecycle flags. Models share one pool of
single-threaded workers (as many as the cores), which they take in turns, batch by batch (app/core/batcher.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch

from app.core.batcher import WorkerPool
from app.core.models import Band, Cascade, Model, Queueing, ServedModel
from app.core.validation import ModelId, PairLimits, Scored, shown
from app.shared.config import Settings
from app.shared.errors import ModelNotFound, NotReady, ShuttingDown
from app.shared.metrics import Metrics
from app.shared.observability import Tracer
from artifact.kernels import cpu_description
from artifact.runtime import Runtime

log = logging.getLogger(__name__)


class State(StrEnum):
    """starting -> ready -> draining (SIGTERM) -> stopped; ready or draining -> dead when a model worker dies."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    DEAD = "dead"


@dataclass(frozen=True)
class CascadeSpec:
    """A cascade to serve: the names of its two models in this server, its band, and how the band was chosen."""

    fast: str
    accurate: str
    band: Band
    source: dict[str, Any]


class PredictionService:
    """The models behind every protocol, from loading to drain; `state` is the one source of the server's readiness."""

    def __init__(
        self, settings: Settings, metrics: Metrics, on_fatal: Callable[[BaseException], None] | None = None, tracer: Tracer | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.tracer = tracer or Tracer(None)
        self._on_fatal = on_fatal
        self.state = State.STARTING
        self.fatal: BaseException | None = None
        self.drained: bool | None = None  # after stop(): whether every accepted request was answered in time
        self.models: dict[str, Model] = {}
        self.default = ""
        self.cpu: dict[str, str] = {}
        self.limits = PairLimits(settings.max_pairs_per_request, settings.max_sentence_chars)
        self.pool: WorkerPool | None = None
        self._listeners: list[Callable[[State], None]] = []
        metrics.ready.set(0)

    def get(self, name: str | None = None, version: str | None = None) -> Model:
        """The model a call names (the default when `name` is empty), or ModelNotFound; NotReady/ShuttingDown when the
        server cannot take a request now."""
        self.require_ready()
        model = self.models.get(name or self.default)
        if model is None:
            raise ModelNotFound(f"no model named {shown(name)}; this server serves {', '.join(map(repr, self.models))}")
        if version and version != model.id.version:
            raise ModelNotFound(f"model {shown(name)} has no version {shown(version)}; it has {model.id.version!r}")
        return model

    @property
    def default_model(self) -> Model:
        return self.get()

    def served(self) -> list[ModelId]:
        return [m.id for m in self.models.values()]

    def _set_state(self, state: State) -> None:
        self.state = state
        self.metrics.ready.set(1 if state is State.READY else 0)
        for listener in self._listeners:
            listener(state)

    def on_state_change(self, listener: Callable[[State], None]) -> None:
        """Call `listener` with every new state (on the event loop): how gRPC's health and listener follow readiness."""
        self._listeners.append(listener)

    # ---- lifecycle ------------------------------------------------------------------------------------

    async def start(self, runtimes: Mapping[str, Runtime], cascades: Mapping[str, CascadeSpec] | None = None) -> None:
        """Serve `runtimes` by name (the first is the default) and `cascades` over them: warm each up at every shape it
        may use (off the loop), publish their metrics, start their batchers on the shared workers."""
        settings = self.settings
        self.pool = WorkerPool(settings.workers, settings.model_affinity_ms / 1000)
        queueing = Queueing(
            settings.max_batch_wait_ms / 1000, settings.queue_capacity, int(settings.queue_capacity * settings.queue_reserve)
        )
        self.cpu = cpu_description()  # once: GET /model and the info metric report it, the CPU does not change
        m = self.metrics
        m.workers.set(settings.workers)
        for worker in range(settings.workers):  # every worker's series exists from the start, at 0
            m.worker_busy.labels(worker=str(worker))
            m.worker_batches.labels(worker=str(worker))
        for name, runtime in runtimes.items():
            self.models[name] = ServedModel(name, runtime, self.pool, queueing, self.limits, m, self.tracer)
            self._publish(name, runtime)
        for name, spec in (cascades or {}).items():
            fast, accurate = self.models.get(spec.fast), self.models.get(spec.accurate)
            if not isinstance(fast, ServedModel) or not isinstance(accurate, ServedModel):
                raise ModelNotFound(f"cascade {name!r} needs models {spec.fast!r} and {spec.accurate!r} in PARASERVE_MODELS")
            self.models[name] = Cascade(name, fast, accurate, spec.band, m, spec.source)
            m.model_ready.labels(model=name)
        self.default = next(iter(self.models))
        for model in self.models.values():
            if isinstance(model, ServedModel):
                await model.start(on_fatal=self._died)
        for name, model in self.models.items():
            m.model_ready.labels(model=name).set(1 if model.ready else 0)
        self._set_state(State.READY)

    def _publish(self, name: str, runtime: Runtime) -> None:
        m = self.metrics
        m.model_size.labels(model=name, variant=runtime.variant).set(runtime.model_bytes)
        m.queue_capacity.labels(model=name).set(self.settings.queue_capacity)
        m.model_info.labels(model=name).info(
            {
                "name": runtime.name,
                "variant": runtime.variant,
                "sha256": runtime.sha256,
                "torch_version": torch.__version__,
                "trace_shape": f"{runtime.batch_size}x{runtime.seq_len}",
                "engine": runtime.engine_name,
                "int8_kernel": self.cpu["int8_kernel"],
                "random_init": str(runtime.manifest.source.random_init).lower(),
            }
        )

    def _died(self, exc: BaseException) -> None:
        # No silent zombie: unready at once, and the owner stops the process so a supervisor restarts it.
        self.fatal = exc
        self._set_state(State.DEAD)
        log.critical("model worker died (%r); stopping the server", exc)
        if self._on_fatal is not None:
            self._on_fatal(exc)

    def begin_shutdown(self) -> None:
        """Stop reporting ready (load balancers stop sending) while accepted work finishes."""
        if self.state in (State.STARTING, State.READY):
            self._set_state(State.DRAINING)

    async def stop(self) -> bool:
        """Answer everything already accepted, then stop the workers; False if the grace period ran out first."""
        self.begin_shutdown()
        drained = True
        for model in self.models.values():  # a cascade's stages drain as the models they are
            if isinstance(model, ServedModel):
                drained = await model.stop(self.settings.shutdown_grace_s) and drained
        if not drained:
            log.error("shutdown grace of %.0f s ran out with work queued", self.settings.shutdown_grace_s)
        if self.pool is not None:
            self.pool.shutdown()
        self.drained = drained
        if self.state is not State.DEAD:
            self._set_state(State.STOPPED)
        return drained

    @property
    def is_ready(self) -> bool:
        """Every model warmed up, workers alive, not shutting down."""
        return self.state is State.READY

    def require_ready(self) -> None:
        """Raise the domain error that says why this service cannot take a request now."""
        if self.state is State.READY:
            return
        if self.state in (State.DRAINING, State.STOPPED):
            raise ShuttingDown("the service is shutting down")
        if self.state is State.DEAD:
            raise NotReady("the model worker is not running")
        raise NotReady("the model is not loaded yet")

    # ---- requests -------------------------------------------------------------------------------------

    async def score(
        self,
        pairs: Sequence[tuple[Any, Any]],
        *,
        model: str | None = None,
        version: str | None = None,
        threshold: Any = None,
        client: str = "",
        gone: Callable[[], Awaitable[Any]] | None = None,
    ) -> Scored:
        """Validate, admit, tokenize, batch and score pairs on the named model (the default when None), in order; the
        one path of every protocol.

        Raises the domain errors each protocol renders: ModelNotFound, ValidationFailed (InvalidPair: which pair and
        sentence), Overloaded, NotReady, ShuttingDown, InferenceFailed, or ClientClosed when `gone` (an awaitable that
        completes when the client has left: a closed connection, an expired deadline) completes first; then the
        request's rows leave the queue at once. `client` is who asks, for fair admission.
        """
        return await self.get(model, version).score(pairs, threshold=threshold, client=client, gone=gone)
