"""A bounded queue of pairs, one batch loop, and `workers` single-threaded model workers.

Each request enqueues its rows at once (or is refused with Overloaded: never a wait for space). The loop waits for
a free worker, takes the first row, waits until the batch is full or `max_wait` has passed since that row was queued
(only while some request is still being tokenized: with nothing on its way, a partial batch starts at once), then
hands the batch to that worker's thread and goes back for the next one while it runs: with several workers, batches
run side by side, each on its own thread, all reading the one copy of the weights. A lone request on an idle service
starts at once. Cancelled rows (the client went away) leave the queue immediately; an exception in a forward fails
exactly that batch's rows.

Admission and service are fair between clients (`client`: a peer address, or what a trusted proxy names). A
client's share is the capacity divided by the clients active now (holding rows, or seen in the last second); a
client within its share may fill the whole queue, one over it is admitted only while `reserve` pairs stay free, so a
few clients of big requests cannot keep the queue full. And each batch starts with the oldest row of the client
served least recently, so an admitted single pair waits about one batch, not behind every queued row. Measured
(scripts/reliability.py, "queue fairness", eight clients of 64 long pairs, the default model on 2 workers, AMD EPYC):
the client of single pairs got 429 on 82-89 % of its requests before; with fair admission alone, 100 % 200s at p50
3.7 s (p99 4.4 s); with the round robin as well, 100 % 200s at p50 0.47 s (p99 2.0 s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from app.shared.errors import InferenceFailed, NotReady, Overloaded, ShuttingDown

log = logging.getLogger(__name__)

RowT = TypeVar("RowT")
ACTIVE_WINDOW_S = 1.0  # a client seen this recently counts as active, even between its requests


class ForwardResult(Protocol):
    """What the forward function returns: one score per row given, plus padding figures."""

    scores: list[float]


@dataclass(frozen=True)
class RowResult:
    """One pair's answer and what it waited for."""

    score: float
    queue_seconds: float
    inference_seconds: float
    batch_id: int
    logits: tuple[float, float] | None = None


@dataclass(eq=False)
class _Row(Generic[RowT]):
    item: RowT
    future: asyncio.Future[RowResult]
    client: str = ""
    queued_at: float = field(default_factory=time.perf_counter)


# (worker, rows in the batch, the forward's result or None if it raised, forward seconds, each row's queue wait)
BatchObserver = Callable[[int, int, Any, float, Sequence[float]], None]


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[int]
    owner: object  # the batcher asking
    since: float = field(default_factory=time.perf_counter)


class WorkerPool:
    """Single-threaded model workers shared by every model's batcher. A free worker goes to the batchers waiting for
    one in the order they asked, so batchers of several models take turns batch by batch and a backlog on one model
    cannot starve another (each asks again only after it got one) — except that, for up to `affinity_s` of waiting,
    a batcher of the model another worker is running now goes first.

    Why: the workers share the CPU's last-level cache, and two models' weights evict each other from it. Measured
    (`python -m bench.model_mix`, AMD EPYC Zen 4, 2 cores, 32 MB L3, openvino-int8, 8-pair MRPC dev batches, ms per
    pair): MPNet-base 39.9 beside itself and 58.9 beside MiniLM; MiniLM 6.2 beside itself and 9.2 beside MPNet.
    Running one model on every worker at a time, and switching together, serves a cascade's two stages at their own
    costs (bench.cascade: 1.14-1.38x the cascade's pairs/s of strict turns at 300 ms; 1000 ms did no better).
    """

    def __init__(self, workers: int, affinity_s: float = 0.0) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.workers = workers
        self.affinity_s = affinity_s
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="model")
        self._free: deque[int] = deque(range(workers))
        self._waiting: deque[_Waiter] = deque()
        self._running: dict[int, object] = {}  # worker -> the batcher it was granted to

    async def acquire(self, owner: object = None) -> int:
        """A free worker's number, waiting in line for one; `owner` (the batcher) runs on it until `release`."""
        if self._free and not self._waiting:
            return self._grant(self._free.popleft(), owner)
        waiter = _Waiter(asyncio.get_running_loop().create_future(), owner)
        self._waiting.append(waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(waiter.future.result())  # granted just as the waiter was cancelled: pass it on
            raise

    def release(self, worker: int) -> None:
        self._running.pop(worker, None)
        while self._waiting:
            waiter = self._next()
            self._waiting.remove(waiter)
            if not waiter.future.done():
                waiter.future.set_result(self._grant(worker, waiter.owner))
                return
        self._free.append(worker)

    def _grant(self, worker: int, owner: object) -> int:
        self._running[worker] = owner
        return worker

    def _next(self) -> _Waiter:
        """The first waiter that has waited `affinity_s`, else the first of a model running on another worker, else the
        first in line."""
        if self.affinity_s <= 0:
            return self._waiting[0]
        now = time.perf_counter()
        overdue = next((w for w in self._waiting if now - w.since >= self.affinity_s), None)
        running = self._running.values()
        return overdue or next((w for w in self._waiting if any(w.owner is r for r in running)), self._waiting[0])

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class Batcher(Generic[RowT]):
    """Groups rows from concurrent requests into batches of at most `batch_size` for `forward`, run on a worker of
    `pool` (its own pool of `workers` when none is shared)."""

    def __init__(
        self,
        forward: Callable[[list[RowT]], ForwardResult],
        *,
        batch_size: int,
        max_wait_s: float,
        capacity: int,
        on_batch: BatchObserver | None = None,
        on_depth: Callable[[int], None] | None = None,
        group_key: Callable[[RowT], int] | None = None,
        workers: int = 1,
        reserve: int = 0,
        pool: WorkerPool | None = None,
    ) -> None:
        if not 0 <= reserve < capacity:
            raise ValueError(f"reserve must be from 0 to capacity - 1 ({capacity - 1}), not {reserve}")
        self._forward = forward
        self._owns_pool = pool is None
        self.pool = pool or WorkerPool(workers)
        self.workers = self.pool.workers
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.capacity = capacity
        self.reserve = reserve
        self._held: dict[str, int] = {}  # rows queued or being tokenized, per client
        self._last_served: dict[str, int] = {}  # the batch number in which each client last had the head row
        self._served = 0
        self._seen: dict[str, float] = {}  # when each client last asked for room
        self._on_batch = on_batch
        self._on_depth = on_depth
        self._group_key = group_key
        self._queue: deque[_Row[RowT]] = deque()
        self._wakeup = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._dispatch_failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._batches = 0
        self._incoming = 0
        self._reserved = 0
        self.failure: BaseException | None = None

    # ---- lifecycle ------------------------------------------------------------------------------------

    def start(self, on_fatal: Callable[[BaseException], None] | None = None) -> None:
        """Start the batch loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

        def _done(task: asyncio.Task[None]) -> None:
            if task.cancelled():
                if self._closing and self._dispatch_failure is None:
                    return  # drain gave up on purpose
                failure: BaseException = self._dispatch_failure or RuntimeError("the batch loop was cancelled")
            elif task.exception() is None:
                return
            else:
                failure = task.exception()  # type: ignore[assignment]
            self.failure = failure
            log.critical("batch loop died: %r", failure)
            self._fail_all(InferenceFailed("the model worker stopped"))
            if on_fatal is not None:
                on_fatal(failure)

        self._task.add_done_callback(_done)

    @property
    def alive(self) -> bool:
        """True while the loop runs and has not failed."""
        return self._task is not None and not self._task.done()

    @property
    def depth(self) -> int:
        """Rows waiting (not counting the batch being run)."""
        return len(self._queue)

    async def drain(self, timeout: float) -> bool:
        """Refuse new rows, answer every queued row, stop the loop; False if `timeout` ran out first."""
        self._closing = True
        self._wakeup.set()
        done = True
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                done = False
                self._task.cancel()
                for task in list(self._running):
                    task.cancel()
                self._fail_all(ShuttingDown("the service stopped before this request could run"))
        if self._owns_pool:
            self.pool.shutdown()
        return done

    # ---- submission -----------------------------------------------------------------------------------

    @contextmanager
    def incoming(self, rows: int = 0, client: str = "", *, announce: bool = True) -> Iterator[None]:
        """Announce a request of `rows` pairs on its way in (being tokenized), on the event loop, and hold room for it.

        Admission happens here, before tokenization: rows waiting to be tokenized count against the capacity like
        queued rows, so overload is a 429 at once however the requests arrive (a burst of long-text requests
        cannot pile up unseen in front of the tokenizer). The room is held until `submit` queues the rows or the
        request ends. A partial batch waits (up to max_wait from its first row) only while some request is on its
        way: waiting when none is cannot fill the batch, it only adds max_wait to an idle request's latency.
        `announce=False` holds the room without that: a cascade's room in its accurate model, for pairs of which most
        will never come (a partial batch would wait for them holding a worker).
        """
        self._admit(rows, reserved=0, client=client)
        self._reserved += rows
        self._hold(client, rows)
        self._incoming += announce
        try:
            yield
        finally:
            self._reserved -= rows
            self._release(client, rows)
            self._incoming -= announce
            self._wakeup.set()

    def _admit(self, rows: int, *, reserved: int, client: str) -> None:
        if self._closing:
            raise ShuttingDown("the service is shutting down")
        if self.failure is not None or not self.alive:
            raise NotReady("the model worker is not running")
        waiting = len(self._queue) + self._reserved - reserved
        if waiting + rows > self.capacity:
            raise Overloaded(
                f"queue full ({waiting} of {self.capacity} pairs waiting or being tokenized); retry shortly", retry_after_s=1.0
            )
        now = time.monotonic()
        self._seen[client] = now
        if waiting + rows <= self.capacity - self.reserve:
            return
        held = self._held.get(client, 0) - reserved
        share = self.capacity // max(1, self._active_clients(now))
        if held + rows > max(1, share):
            raise Overloaded(
                f"queue nearly full ({waiting} of {self.capacity} pairs) and this client would hold {held + rows}, over its share "
                f"of {share}; retry shortly",
                retry_after_s=1.0,
            )

    def _active_clients(self, now: float) -> int:
        """Clients holding rows or seen within ACTIVE_WINDOW_S (forgets the others, so the dict stays small)."""
        for client in [c for c, t in self._seen.items() if now - t > ACTIVE_WINDOW_S and c not in self._held]:
            del self._seen[client]
        return len(self._seen.keys() | self._held.keys())

    def _hold(self, client: str, rows: int) -> None:
        self._held[client] = self._held.get(client, 0) + rows

    def _release(self, client: str, rows: int) -> None:
        left = self._held.get(client, 0) - rows
        if left > 0:
            self._held[client] = left
        else:
            self._held.pop(client, None)

    @property
    def reserved(self) -> int:
        """Rows admitted and being tokenized, not yet queued."""
        return self._reserved

    def submit(self, items: Sequence[RowT], *, reserved: int = 0, client: str = "") -> list[asyncio.Future[RowResult]]:
        """Queue all of a request's rows, or none: Overloaded when they do not fit.

        `reserved`: rows of this request already admitted by `incoming` (their room is taken over, not counted twice).
        """
        self._admit(len(items), reserved=min(reserved, self._reserved), client=client)
        loop = asyncio.get_running_loop()
        futures = []
        self._hold(client, len(items))
        for item in items:
            row = _Row(item, loop.create_future(), client)
            row.future.add_done_callback(lambda f, row=row: self._forget_cancelled(f, row))
            self._queue.append(row)
            futures.append(row.future)
        self._depth_changed()
        self._wakeup.set()
        return futures

    def _forget_cancelled(self, future: asyncio.Future[RowResult], row: _Row[RowT]) -> None:
        # A cancelled row (client gone) frees its slot now, not when the loop reaches it.
        if future.cancelled():
            try:
                self._queue.remove(row)
            except ValueError:
                return  # already taken into a batch
            self._release(row.client, 1)
            self._depth_changed()

    def _depth_changed(self) -> None:
        if self._on_depth is not None:
            self._on_depth(len(self._queue))

    def _fail_all(self, error: Exception) -> None:
        while self._queue:
            row = self._queue.popleft()
            self._release(row.client, 1)
            if not row.future.done():
                row.future.set_exception(error)
        self._depth_changed()

    # ---- the loop -------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    if self._running:
                        await asyncio.gather(*self._running, return_exceptions=True)
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            worker = await self.pool.acquire(self)
            if not self._queue:  # every queued row was cancelled while this batcher waited for a worker
                self.pool.release(worker)
                continue
            deadline = self._queue[0].queued_at + self.max_wait_s
            while len(self._queue) < self.batch_size and not self._closing and self._incoming:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            if not self._queue:  # the rows waited for were cancelled meanwhile
                self.pool.release(worker)
                continue
            batch = self._take_batch()
            for row in batch:
                self._release(row.client, 1)
            self._depth_changed()
            task = loop.create_task(self._run(loop, batch, worker), name=f"batch-worker-{worker}")
            self._running.add(task)
            task.add_done_callback(lambda t, batch=batch, worker=worker: self._batch_done(t, batch, worker))

    def _batch_done(self, task: asyncio.Task[None], batch: list[_Row[RowT]], worker: int) -> None:
        self._running.discard(task)
        self.pool.release(worker)
        self._wakeup.set()
        if task.cancelled() and self._closing:  # the drain ran out of time with this batch still running
            for row in batch:
                if not row.future.done():
                    row.future.set_exception(ShuttingDown("the service stopped before this request could finish"))
            return
        failure = task.exception() if not task.cancelled() else asyncio.CancelledError()
        if failure is None:
            return
        # Not a failing forward (that fails its own batch and the worker goes on) but the dispatch itself: a bug.
        # Rows already taken must not hang, and the service must not run on as a half-working zombie.
        for row in batch:
            if not row.future.done():
                row.future.set_exception(InferenceFailed("the model worker stopped"))
        if self._dispatch_failure is None and self._task is not None and not self._task.done():
            self._dispatch_failure = failure
            self._task.cancel()

    def _take_batch(self) -> list[_Row[RowT]]:
        """The head row, then (FIFO) the next rows whose group key is no larger than its own, up to batch_size.

        The head is the oldest row of the client served least recently (round robin over the clients with rows
        queued; with one client, simply the oldest row): a client of single pairs waits one batch behind clients of
        big requests, not behind all their rows. Rows left behind keep their order; each client's turn comes within
        as many batches as there are clients, so none starves.
        """
        head = self._queue[self._head_index()]
        self._queue.remove(head)
        self._served += 1
        self._last_served[head.client] = self._served
        limit = self._group_key(head.item) if self._group_key is not None else None
        batch, rest = [head], deque()
        for row in self._queue:
            if len(batch) < self.batch_size and (limit is None or self._group_key(row.item) <= limit):  # type: ignore[misc]
                batch.append(row)
            else:
                rest.append(row)
        self._queue = rest
        return batch

    def _head_index(self) -> int:
        """Index of the oldest row of the queued client served least recently (0 when one client has rows queued)."""
        first: dict[str, int] = {}
        for index, row in enumerate(self._queue):
            first.setdefault(row.client, index)
        if len(first) == 1:
            return 0
        if len(self._last_served) > 4 * len(first) + 64:  # forget clients that left, so the dict stays small
            self._last_served = {c: t for c, t in self._last_served.items() if c in first}
        client = min(first, key=lambda c: (self._last_served.get(c, 0), first[c]))
        return first[client]

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Row[RowT]], worker: int) -> None:
        self._batches += 1
        batch_id = self._batches
        started = time.perf_counter()
        waits = [started - row.queued_at for row in batch]
        try:
            result = await loop.run_in_executor(self.pool.executor, self._forward, [row.item for row in batch])
            if len(result.scores) != len(batch):
                raise RuntimeError(f"forward returned {len(result.scores)} scores for {len(batch)} rows")
        except Exception as exc:
            log.exception("batch %d of %d rows failed", batch_id, len(batch))
            error = InferenceFailed(f"inference failed for this batch: {type(exc).__name__}")
            for row in batch:
                if not row.future.done():
                    row.future.set_exception(error)
            if self._on_batch is not None:
                self._on_batch(worker, len(batch), None, time.perf_counter() - started, waits)
            return
        elapsed = time.perf_counter() - started
        logits = getattr(result, "logits", None) or [None] * len(batch)
        for row, score, row_logits, wait in zip(batch, result.scores, logits, waits, strict=False):
            if not row.future.done():  # cancelled while running: nobody to answer
                row.future.set_result(RowResult(score, wait, elapsed, batch_id, row_logits))
        if self._on_batch is not None:
            self._on_batch(worker, len(batch), result, elapsed, waits)
