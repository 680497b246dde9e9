"""What the guarded h11 protocol costs against uvicorn's httptools, side by side on one artifact.

Starts `python -m app` (h11 with paraserve's connection limits) and the same app under
`uvicorn --factory app.main:create_app --http httptools`, one at a time on 127.0.0.1, and runs the same closed
loop against each: GET /healthz (pure HTTP cost, the worst case for h11) and POST /predict of single MRPC-like
pairs (what the service is for). Prints requests/s and p50/p99; writes JSON.

    python bench/http_protocol.py --artifact model-cache/default/artifacts/int8-calibrated [--seconds 15] [--clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from artifact.kernels import cpu_description
from harness.local_server import free_port, running_server, wait_ready
from model_build.parity_pairs import PARITY_PAIRS


async def closed_loop(url: str, path: str, clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=clients)) as client:

        async def worker(i: int) -> None:
            nonlocal failures
            n = 0
            while time.monotonic() < deadline and n < 100_000:
                a, b = PARITY_PAIRS[(i + n) % len(PARITY_PAIRS)]
                started = time.perf_counter()
                if path == "/predict":
                    r = await client.post(url + path, json={"pairs": [{"sentence1": a, "sentence2": b}]})
                else:
                    r = await client.get(url + path)
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1
                n += 1

        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        elapsed = time.monotonic() - started
    q = statistics.quantiles(latencies, n=100)
    return {"requests_per_s": len(latencies) / elapsed, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "failures": failures}


def measure(url: str, clients: int, seconds: float) -> dict[str, Any]:
    return {path: asyncio.run(closed_loop(url, path, clients, seconds)) for path in ("/healthz", "/predict")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--json", type=Path, default=Path("bench-out/http_protocol.json"))
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with running_server(args.artifact) as server:
        results["guarded h11 (python -m app)"] = measure(server.url, args.clients, args.seconds)
    port = free_port()
    env = dict(os.environ, PARASERVE_ARTIFACT_DIR=str(args.artifact), PARASERVE_LOG_LEVEL="warning")
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "app.main:create_app",
        "--http",
        "httptools",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command, env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}", 120, process)
        results["httptools (uvicorn default)"] = measure(f"http://127.0.0.1:{port}", args.clients, args.seconds)
    finally:
        process.terminate()
        process.wait(60)
    cpu = cpu_description()
    print(f"\n{args.clients} clients, {args.seconds:.0f} s per cell, {args.artifact}; CPU {cpu['cpu_model']} ({os.cpu_count()} cores)")
    print(f"{'server':30s} {'/healthz req/s':>15s} {'p50':>7s} {'p99':>7s} {'/predict req/s':>15s} {'p50':>7s} {'p99':>7s}")
    for name, r in results.items():
        h, p = r["/healthz"], r["/predict"]
        print(
            f"{name:30s} {h['requests_per_s']:15.0f} {h['p50_ms']:6.1f}ms {h['p99_ms']:6.1f}ms "
            f"{p['requests_per_s']:15.1f} {p['p50_ms']:6.1f}ms {p['p99_ms']:6.1f}ms"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"cpu": cpu, "clients": args.clients, "seconds": args.seconds, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
