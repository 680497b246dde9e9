"""The batcher alone, with a fake forward: size, deadline, order, overload, cancellation, error fan-out, drain."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from app.core.batcher import Batcher, WorkerPool
from app.shared.errors import InferenceFailed, NotReady, Overloaded, ShuttingDown, kind_of
from app.transport.http_errors import headers_for


@dataclass
class FakeResult:
    scores: list[float]


class FakeModel:
    """Scores each row with its own value; records batch sizes; can be held or made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_with: Exception | None = None

    def forward(self, rows: list[float]) -> FakeResult:
        assert self.gate.wait(5), "test forgot to open the gate"
        self.batches.append(list(rows))
        if self.fail_with is not None:
            raise self.fail_with
        return FakeResult([r / 100 for r in rows])


def make(model: FakeModel, *, wait: float = 0.05, capacity: int = 64, workers: int = 1) -> Batcher[float]:
    return Batcher(model.forward, batch_size=8, max_wait_s=wait, capacity=capacity, workers=workers)


async def until(condition: Callable[[], bool], turns: int = 100_000) -> None:
    """Give the event loop (and the worker threads) turns until `condition` holds: a wait on a state, never on a time."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the awaited state never came")


def test_rows_of_concurrent_requests_share_batches_of_at_most_eight():
    async def scenario():
        model = FakeModel()
        batcher = make(model, wait=0.2)
        batcher.start()
        futures = [batcher.submit([float(i)]) for i in range(12)]
        results = [(await asyncio.gather(*f))[0] for f in futures]
        await batcher.drain(1)
        return model, results

    model, results = asyncio.run(scenario())
    assert [len(b) for b in model.batches] == [8, 4]
    assert [r.score for r in results] == [i / 100 for i in range(12)]
    assert results[0].batch_id == 1 and results[11].batch_id == 2


def test_a_lone_row_waits_at_most_max_wait_while_a_request_is_on_its_way():
    async def scenario():
        batcher = make(FakeModel(), wait=0.05)
        batcher.start()
        with batcher.incoming():  # someone is tokenizing, and never arrives
            (result,) = await asyncio.wait_for(asyncio.gather(*batcher.submit([1.0])), 30)  # a liveness bound, not a time asserted
        await batcher.drain(1)
        return result

    result = asyncio.run(scenario())
    assert result.queue_seconds >= 0.045  # it did wait for the request on its way, as long as max_wait
    assert result.batch_id == 1


def test_a_partial_batch_starts_at_once_when_no_request_is_on_its_way():
    async def scenario():
        model = FakeModel()
        batcher = make(model, wait=5.0)
        batcher.start()
        (alone,) = await asyncio.wait_for(asyncio.gather(*batcher.submit([1.0])), 2)  # not 5 s
        with batcher.incoming():
            first = batcher.submit([2.0])
            for _ in range(20):  # loop turns in which the batch keeps waiting for the request on its way ...
                await asyncio.sleep(0)
            assert not first[0].done() and batcher.depth == 1
        second = batcher.submit([3.0])  # ... which arrives: both run in one batch
        results = await asyncio.wait_for(asyncio.gather(*first, *second), 2)
        await batcher.drain(1)
        return model, alone, results

    model, _alone, results = asyncio.run(scenario())
    assert model.batches == [[1.0], [2.0, 3.0]]
    assert results[0].batch_id == results[1].batch_id


def test_a_request_larger_than_a_batch_keeps_its_order():
    async def scenario():
        model = FakeModel()
        batcher = make(model, wait=0.01)
        batcher.start()
        results = await asyncio.gather(*batcher.submit([float(i) for i in range(19)]))
        await batcher.drain(1)
        return model, results

    model, results = asyncio.run(scenario())
    assert [len(b) for b in model.batches] == [8, 8, 3]
    assert [r.score for r in results] == [i / 100 for i in range(19)]


def test_overload_is_refused_at_once_and_whole():
    async def scenario():
        model = FakeModel()
        model.gate.clear()
        batcher = make(model, wait=0.0, capacity=10)
        batcher.start()
        first = batcher.submit([1.0] * 8)  # taken into a batch, blocked in forward
        await until(lambda: batcher.depth == 0)
        queued = batcher.submit([2.0] * 10)  # fills the queue exactly
        with pytest.raises(Overloaded) as info:
            batcher.submit([3.0])
        depth = batcher.depth
        model.gate.set()
        await asyncio.gather(*first, *queued)
        await batcher.drain(1)
        return info.value, depth

    error, depth = asyncio.run(scenario())
    assert depth == 10
    assert kind_of(error).http == 429 and headers_for(error)["Retry-After"] == "1"  # mapped once, at the HTTP edge


def test_cancelled_rows_free_their_slots_and_are_never_run():
    async def scenario():
        model = FakeModel()
        model.gate.clear()
        batcher = make(model, wait=0.0, capacity=16)
        batcher.start()
        running = batcher.submit([1.0] * 8)
        await until(lambda: batcher.depth == 0)
        gone = batcher.submit([99.0] * 4)
        assert batcher.depth == 4
        for f in gone:
            f.cancel()
        await asyncio.sleep(0)  # done callbacks run on the next loop turn
        depth_after_cancel = batcher.depth
        model.gate.set()
        await asyncio.gather(*running)
        await batcher.drain(1)
        return model, depth_after_cancel

    model, depth = asyncio.run(scenario())
    assert depth == 0
    assert all(99.0 not in batch for batch in model.batches)


def test_a_failing_forward_fails_its_batch_only_and_the_worker_goes_on():
    async def scenario():
        model = FakeModel()
        model.fail_with = RuntimeError("boom")
        batcher = make(model, wait=0.0)
        batcher.start()
        failed = await asyncio.gather(*batcher.submit([1.0, 2.0]), return_exceptions=True)
        model.fail_with = None
        ok = await asyncio.gather(*batcher.submit([3.0]))
        alive = batcher.alive
        await batcher.drain(1)
        return failed, ok, alive

    failed, ok, alive = asyncio.run(scenario())
    assert all(isinstance(e, InferenceFailed) and kind_of(e).http == 500 for e in failed)
    assert ok[0].score == 0.03 and alive


def test_drain_answers_everything_queued_then_refuses():
    async def scenario():
        model = FakeModel()
        batcher = make(model, wait=10.0)  # would wait long for a full batch, but draining does not
        batcher.start()
        futures = batcher.submit([1.0, 2.0, 3.0])
        drained = await batcher.drain(5)
        with pytest.raises(ShuttingDown):
            batcher.submit([4.0])
        return drained, [f.result().score for f in futures]

    drained, scores = asyncio.run(scenario())
    assert drained and scores == [0.01, 0.02, 0.03]


def test_a_dead_loop_is_reported_and_new_rows_are_refused_as_not_ready():
    """Not a 500 `inference` for the next request: the same NotReady (503) that /readyz reports."""

    async def scenario():
        model = FakeModel()
        batcher = make(model, wait=0.0)
        fatal: list[BaseException] = []

        async def broken_loop() -> None:
            raise ValueError("loop bug")

        batcher._loop = broken_loop  # type: ignore[method-assign]
        batcher.start(on_fatal=fatal.append)
        await until(lambda: not batcher.alive)
        with pytest.raises(NotReady, match="not running"):
            batcher.submit([1.0])
        return batcher, fatal

    batcher, fatal = asyncio.run(scenario())
    assert not batcher.alive
    assert isinstance(fatal[0], ValueError) and isinstance(batcher.failure, ValueError)


@pytest.mark.parametrize(
    ("batch_size", "rows", "expected"),
    [
        # a long head takes any rows; then a short head takes only short ones; the long 70 is not starved
        (3, [60.0, 2.0, 70.0, 3.0, 4.0, 5.0], [[60.0, 2.0, 70.0], [3.0, 4.0, 5.0]]),
        # a short head leaves the long rows for a batch of their own
        (4, [2.0, 90.0, 3.0, 91.0, 4.0], [[2.0, 3.0, 4.0], [90.0, 91.0]]),
    ],
)
def test_length_aware_assembly_groups_rows_no_longer_than_the_oldest(batch_size: int, rows: list[float], expected: list[list[float]]):
    async def scenario():
        model = FakeModel()
        model.gate.clear()
        batcher = Batcher(model.forward, batch_size=batch_size, max_wait_s=0.0, capacity=64, group_key=lambda row: 32 if row < 50 else 128)
        batcher.start()
        first = batcher.submit([1.0])  # taken alone and held at the gate while the rest queue up
        await until(lambda: batcher.depth == 0)
        rest = batcher.submit(rows)
        model.gate.set()
        await asyncio.gather(*first, *rest)
        await batcher.drain(1)
        return model.batches

    assert asyncio.run(scenario()) == [[1.0], *expected]


def test_rows_being_tokenized_count_against_the_capacity():
    """Admission happens before tokenization: work on its way in is refused at once when it cannot fit."""

    async def scenario():
        model = FakeModel()
        batcher = make(model, wait=0.0, capacity=10)
        batcher.start()
        with batcher.incoming(6):  # six pairs being tokenized, nothing queued yet
            assert batcher.reserved == 6 and batcher.depth == 0
            with pytest.raises(Overloaded, match="6 of 10 pairs waiting or being tokenized"), batcher.incoming(5):
                pass
            with batcher.incoming(4):  # exactly fits
                futures = batcher.submit([1.0] * 4, reserved=4)
            futures += batcher.submit([2.0] * 6, reserved=6)  # its own room is taken over, not counted twice
        assert batcher.reserved == 0
        results = await asyncio.gather(*futures)
        await batcher.drain(1)
        return [r.score for r in results]

    assert asyncio.run(scenario()) == [0.01] * 4 + [0.02] * 6


class TwoGates(FakeModel):
    """Counts how many forwards run at once; each waits at the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.most_inside = 0
        self.lock = threading.Lock()
        self.threads: set[str] = set()

    def forward(self, rows: list[float]) -> FakeResult:
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.threads.add(threading.current_thread().name)
        try:
            if any(r < 0 for r in rows):
                raise RuntimeError("this batch fails")
            return super().forward(rows)
        finally:
            with self.lock:
                self.inside -= 1


def test_two_workers_run_batches_side_by_side_and_answer_rows_in_order():
    async def scenario():
        model = TwoGates()
        model.gate.clear()
        batcher = make(model, wait=0.0, workers=2)
        batcher.start()
        first = batcher.submit([float(i) for i in range(8)])
        await until(lambda: model.inside == 1)
        second = batcher.submit([float(i) for i in range(8, 16)])
        await until(lambda: model.inside == 2)  # both workers are in a forward, neither finished
        inside_while_held = model.inside
        third = batcher.submit([16.0])  # waits for a free worker
        for _ in range(20):
            await asyncio.sleep(0)
        depth_while_busy = batcher.depth
        model.gate.set()
        results = await asyncio.gather(*first, *second, *third)
        await batcher.drain(1)
        return model, inside_while_held, depth_while_busy, results

    model, inside, depth, results = asyncio.run(scenario())
    assert inside == 2 and model.most_inside == 2 and len(model.threads) == 2
    assert depth == 1  # no third worker: the lone row waits in the queue, not in a thread
    assert [r.score for r in results] == [i / 100 for i in range(17)]


def test_a_failing_forward_on_one_worker_fails_only_its_batch():
    async def scenario():
        model = TwoGates()
        model.gate.clear()
        batcher = make(model, wait=0.0, workers=2)
        batcher.start()
        good = batcher.submit([2.0] * 8)
        await until(lambda: model.inside == 1)  # held at the gate on one worker
        bad = batcher.submit([-1.0] * 8)  # fails on the other, without waiting
        await until(lambda: all(f.done() for f in bad))
        model.gate.set()
        bad_results = await asyncio.gather(*bad, return_exceptions=True)
        good_results = await asyncio.gather(*good)
        later = await asyncio.gather(*batcher.submit([3.0]))
        alive = batcher.alive
        await batcher.drain(1)
        return bad_results, good_results, later, alive

    bad, good, later, alive = asyncio.run(scenario())
    assert all(isinstance(e, InferenceFailed) for e in bad)
    assert [r.score for r in good] == [0.02] * 8 and [r.score for r in later] == [0.03] and alive


def test_drain_waits_for_every_workers_batch():
    async def scenario():
        model = TwoGates()
        model.gate.clear()
        batcher = make(model, wait=0.0, workers=2)
        batcher.start()
        futures = batcher.submit([1.0] * 8)
        await until(lambda: model.inside == 1)
        futures += batcher.submit([2.0] * 8)
        futures += batcher.submit([3.0] * 4)
        await until(lambda: model.inside == 2)
        draining = asyncio.ensure_future(batcher.drain(30))
        await until(lambda: batcher._closing)
        model.gate.set()  # opened only once the drain has begun: it must still run every queued batch
        drained = await draining
        return drained, [f.result().score for f in futures]

    drained, scores = asyncio.run(scenario())
    assert drained and scores == [0.01] * 8 + [0.02] * 8 + [0.03] * 4


def test_a_client_over_its_share_cannot_take_the_reserve_while_another_client_can():
    """Fair admission: capacity 32, reserve 8. Client A fills 24 pairs freely; past that it is over its share (32 / 2
    active clients = 16) and refused; client B, within its share, still gets the reserve."""

    async def scenario():
        model = FakeModel()
        model.gate.clear()
        batcher = Batcher(model.forward, batch_size=8, max_wait_s=0.0, capacity=32, reserve=8)
        batcher.start()
        running = batcher.submit([1.0] * 8, client="a")  # taken into a batch, held at the gate
        await until(lambda: batcher.depth == 0)
        queued = batcher.submit([1.0] * 16, client="a")  # 16 queued: under capacity - reserve, admitted without a share check
        batcher.submit([2.0], client="b")  # b is seen: two active clients now
        with pytest.raises(Overloaded, match="over its share of 16"):
            batcher.submit([1.0] * 8, client="a")  # would reach 25 of 32: into the reserve, and a would hold 24 > 16
        admitted_b = batcher.submit([2.0] * 15, client="b")  # b holds 16 <= 16: the reserve is for it, up to the capacity
        with pytest.raises(Overloaded, match="queue full"):
            batcher.submit([3.0], client="c")  # the capacity itself still holds for everyone
        model.gate.set()
        await asyncio.gather(*running, *queued, *admitted_b)
        await batcher.drain(1)
        return batcher._held

    assert asyncio.run(scenario()) == {}  # every row released its client's hold


def test_with_one_client_the_whole_queue_is_its_share():
    async def scenario():
        model = FakeModel()
        model.gate.clear()
        batcher = Batcher(model.forward, batch_size=8, max_wait_s=0.0, capacity=16, reserve=8)
        batcher.start()
        first = batcher.submit([1.0] * 8, client="a")
        await until(lambda: batcher.depth == 0)  # taken into a batch
        rest = batcher.submit([1.0] * 16, client="a")  # alone, a may fill the queue, reserve included
        depth = batcher.depth
        model.gate.set()
        answered = await asyncio.gather(*first, *rest)
        await batcher.drain(1)
        return depth, len(answered)

    assert asyncio.run(scenario()) == (16, 24)  # all 16 admitted (no Overloaded raised), every row answered


def test_a_batch_starts_with_the_client_served_least_recently():
    """Round robin over clients for the head row: b's one row runs in the second batch, not after all of a's."""

    async def scenario():
        model = FakeModel()
        model.gate.clear()
        batcher = Batcher(model.forward, batch_size=8, max_wait_s=0.0, capacity=64)
        batcher.start()
        a = batcher.submit([float(i) for i in range(1, 25)], client="a")  # three batches of a
        b = batcher.submit([99.0], client="b")
        model.gate.set()
        await asyncio.gather(*a, *b)
        await batcher.drain(1)
        return model.batches

    batches = asyncio.run(scenario())
    assert batches[0] == [float(i) for i in range(1, 9)]  # a was first and alone when the loop woke
    assert batches[1][0] == 99.0 and len(batches) == 4  # then b's turn: its row heads the next batch


def test_room_held_without_announcing_counts_against_capacity_but_holds_no_batch_back():
    """A cascade's room in its accurate model: admitted like queued rows, but no partial batch waits for it."""

    async def scenario():
        model = FakeModel()
        batcher = make(model, wait=1000.0, capacity=4)  # a batch that waited for the room would outlast the bound below
        batcher.start()
        with batcher.incoming(3, announce=False):
            with pytest.raises(Overloaded):
                batcher.submit([1.0, 2.0])  # 3 held + 2 > 4
            (result,) = await asyncio.wait_for(asyncio.gather(*batcher.submit([1.0])), 30)  # a liveness bound
        await batcher.drain(1)
        return model, result

    model, result = asyncio.run(scenario())
    assert model.batches == [[1.0]]
    assert result.score == 0.01


def two_models_on_two_workers(affinity_s: float, *, aged: bool = False) -> list[str]:
    """Models `a` and `b` share two workers: a's first batch holds one, b's first the other; then b asks for a worker,
    then a. b's first batch ends first. The order in which batches started (`aged`: b has waited `affinity_s` when its
    first batch ends)."""

    async def scenario() -> list[str]:
        started: list[str] = []
        gates = {tag: threading.Event() for tag in "ab"}

        def forward(tag: str) -> Callable[[list[float]], FakeResult]:
            def run(rows: list[float]) -> FakeResult:
                started.append(tag)
                assert gates[tag].wait(5), "test forgot to open the gate"
                return FakeResult([0.0] * len(rows))

            return run

        pool = WorkerPool(2, affinity_s)
        a, b = (Batcher(forward(tag), batch_size=8, max_wait_s=0.0, capacity=64, pool=pool) for tag in "ab")
        a.start()
        b.start()
        futures = a.submit([1.0] * 8)
        await until(lambda: started == ["a"])
        futures += b.submit([1.0] * 8)
        await until(lambda: started == ["a", "b"])  # each holds a worker
        futures += b.submit([1.0] * 8)
        await until(lambda: len(pool._waiting) == 1)
        futures += a.submit([1.0] * 8)
        await until(lambda: len(pool._waiting) == 2)  # b asked first, then a
        if aged:
            await asyncio.sleep(2 * affinity_s)  # b has now waited past the bound: an age, not a wait for an outcome
        gates["b"].set()  # b's worker frees while a's first batch still runs
        await until(lambda: len(started) >= 3)  # the third batch started (b's second may already have ended)
        gates["a"].set()
        await asyncio.gather(*futures)
        for batcher in (a, b):
            await batcher.drain(1)
        pool.shutdown()
        return started

    return asyncio.run(scenario())


def test_models_on_shared_workers_take_turns_in_the_order_they_asked():
    assert two_models_on_two_workers(0.0) == ["a", "b", "b", "a"]


def test_a_free_worker_goes_to_the_model_another_worker_is_running():
    assert two_models_on_two_workers(60.0) == ["a", "b", "a", "b"]  # a runs on both workers, then b


def test_a_model_is_passed_over_for_the_running_one_only_until_it_has_waited_the_bound():
    assert two_models_on_two_workers(0.02, aged=True) == ["a", "b", "b", "a"]
