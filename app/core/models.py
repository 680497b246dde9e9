"""The models one server answers with: a `ServedModel` (one artifact: its runtime, its own admission, queue and
batcher on the shared workers, its tokenizer thread) and a `Cascade` (two served models: the fast one scores every
pair, the accurate one re-scores those the fast one is unsure of). Both answer `score`, the one path of every protocol.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from app.core.batcher import Batcher, RowResult, WorkerPool
from app.core.validation import LABELS, ModelId, PairLimits, PairResult, Scored, results_for, validate_pairs, validate_threshold
from app.shared.errors import ClientClosed, InferenceFailed, InvalidPair, NotReady
from app.shared.logs import ExceptionLog
from app.shared.metrics import Metrics
from app.shared.observability import Tracer, now_ns
from artifact.encoding import EncodedPair
from artifact.runtime import BatchResult, Runtime

log = logging.getLogger(__name__)

Gone = Callable[[], Awaitable[Any]] | None


@dataclass(frozen=True)
class Queueing:
    """How each model queues and batches (the deployment's settings, the same for every model)."""

    max_wait_s: float
    capacity: int
    reserve: int


@dataclass(frozen=True)
class _Found:
    """A validated request's rows and their row results, in order."""

    rows: list[EncodedPair]
    found: list[RowResult]


@dataclass(frozen=True)
class _Pending:
    """A request's rows, queued: their futures, and when they were queued (for the trace)."""

    model: ServedModel
    rows: list[EncodedPair]
    futures: list[asyncio.Future[RowResult]]
    submitted_ns: int

    async def result(self, gone: Gone) -> _Found:
        """The rows' results once their batches ran, or ClientClosed (the rows leave the queue) when `gone` fires first."""
        found = await _await_or_leave(self.futures, gone)
        tracer = self.model.tracer
        if tracer.enabled:  # intervals measured on the worker threads, recorded as this request's child spans
            queued_ns = int(max(r.queue_seconds for r in found) * 1e9)
            start = self.submitted_ns + queued_ns
            tracer.record("queue wait", self.submitted_ns, start, pairs=len(self.rows), model=self.model.name)
            for batch_id, seconds in {r.batch_id: r.inference_seconds for r in found}.items():
                tracer.record("model forward", start, start + int(seconds * 1e9), batch=batch_id, model=self.model.name)
        return _Found(self.rows, found)


class ServedModel:
    """One artifact behind the shared workers: its admission, queue and batcher, its tokenizer thread, its metrics."""

    kind = "model"

    def __init__(
        self, name: str, runtime: Runtime, pool: WorkerPool, queueing: Queueing, limits: PairLimits, metrics: Metrics, tracer: Tracer
    ) -> None:
        self.name = name
        self.runtime = runtime
        self.limits = limits
        self.metrics = metrics
        self.tracer = tracer
        self.id = ModelId(
            name=name, version=runtime.sha256[:12], variant=runtime.variant, sha256=runtime.sha256, engine=runtime.engine_name
        )
        self.batcher: Batcher[EncodedPair] = Batcher(
            runtime.forward,
            batch_size=runtime.batch_size,
            max_wait_s=queueing.max_wait_s,
            capacity=queueing.capacity,
            on_batch=self._observe_batch,
            on_depth=metrics.queue_depth.labels(model=name).set,
            group_key=runtime.columns_for if runtime.padding == "buckets" else None,
            reserve=queueing.reserve,
            pool=pool,
        )
        self._tokenizer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tokenize-{name}")
        self._log_exception = ExceptionLog(log)
        self.ready = False
        # Every series of this model exists from the start, at 0, so rates and alerts see a 0 before the first request.
        for metric in (metrics.tokenize_duration, metrics.queue_wait, metrics.inference_duration, metrics.batch_rows,
                       metrics.batch_token_fill, metrics.batches_failed, metrics.tokenize_pending, metrics.queue_depth):  # fmt: skip
            metric.labels(model=name)
        for label in LABELS:
            metrics.predictions.labels(model=name, label=label)

    @property
    def stages(self) -> tuple[str, ...]:
        return ()

    async def start(self, on_fatal: Callable[[BaseException], None]) -> None:
        """Warm up at every shape this model may use (off the loop), then start its batcher."""
        started = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(self._tokenizer, self.runtime.warm_up)
        log.info("%s warmed up in %.2f s", self.name, time.perf_counter() - started)
        self.batcher.start(on_fatal=on_fatal)
        self.ready = True
        self.metrics.model_ready.labels(model=self.name).set(1)

    async def stop(self, grace: float) -> bool:
        self.ready = False
        self.metrics.model_ready.labels(model=self.name).set(0)
        drained = await self.batcher.drain(grace)
        self._tokenizer.shutdown(wait=False, cancel_futures=True)
        return drained

    # ---- requests -------------------------------------------------------------------------------------

    async def score(self, pairs: Sequence[tuple[Any, Any]], *, threshold: Any = None, client: str = "", gone: Gone = None) -> Scored:
        """Validate, admit, tokenize, batch and score pairs, in order (see PredictionService.score)."""
        checked = validate_pairs(pairs, self.limits)
        cut = validate_threshold(threshold)
        # Admitted (or refused with Overloaded) before tokenization; a partial batch may wait for these rows.
        try:
            with self.batcher.incoming(len(checked), client):
                pending = await self.submit(checked, client=client)
        finally:
            self.pending_changed()  # also after a refusal or a failure: nothing stays "pending"
        return self.answer(await pending.result(gone), cut)

    def pending_changed(self) -> None:
        self.metrics.tokenize_pending.labels(model=self.name).set(self.batcher.reserved)

    async def submit(self, checked: list[tuple[str, str]], *, client: str) -> _Pending:
        """Tokenize validated pairs and queue them, in the room this request holds (`Batcher.incoming`)."""
        loop = asyncio.get_running_loop()
        self.pending_changed()
        started = time.perf_counter()
        with self.tracer.span("tokenize", pairs=len(checked), model=self.name):
            rows = await loop.run_in_executor(self._tokenizer, self._encode, checked)
        self.metrics.tokenize_duration.labels(model=self.name).observe(time.perf_counter() - started)
        _require_tokens(rows)
        submitted_ns = now_ns()
        futures = self.batcher.submit(rows, reserved=len(rows), client=client)
        return _Pending(self, rows, futures, submitted_ns)

    def answer(self, run: _Found, cut: float, decided_by: Sequence[str] | None = None) -> Scored:
        found, rows = run.found, run.rows
        results = results_for(
            [r.score for r in found],
            [r.logits for r in found],
            [len(row) for row in rows],
            [row.truncated for row in rows],
            cut,
            decided_by or [self.name] * len(rows),
        )
        for result in results:
            self.metrics.predictions.labels(model=self.name, label=result.label).inc()
        return Scored(
            results=results,
            model=self.id,
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

    def _observe_batch(self, worker: int, rows: int, result: BatchResult | None, seconds: float, waits: Sequence[float]) -> None:
        m, name = self.metrics, self.name
        m.worker_busy.labels(worker=str(worker)).inc(seconds)
        m.worker_batches.labels(worker=str(worker)).inc()
        for wait in waits:
            m.queue_wait.labels(model=name).observe(wait)
        if result is None:
            m.batches_failed.labels(model=name).inc()
            return
        m.inference_duration.labels(model=name).observe(seconds)
        m.batch_rows.labels(model=name).observe(rows)
        m.batch_token_fill.labels(model=name).observe(result.padded.real_tokens / result.padded.padded_tokens)


@dataclass(frozen=True)
class Band:
    """The fast model's scores the cascade is unsure of: [low, high). A pair scored inside it is scored again."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"a cascade band needs 0 <= low <= high <= 1, not [{self.low}, {self.high})")

    def holds(self, score: float) -> bool:
        return self.low <= score < self.high


class Cascade:
    """Two served models as one: `fast` scores every pair; a pair whose fast score lies in the band is scored again by
    `accurate`, whose answer stands. Each answer says which model decided it.

    Its cost is admitted as such: a request holds room for all its pairs in both models' queues from the start (an
    escalated pair is never refused halfway), and the room it does not use in the accurate queue is given back when
    the request ends. The escalated pairs go through the accurate model's own queue and batcher: they batch with each
    other and with calls made to the accurate model directly.
    """

    kind = "cascade"

    def __init__(self, name: str, fast: ServedModel, accurate: ServedModel, band: Band, metrics: Metrics, source: dict[str, Any]) -> None:
        self.name = name
        self.fast = fast
        self.accurate = accurate
        self.band = band
        self.metrics = metrics
        self.source = source  # what the cascade's file says of how its band was chosen
        self.limits = PairLimits(
            min(fast.limits.max_pairs, accurate.limits.max_pairs), min(fast.limits.max_chars, accurate.limits.max_chars)
        )
        version = f"{fast.id.version}+{accurate.id.version}"
        self.id = ModelId(name=name, version=version, variant="cascade", sha256=version, engine=f"{fast.id.engine}+{accurate.id.engine}")
        for stage in (fast.name, accurate.name):
            metrics.cascade_pairs.labels(model=name, decided_by=stage)

    @property
    def ready(self) -> bool:
        return self.fast.ready and self.accurate.ready

    @property
    def stages(self) -> tuple[str, ...]:
        return (self.fast.name, self.accurate.name)

    async def score(self, pairs: Sequence[tuple[Any, Any]], *, threshold: Any = None, client: str = "", gone: Gone = None) -> Scored:
        checked = validate_pairs(pairs, self.limits)
        cut = validate_threshold(threshold)
        n = len(checked)
        second: _Found | None = None
        try:
            # Room for every pair in the accurate queue until it is known which escalate; not announced as coming, so
            # the accurate model's partial batches do not wait for pairs that mostly stay with the fast model.
            with self.accurate.batcher.incoming(n, client, announce=False):
                try:
                    with self.fast.batcher.incoming(n, client):
                        pending = await self.fast.submit(checked, client=client)
                finally:
                    self.fast.pending_changed()
                first = await pending.result(gone)
                escalate = [i for i, r in enumerate(first.found) if self.band.holds(r.score)]
                escalated = await self.accurate.submit([checked[i] for i in escalate], client=client) if escalate else None
        finally:
            self.accurate.pending_changed()
        if escalated is not None:
            second = await escalated.result(gone)
        found, rows, decided = list(first.found), list(first.rows), [self.fast.name] * n
        if second is not None:
            for j, i in enumerate(escalate):
                found[i], rows[i], decided[i] = second.found[j], second.rows[j], self.accurate.name
        self.metrics.cascade_pairs.labels(model=self.name, decided_by=self.fast.name).inc(n - len(escalate))
        self.metrics.cascade_pairs.labels(model=self.name, decided_by=self.accurate.name).inc(len(escalate))
        results = results_for(
            [r.score for r in found], [r.logits for r in found], [len(r) for r in rows], [r.truncated for r in rows], cut, decided
        )
        for result in results:
            self.metrics.predictions.labels(model=self.name, label=result.label).inc()
        queued = max(r.queue_seconds for r in first.found) + (max(r.queue_seconds for r in second.found) if second else 0.0)
        inference = sum({r.batch_id: r.inference_seconds for r in first.found}.values())
        if second is not None:
            inference += sum({r.batch_id: r.inference_seconds for r in second.found}.values())
        return Scored(results=results, model=self.id, queue_seconds=queued, inference_seconds=inference)


Model = ServedModel | Cascade


def _require_tokens(rows: Sequence[EncodedPair]) -> None:
    """A sentence the tokenizer reduced to nothing reaches the model as nothing: refuse it (the pattern check before
    tokenization catches the known cases; this catches what the tokenizer drops beyond them)."""
    for i, row in enumerate(rows):
        for position, count in enumerate(row.sentence_tokens):
            if count == 0:
                raise InvalidPair(i, position, "has no tokens (only whitespace, control, zero-width or combining characters)")


async def _await_or_leave(futures: list[asyncio.Future[RowResult]], disconnected: Gone) -> list[RowResult]:
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


def _abandon(gathered: asyncio.Future[Any]) -> None:
    """Cancel a request's row futures (freeing their queue slots) and mark the outcome as seen, so asyncio
    does not log "exception was never retrieved" for a client that simply left."""
    gathered.cancel()
    gathered.add_done_callback(lambda f: f.cancelled() or f.exception())


__all__ = ["Band", "Cascade", "Model", "NotReady", "PairResult", "Queueing", "ServedModel"]
