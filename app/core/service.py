"""The prediction service: owns the runtime, the batcher, the tokenizer thread and the one lifecycle state.

Every protocol calls `score` (validation, admission, tokenization, batching, the client-left rule, counting);
routes and health checks ask the service (`state`, `require_ready`); nothing else keeps lifecycle flags.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from typing import Any

import torch

from app.core.batcher import Batcher, RowResult
from app.core.validation import ModelId, PairLimits, Scored, results_for, validate_pairs, validate_threshold
from app.shared.config import Settings
from app.shared.errors import ClientClosed, InferenceFailed, InvalidPair, NotReady, ShuttingDown
from app.shared.logs import ExceptionLog
from app.shared.metrics import Metrics
from app.shared.observability import Tracer, now_ns
from artifact.encoding import EncodedPair
from artifact.kernels import cpu_description
from artifact.runtime import BatchResult, Runtime

log = logging.getLogger(__name__)


class State(StrEnum):
    """starting -> ready -> draining (SIGTERM) -> stopped; ready or draining -> dead when the model worker dies."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    DEAD = "dead"


class PredictionService:
    """The model behind the HTTP layer, from loading to drain; `state` is the one source of readiness."""

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
        self._runtime: Runtime | None = None
        self._batcher: Batcher[EncodedPair] | None = None
        self._tokenizer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self.cpu: dict[str, str] = {}
        self.limits = PairLimits(settings.max_pairs_per_request, settings.max_sentence_chars)
        self._log_exception = ExceptionLog(log)
        self._listeners: list[Callable[[State], None]] = []
        metrics.ready.set(0)

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise NotReady("the model is not loaded yet")
        return self._runtime

    @property
    def model(self) -> ModelId:
        """The loaded artifact, as every protocol names it."""
        rt = self.runtime
        return ModelId(name=rt.name, version=rt.sha256[:12], variant=rt.variant, sha256=rt.sha256, engine=rt.engine_name)

    @property
    def batcher(self) -> Batcher[EncodedPair]:
        if self._batcher is None:
            raise NotReady("the model is not loaded yet")
        return self._batcher

    def _set_state(self, state: State) -> None:
        self.state = state
        self.metrics.ready.set(1 if state is State.READY else 0)
        for listener in self._listeners:
            listener(state)

    def on_state_change(self, listener: Callable[[State], None]) -> None:
        """Call `listener` with every new state (on the event loop): how gRPC's health service follows readiness."""
        self._listeners.append(listener)

    # ---- lifecycle ------------------------------------------------------------------------------------

    async def start(self, runtime: Runtime) -> None:
        """Warm the model up at every shape it may use (off the loop), publish model metrics, start the batcher."""
        self._runtime = runtime
        self._batcher = Batcher(
            runtime.forward,
            batch_size=runtime.batch_size,
            max_wait_s=self.settings.max_batch_wait_ms / 1000,
            capacity=self.settings.queue_capacity,
            on_batch=self._observe_batch,
            on_depth=self.metrics.queue_depth.set,
            group_key=runtime.columns_for if runtime.padding == "buckets" else None,
            workers=self.settings.workers,
            reserve=int(self.settings.queue_capacity * self.settings.queue_reserve),
        )
        m = self.metrics
        m.model_size.labels(variant=runtime.variant).set(runtime.model_bytes)
        self.cpu = cpu_description()  # once: GET /model and the info metric report it, the CPU does not change
        m.model_info.info(
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
        m.queue_capacity.set(self.settings.queue_capacity)
        m.workers.set(self.settings.workers)
        for worker in range(self.settings.workers):  # every worker's series exists from the start, at 0
            m.worker_busy.labels(worker=str(worker))
            m.worker_batches.labels(worker=str(worker))
        started = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(self._tokenizer_pool, runtime.warm_up)
        log.info("warmed up in %.2f s", time.perf_counter() - started)
        self._batcher.start(on_fatal=self._died)
        self._set_state(State.READY)

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
        """Answer everything already accepted, then stop the worker; False if the grace period ran out first."""
        self.begin_shutdown()
        drained = True
        if self._batcher is not None:
            drained = await self._batcher.drain(self.settings.shutdown_grace_s)
        if not drained:
            log.error("shutdown grace of %.0f s ran out with work queued", self.settings.shutdown_grace_s)
        self._tokenizer_pool.shutdown(wait=False, cancel_futures=True)
        self.drained = drained
        if self.state is not State.DEAD:
            self._set_state(State.STOPPED)
        return drained

    @property
    def is_ready(self) -> bool:
        """Warmed up, worker alive, not shutting down."""
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
        threshold: Any = None,
        client: str = "",
        gone: Callable[[], Awaitable[Any]] | None = None,
    ) -> Scored:
        """Validate, admit, tokenize, batch and score pairs, in order; the one path of every protocol.

        Raises the domain errors each protocol renders: ValidationFailed (InvalidPair: which pair and sentence),
        Overloaded, NotReady, ShuttingDown, InferenceFailed, or ClientClosed when `gone` (an awaitable that
        completes when the client has left: a closed connection, an expired deadline) completes first; then the
        request's rows leave the queue at once. `client` is who asks, for fair admission.
        """
        self.require_ready()
        checked = validate_pairs(pairs, self.limits)
        cut = validate_threshold(threshold)
        model = self.model
        loop = asyncio.get_running_loop()
        batcher = self.batcher
        try:
            # Admitted (or refused with Overloaded) before tokenization; a partial batch may wait for these rows.
            with batcher.incoming(len(checked), client):
                self.metrics.tokenize_pending.set(batcher.reserved)
                started = time.perf_counter()
                with self.tracer.span("tokenize", pairs=len(checked)):
                    rows = await loop.run_in_executor(self._tokenizer_pool, self._encode, checked)
                self.metrics.tokenize_duration.observe(time.perf_counter() - started)
                _require_tokens(rows)
                submitted_ns = now_ns()
                futures = batcher.submit(rows, reserved=len(rows), client=client)
        finally:
            self.metrics.tokenize_pending.set(batcher.reserved)  # also after a refusal or a failure: nothing stays "pending"
        found = await self._await_or_leave(futures, gone)
        if self.tracer.enabled:  # intervals measured on the worker threads, recorded as this request's child spans
            queued_ns = int(max(r.queue_seconds for r in found) * 1e9)
            self.tracer.record("queue wait", submitted_ns, submitted_ns + queued_ns, pairs=len(rows))
            for batch_id, seconds in {r.batch_id: r.inference_seconds for r in found}.items():
                self.tracer.record("model forward", submitted_ns + queued_ns, submitted_ns + queued_ns + int(seconds * 1e9), batch=batch_id)
        results = results_for(
            [r.score for r in found], [r.logits for r in found], [len(row) for row in rows], [row.truncated for row in rows], cut
        )
        for result in results:
            self.metrics.predictions.labels(label=result.label).inc()
        return Scored(
            results=results,
            model=model,
            queue_seconds=max(r.queue_seconds for r in found),
            inference_seconds=sum({r.batch_id: r.inference_seconds for r in found}.values()),
        )

    def _encode(self, pairs: list[tuple[str, str]]) -> list[EncodedPair]:
        # Validated text cannot make the tokenizer fail; if it does, that is this server's fault: one 500, one line.
        try:
            return self.runtime.encode(pairs)
        except Exception as exc:
            self._log_exception("tokenization failed", exc)
            raise InferenceFailed(f"tokenization failed: {type(exc).__name__}") from None

    async def _await_or_leave(
        self, futures: list[asyncio.Future[RowResult]], disconnected: Callable[[], Awaitable[Any]] | None
    ) -> list[RowResult]:
        gathered = asyncio.gather(*futures)
        if disconnected is None:
            return await gathered
        watcher = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({gathered, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            _abandon(gathered)
            raise
        finally:
            watcher.cancel()
        if not gathered.done():
            _abandon(gathered)
            raise ClientClosed("client closed the connection before the answer was ready")
        return gathered.result()

    def _observe_batch(self, worker: int, rows: int, result: BatchResult | None, seconds: float, waits: Sequence[float]) -> None:
        m = self.metrics
        m.worker_busy.labels(worker=str(worker)).inc(seconds)
        m.worker_batches.labels(worker=str(worker)).inc()
        for wait in waits:
            m.queue_wait.observe(wait)
        if result is None:
            m.batches_failed.inc()
            return
        m.inference_duration.observe(seconds)
        m.batch_rows.observe(rows)
        m.batch_token_fill.observe(result.padded.real_tokens / result.padded.padded_tokens)


def _require_tokens(rows: Sequence[EncodedPair]) -> None:
    """A sentence the tokenizer reduced to nothing reaches the model as nothing: refuse it (the pattern check before
    tokenization catches the known cases; this catches what the tokenizer drops beyond them)."""
    for i, row in enumerate(rows):
        for position, count in enumerate(row.sentence_tokens):
            if count == 0:
                raise InvalidPair(i, position, "has no tokens (only whitespace, control, zero-width or combining characters)")


def _abandon(gathered: asyncio.Future[Any]) -> None:
    """Cancel a request's row futures (freeing their queue slots) and mark the outcome as seen, so asyncio
    does not log "exception was never retrieved" for a client that simply left."""
    gathered.cancel()
    gathered.add_done_callback(lambda f: f.cancelled() or f.exception())
