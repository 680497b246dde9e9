"""The prediction service: tokenize off the event loop, queue through the batcher, watch for clients that leave."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from app.batcher import Batcher, RowResult
from app.config import Settings
from app.errors import ClientClosed
from app.metrics import Metrics
from app.runtime import BatchResult, Runtime
from model_build.encoding import EncodedPair

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """Scores for one request, in order, with the timings the response headers report."""

    scores: list[float]
    queue_seconds: float
    inference_seconds: float


class PredictionService:
    """Owns the runtime, the batcher and the tokenizer thread for the app's lifetime."""

    def __init__(self, runtime: Runtime, settings: Settings, metrics: Metrics) -> None:
        self.runtime = runtime
        self.settings = settings
        self.metrics = metrics
        self.ready = False
        self._tokenizer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self.batcher: Batcher[EncodedPair] = Batcher(
            runtime.forward,
            batch_size=runtime.batch_size,
            max_wait_s=settings.max_batch_wait_ms / 1000,
            capacity=settings.queue_capacity,
            on_batch=self._observe_batch,
            on_depth=metrics.queue_depth.set,
            group_key=runtime.columns_for if runtime.padding == "buckets" else None,
        )

    # ---- lifecycle ------------------------------------------------------------------------------------

    async def start(self, on_fatal: Callable[[BaseException], None] | None = None) -> None:
        """Warm the model up at every shape it may use (off the loop), publish model metrics, start the batcher."""
        m = self.metrics
        m.model_size.labels(variant=self.runtime.variant).set(self.runtime.model_bytes)
        m.model_info.info(
            {
                "name": self.runtime.name,
                "variant": self.runtime.variant,
                "sha256": self.runtime.sha256,
                "torch_version": torch.__version__,
                "trace_shape": f"{self.runtime.batch_size}x{self.runtime.seq_len}",
            }
        )
        m.queue_capacity.set(self.settings.queue_capacity)
        started = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(self._tokenizer_pool, self.runtime.warm_up)
        log.info("warmed up in %.2f s", time.perf_counter() - started)
        self.batcher.start(on_fatal=on_fatal)
        self.ready = True
        m.ready.set(1)

    def begin_shutdown(self) -> None:
        """Stop reporting ready (load balancers stop sending) while accepted work finishes."""
        self.ready = False
        self.metrics.ready.set(0)

    async def stop(self) -> bool:
        """Answer everything already accepted, then stop the worker; False if the grace period ran out first."""
        self.begin_shutdown()
        drained = await self.batcher.drain(self.settings.shutdown_grace_s)
        if not drained:
            log.error("shutdown grace of %.0f s ran out with work queued", self.settings.shutdown_grace_s)
        self._tokenizer_pool.shutdown(wait=False, cancel_futures=True)
        return drained

    @property
    def is_ready(self) -> bool:
        """Warmed up, worker alive, not shutting down."""
        return self.ready and self.batcher.alive

    # ---- requests -------------------------------------------------------------------------------------

    async def predict(self, pairs: Sequence[tuple[str, str]], disconnected: Callable[[], Awaitable[Any]] | None = None) -> Outcome:
        """Score pairs in order; raises Overloaded, ShuttingDown, InferenceFailed or ClientClosed."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        with self.batcher.incoming():  # a partial batch may wait for these rows; none waits for nobody
            rows = await loop.run_in_executor(self._tokenizer_pool, self.runtime.encode, pairs)
        self.metrics.tokenize_duration.observe(time.perf_counter() - started)
        futures = self.batcher.submit(rows)
        results = await self._await_or_leave(futures, disconnected)
        return Outcome(
            scores=[r.score for r in results],
            queue_seconds=max(r.queue_seconds for r in results),
            inference_seconds=sum({r.batch_id: r.inference_seconds for r in results}.values()),
        )

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

    def _observe_batch(self, rows: int, result: BatchResult | None, seconds: float, waits: Sequence[float]) -> None:
        m = self.metrics
        for wait in waits:
            m.queue_wait.observe(wait)
        if result is None:
            m.batches_failed.inc()
            return
        m.inference_duration.observe(seconds)
        m.batch_rows.observe(rows)
        m.batch_token_fill.observe(result.padded.real_tokens / result.padded.padded_tokens)


def _abandon(gathered: asyncio.Future[Any]) -> None:
    """Cancel a request's row futures (freeing their queue slots) and mark the outcome as seen, so asyncio
    does not log "exception was never retrieved" for a client that simply left."""
    gathered.cancel()
    gathered.add_done_callback(lambda f: f.cancelled() or f.exception())
