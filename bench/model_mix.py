"""Two models on two workers: a forward's cost beside the same model and beside another one.

The workers are single-threaded and share the CPU's last-level cache. This times model A's 8-pair forwards of MRPC
dev (the served runtime, `auto` padding) alone, while another thread runs A too, and while it runs B, for both
orders: the measurement behind the worker pool's model affinity (`PARASERVE_MODEL_AFFINITY_MS`, app/core/batcher.py).
Prints a table and writes JSON with the CPU.

    python -m bench.model_mix --a model-cache/default/artifacts/openvino-int8 \\
        --b model-cache/mpnet-base/artifacts/openvino-int8 --data-dir ../shared/data/mrpc [--pairs 160]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

from artifact.encoding import EncodedPair
from artifact.kernels import cpu_description
from artifact.runtime import Runtime, configure_process
from model_build.mrpc import load_split

BATCH = 8


def ms_per_pair(runtime: Runtime, rows: list[EncodedPair], pairs: int) -> float:
    """Forward `pairs` rows, BATCH at a time, cycling through `rows`; milliseconds per pair."""
    started, done = time.perf_counter(), 0
    while done < pairs:
        start = done % len(rows)
        batch = rows[start : start + BATCH]
        runtime.forward(batch)
        done += len(batch)
    return (time.perf_counter() - started) * 1000 / done


def beside(runtime: Runtime, rows: list[EncodedPair], pairs: int, other: tuple[Runtime, list[EncodedPair]] | None) -> float:
    """A's ms per pair while `other` runs its forwards without pause on a second thread (None: alone)."""
    stop = threading.Event()

    def keep_busy() -> None:
        assert other is not None
        while not stop.is_set():
            ms_per_pair(other[0], other[1], BATCH)

    thread = threading.Thread(target=keep_busy) if other else None
    if thread:
        thread.start()
    try:
        return ms_per_pair(runtime, rows, pairs)
    finally:
        stop.set()
        if thread:
            thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, required=True, help="a variant folder (e.g. the fast model's openvino-int8)")
    parser.add_argument("--b", type=Path, required=True, help="another model's variant folder")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=160, help="dev pairs each model cycles through")
    parser.add_argument("--json", type=Path, default=Path("bench-out/model_mix.json"))
    args = parser.parse_args()
    configure_process(threads=1)
    dev = load_split(args.data_dir, "dev")[: args.pairs]
    pairs = [(p.sentence1, p.sentence2) for p in dev]
    models = {name: Runtime.load(folder, workers=2) for name, folder in (("A", args.a), ("B", args.b))}
    rows = {name: rt.encode(pairs) for name, rt in models.items()}
    for rt in models.values():
        rt.warm_up()
    results: list[dict[str, Any]] = []
    print(f"{'model':40s} {'alone':>8s} {'beside itself':>14s} {'beside the other':>17s}  (ms per pair, {BATCH}-pair batches)")
    for name, other in (("A", "B"), ("B", "A")):
        rt = models[name]
        # The timed model forwards 5x its pairs beside the other, so the other's forwards overlap it throughout.
        n = 5 * len(pairs)
        row = {
            "model": rt.name,
            "folder": str(args.a if name == "A" else args.b),
            "alone_ms": beside(rt, rows[name], n, None),
            "beside_itself_ms": beside(rt, rows[name], n, (rt, rows[name])),
            "beside_other_ms": beside(rt, rows[name], n, (models[other], rows[other])),
        }
        results.append(row)
        print(f"{rt.name:40s} {row['alone_ms']:8.1f} {row['beside_itself_ms']:14.1f} {row['beside_other_ms']:17.1f}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": results, "batch": BATCH, "pairs": len(pairs), "cpu": cpu_description()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
