"""Which HTTP server in front of the app: the same attacks and the same load against each candidate, one after another.

Candidates, all serving `app.main:create_app` on one artifact:
  guarded-h11   `python -m app`: uvicorn's h11 with paraserve's connection guards (app/transport/http11.py) - what ships
  h11           `uvicorn --factory --http h11`: the same parser, no guards
  httptools     `uvicorn --factory --http httptools`: uvicorn[standard]'s default
  granian       `granian --interface asgi --factory` (Rust, hyper), if installed (`pip install .[bench]`)

For each: requests/s and p50/p99 of a closed loop of 16 clients on GET /healthz (pure HTTP cost) and on POST
/predict of single pairs (what the service is for); then the edge attacks of scripts/reliability.py (chunk framing,
smuggling, method labels, v2 errors, drip, pipelining, big headers, silent, slowloris, half bodies, flood), each
with an ordinary client and a /healthz probe alongside. Prints one table, writes JSON with the CPU; traffic stays
on 127.0.0.x.

    python -m bench.http_servers --artifact model-cache/default/artifacts/int8-calibrated [--seconds 10] [--only guarded-h11 granian]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import reliability  # scripts/reliability.py: the attacks themselves

from artifact.kernels import cpu_description
from bench.http_protocol import closed_loop
from tests.harness.server import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]
EDGE_ATTACKS = frozenset(
    {
        "chunk-framing",
        "smuggling",
        "method-labels",
        "v2-errors",
        "drip",
        "pipelining",
        "big-headers",
        "silent",
        "slowloris",
        "half-bodies",
        "flood",
    }
)


def command(name: str, port: int) -> list[str] | None:
    """The server command line of a candidate (None when it is not installed)."""
    factory = ["--factory", "app.main:create_app", "--host", "127.0.0.1", "--port", str(port)]
    if name == "guarded-h11":
        return [sys.executable, "-m", "app"]
    if name in ("h11", "httptools"):
        return [sys.executable, "-m", "uvicorn", *factory, "--http", name, "--no-access-log"]
    if name == "granian":
        if importlib.util.find_spec("granian") is None:
            return None
        return [sys.executable, "-m", "granian", "--interface", "asgi", "--workers", "1", *factory]
    raise ValueError(name)


def start(name: str, artifact: Path, quick: bool) -> tuple[subprocess.Popen[bytes], str] | None:
    """A candidate server on a free loopback port, ready; None when it is not installed."""
    port = free_port()
    argv = command(name, port)
    if argv is None:
        print(f"== {name}: not installed (pip install '.[bench]'), skipped", flush=True)
        return None
    env = dict(os.environ, PARASERVE_ARTIFACT_DIR=str(artifact), PARASERVE_HOST="127.0.0.1", PARASERVE_PORT=str(port))
    env.update(PARASERVE_LOG_LEVEL="warning", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    if quick:  # the same shorter slow-connection limits as the reliability script's quick form
        env.update(PARASERVE_HEADER_TIMEOUT_S="2", PARASERVE_BODY_TIMEOUT_S="4", PARASERVE_BODY_RATE_GRACE_S="2")
        env.update(PARASERVE_MAX_CONNECTIONS="300", PARASERVE_MAX_CONNECTIONS_PER_CLIENT="100")
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(url, 180, process)
    return process, url


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()


async def throughput(names: list[str], artifact: Path, seconds: float, rounds: int) -> dict[str, dict[str, Any]]:
    """Every candidate running at once (idle while another is measured), measured round by round, so drift in this
    shared machine hits them alike; the median of the rounds."""
    servers = {name: s for name in names if (s := start(name, artifact, quick=True))}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {name: {"/healthz": [], "/predict": []} for name in servers}
    try:
        for r in range(rounds):
            for name, (_, url) in servers.items():
                for path in ("/healthz", "/predict"):
                    runs[name][path].append(await closed_loop(url, path, 16, seconds))
            print(f"  throughput round {r + 1}/{rounds} done", flush=True)
    finally:
        for process, _ in servers.values():
            stop(process)
    return {
        name: {path.strip("/"): {k: statistics.median(x[k] for x in samples) for k in samples[0]} for path, samples in by.items()}
        for name, by in runs.items()
    }


async def measure(name: str, artifact: Path, seconds: float, quick: bool) -> dict[str, Any] | None:
    started = start(name, artifact, quick)
    if started is None:
        return None
    process, url = started
    print(f"\n== {name}: {' '.join(command(name, 0)[1:4])} ...", flush=True)  # type: ignore[index]
    try:
        healthz = await closed_loop(url, "/healthz", 16, seconds)
        predict = await closed_loop(url, "/predict", 16, seconds)
        print(f"  /healthz {healthz['requests_per_s']:.0f} req/s, /predict {predict['requests_per_s']:.0f} req/s", flush=True)
        rows = await reliability.hostile_clients(url, quick, reliability.Report(), None, EDGE_ATTACKS)
        alive = process.poll() is None
    finally:
        stop(process)
    attacks = {
        r.name: {"ordinary_p99_ms": r.ordinary[1] * 1000, "ordinary_ok": r.ordinary_ok, "healthz_p99_ms": r.healthz_p99 * 1000,
                 "rss_mb": r.rss_mb, "outcome": r.outcome}
        for r in rows.values()
    }  # fmt: skip
    return {"server": name, "command": command(name, 0), "healthz": healthz, "predict": predict, "attacks": attacks, "alive_after": alive}


def verdict(attack: dict[str, Any], budget_ms: float = reliability.EDGE_P99_S * 1000) -> str:
    worst = max(attack["ordinary_p99_ms"], attack["healthz_p99_ms"])
    return f"{worst:,.0f}" + ("" if worst <= budget_ms else " !")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=10.0, help="each closed loop")
    parser.add_argument("--only", nargs="*", default=["guarded-h11", "h11", "httptools", "granian"])
    parser.add_argument("--full", action="store_true", help="the reliability script's full attack sizes (default: its quick form)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench-out" / "http_servers.json")
    parser.add_argument("--rounds", type=int, default=0, help="only throughput: the candidates side by side, this many interleaved rounds")
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the flood needs more sockets than 1,024
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    if args.rounds:
        table = asyncio.run(throughput(args.only, args.artifact, args.seconds, args.rounds))
        cpu = cpu_description()
        print(f"\n16 clients, {args.seconds:g} s per cell, median of {args.rounds} interleaved rounds; CPU {cpu['cpu_model']}")
        print(f"{'server':12s} {'/healthz req/s':>14s} {'p50 ms':>7s} {'/predict req/s':>14s} {'p50 ms':>7s} {'p99 ms':>7s}")
        for name, row in table.items():
            h, q = row["healthz"], row["predict"]
            cells = f"{h['requests_per_s']:14.0f} {h['p50_ms']:7.0f} {q['requests_per_s']:14.0f} {q['p50_ms']:7.0f} {q['p99_ms']:7.0f}"
            print(f"{name:12s} {cells}")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.with_name("http_servers_throughput.json").write_text(
            json.dumps({"cpu": cpu, "rounds": args.rounds, "table": table}, indent=2)
        )
        return 0
    results = [r for name in args.only if (r := asyncio.run(measure(name, args.artifact, args.seconds, not args.full)))]
    attacks = sorted({a for r in results for a in r["attacks"]})
    print(f"\nworst of ordinary-client p99 and /healthz p99 during each attack, ms ('!' over {reliability.EDGE_P99_S:g} s)")
    print(f"{'server':12s} {'/healthz req/s':>14s} {'/predict req/s':>14s} {'p99':>6s}  " + " ".join(f"{a[:10]:>10s}" for a in attacks))
    for r in results:
        cells = " ".join(f"{verdict(r['attacks'][a]) if a in r['attacks'] else '-':>10s}" for a in attacks)
        healthz, predict = r["healthz"], r["predict"]
        print(f"{r['server']:12s} {healthz['requests_per_s']:14.0f} {predict['requests_per_s']:14.0f} {predict['p99_ms']:6.0f}  {cells}")
    print("\noutcomes:")
    for r in results:
        for a in attacks:
            if a in r["attacks"]:
                print(f"  {r['server']:12s} {a:15s} {r['attacks'][a]['outcome']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {"cpu": cpu_description(), "artifact": str(args.artifact), "seconds": args.seconds, "quick": not args.full, "results": results}
    record["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record["granian"] = shutil.which("granian") is not None or importlib.util.find_spec("granian") is not None
    args.json.write_text(json.dumps(record, indent=2, default=str))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
