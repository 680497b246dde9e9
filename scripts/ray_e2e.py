#!/usr/bin/env python3
"""The checks of scripts/ray-e2e.sh against a running two-host Ray Serve cluster (run inside the head's netns).

Phases, each bounded in time and requests: idle (1 replica); load (replicas scale up, onto both hosts, nothing
lost, no 5xx); light load while the autoscaler scales back down (nothing lost, no 5xx); a replica killed by its
pid mid-load (replaced; clients see only 200, 503 or a retried request, never a hang). Prints a table of replicas
per host over time with pairs/s, p50/p99 and errors; exits 1 on a breach.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from model_build.parity_pairs import PARITY_PAIRS
from tests.harness.load import Pair, Tally, closed_loop, predict_sender, sampled

REPLICA_CLASS = "ServeReplica:paraserve:Paraserve"
CLIENT_TIMEOUT_S = 30.0
RETRIED = ("reset", "write failed", "refused")  # no answer came back: a client of a replica that died retries once


def replicas(dashboard: str) -> list[dict]:
    """ALIVE replica actors with their pid and node ip (Ray's state API on the head's dashboard)."""
    from ray.util.state import list_actors, list_nodes

    nodes = {n["node_id"]: n["node_ip"] for n in list_nodes(address=dashboard, limit=100, raise_on_missing_output=False)}
    actors = list_actors(
        address=dashboard,
        filters=[("class_name", "=", REPLICA_CLASS), ("state", "=", "ALIVE")],
        detail=True,
        limit=100,
        raise_on_missing_output=False,
    )
    return [{"id": a["actor_id"], "pid": a["pid"], "ip": nodes.get(a["node_id"], "?")} for a in actors]


async def load(url: str, clients: int, seconds: float, tally: Tally, pairs_per_request: int = 8) -> None:
    """tests/harness/load.py's closed loop over /predict; a request that got no answer, or a 5xx other than 503, is
    retried once (labelled "retried: <outcome>"), and a client told 503 or 429 waits 0.2 s before its next request."""
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as client:
        predict = predict_sender(client, url, timeout=CLIENT_TIMEOUT_S)

        async def send(pairs: list[Pair]) -> str:
            outcome = await predict(pairs)
            if outcome in RETRIED or (outcome.startswith("5") and outcome != "503"):
                return "retried: " + await predict(pairs)
            if outcome in ("503", "429"):
                await asyncio.sleep(0.2)
            elif outcome == "timeout":
                return "hang (timeout)"
            return outcome

        await closed_loop(send, sampled(PARITY_PAIRS, (pairs_per_request,)), clients, seconds, tally=tally)


@dataclass
class Sample:
    t: float
    by_host: dict[str, int]
    pairs_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


async def watch(
    dashboard: str, hosts: list[str], tally: Tally, stop: asyncio.Event, samples: list[Sample], start: float, every: float = 3.0
) -> None:
    last_pairs, last_n, last_t = tally.pairs_ok, 0, time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(every)
        now = time.monotonic()
        current = await asyncio.to_thread(replicas, dashboard)
        window = tally.latencies_ok[last_n:]
        q = statistics.quantiles(window, n=100) if len(window) >= 2 else [float("nan")] * 99
        errors = sum(v for k, v in tally.statuses.items() if not k.endswith("200"))
        samples.append(
            Sample(
                now - start,
                {h: sum(1 for r in current if r["ip"] == h) for h in hosts},
                (tally.pairs_ok - last_pairs) / (now - last_t),
                q[49] * 1000,
                q[98] * 1000,
                errors,
            )
        )
        last_pairs, last_n, last_t = tally.pairs_ok, len(tally.latencies_ok), now


Action = Callable[[], Awaitable[None]] | None


async def phase(
    name: str,
    url: str,
    dashboard: str,
    hosts: list[str],
    clients: int,
    seconds: float,
    samples: list[Sample],
    start: float,
    action: Action = None,
) -> Tally:
    print(f"== {name}: {clients} clients for {seconds:.0f} s", flush=True)
    tally, stop = Tally(), asyncio.Event()
    watcher = asyncio.ensure_future(watch(dashboard, hosts, tally, stop, samples, start))
    loader = asyncio.ensure_future(load(url, clients, seconds, tally))
    if action is not None:
        await action()
    await loader
    stop.set()
    await watcher
    print(f"   answers: {dict(tally.statuses)}", flush=True)
    return tally


def node_metrics(host: str, port: int = 8080) -> str:
    try:
        return httpx.get(f"http://{host}:{port}/metrics", timeout=10).text
    except httpx.HTTPError:
        return ""


def is_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


async def wait_for(predicate: Callable[[], bool], timeout: float, every: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return True
        await asyncio.sleep(every)
    return False


async def run(args: argparse.Namespace) -> bool:
    hosts = args.hosts.split(",")
    ok = True

    def check(passed: bool, text: str) -> None:
        nonlocal ok
        ok &= passed
        print(f"  [{'ok' if passed else 'BREACH'}] {text}", flush=True)

    def ready() -> bool:
        return is_ready(args.url)

    check(await wait_for(ready, 240), "the endpoint answers /readyz through Ray Serve's proxy")
    if not ok:
        return False  # nothing deployed: the rest would only repeat it
    check(await wait_for(lambda: len(replicas(args.dashboard)) == 1, 60), "idle: 1 replica (min_replicas)")
    samples: list[Sample] = []
    start = time.monotonic()
    scale = 1.0 if not args.full else 2.0
    heavy = await phase("load", args.url, args.dashboard, hosts, 16, 45 * scale, samples, start)
    peak = max((sum(s.by_host.values()) for s in samples), default=0)
    hosts_used = {h for s in samples for h, n in s.by_host.items() if n}
    check(peak >= 2, f"replicas scaled up under load: peak {peak}")
    check(hosts_used == set(hosts), f"replicas ran on both hosts: {sorted(hosts_used)}")
    bad = {k: v for k, v in heavy.statuses.items() if k not in ("200", "429")}  # 429: explicit backpressure, with Retry-After
    check(not bad, f"scale-up: nothing lost, no 5xx ({sum(heavy.statuses.values())} sent: {dict(heavy.statuses)})")

    light = Tally()
    print("== scale-down: 1 client until the autoscaler returns to 1 replica (at most 90 s)", flush=True)
    stop = asyncio.Event()
    watcher = asyncio.ensure_future(watch(args.dashboard, hosts, light, stop, samples, start))
    loader = asyncio.ensure_future(load(args.url, 1, 90, light, pairs_per_request=1))
    down = await wait_for(lambda: len(replicas(args.dashboard)) == 1, 90)
    loader.cancel()
    await asyncio.gather(loader, return_exceptions=True)
    stop.set()
    await watcher
    check(down, "scaled back down to 1 replica after the load stopped")
    bad = {k: v for k, v in light.statuses.items() if k not in ("200", "429")}
    check(not bad, f"scale-down: nothing lost, no 5xx ({sum(light.statuses.values())} sent: {dict(light.statuses)})")

    killed: dict[str, str] = {}

    async def kill_one() -> None:
        await asyncio.sleep(8)
        current = await asyncio.to_thread(replicas, args.dashboard)
        if not current:
            return
        victim = current[0]
        os.kill(victim["pid"], signal.SIGKILL)
        killed.update(id=victim["id"], ip=victim["ip"], pid=str(victim["pid"]))
        print(f"   killed replica {victim['id'][:8]} (pid {victim['pid']}) on {victim['ip']}", flush=True)

    kill = await phase("a replica killed by its pid mid-load", args.url, args.dashboard, hosts, 8, 30 * scale, samples, start, kill_one)
    replaced = await wait_for(
        lambda: bool(replicas(args.dashboard)) and killed.get("id") not in {r["id"] for r in replicas(args.dashboard)}, 60
    )
    check(replaced and ready(), f"the killed replica is gone and the endpoint is ready again ({len(replicas(args.dashboard))} replica(s))")
    allowed = {"200", "503", "retried: 200", "retried: 503"}
    check(set(kill.statuses) <= allowed, f"during the kill, only 200, 503 or retried answers: {dict(kill.statuses)}")
    check(not any("hang" in k for k in kill.statuses), "no request hung")
    # Ray's replica metrics for Prometheus: each node exports them on its metrics port (8080 here).
    exported = [h for h in hosts if "ray_serve_" in await asyncio.to_thread(node_metrics, h)]
    check(bool(exported), f"Ray Serve replica metrics (ray_serve_*) exported for Prometheus on {exported or 'no node'}")

    print(
        f"\n{'t (s)':>6s} "
        + " ".join(f"{'replicas@' + h:>20s}" for h in hosts)
        + f" {'pairs/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} {'errors':>6s}"
    )
    for s in samples:
        print(
            f"{s.t:6.0f} "
            + " ".join(f"{s.by_host[h]:20d}" for h in hosts)
            + f" {s.pairs_per_s:8.1f} {s.p50_ms:7.0f} {s.p99_ms:7.0f} {s.errors:6d}"
        )
    print(f"\n{'PASS' if ok else 'FAIL'}: Ray Serve on two hosts", flush=True)
    return ok


async def measure(args: argparse.Namespace) -> bool:
    """Pairs/s and latency with a fixed number of replicas each (the README's scaling figures); no autoscaling."""
    import subprocess

    import yaml

    rows = []
    for n in (int(x) for x in args.measure.split(",")):
        config = yaml.safe_load(Path(args.config).read_text())
        deployment = config["applications"][0]["deployments"][0]
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = n
        fixed = Path(args.config).with_suffix(f".{n}.yaml")
        fixed.write_text(yaml.safe_dump(config))
        serve_cli = str(Path(sys.executable).with_name("serve"))
        subprocess.run([serve_cli, "deploy", str(fixed), "--address", args.dashboard], check=True, stdout=subprocess.DEVNULL)
        if not await wait_for(lambda n=n: len(replicas(args.dashboard)) == n and is_ready(args.url), 240):
            print(f"{n} replicas did not come up", flush=True)
            return False
        await asyncio.sleep(5)
        tally = Tally()
        await load(args.url, 16, 30, tally)
        run = tally.summary()
        by_host = Counter(r["ip"] for r in replicas(args.dashboard))
        rows.append((n, dict(by_host), run["pairs_per_s"], run["p50_s"] * 1000, run["p99_s"] * 1000, tally.errors))
    print(f"\n{'replicas':>8s} {'per host':>28s} {'pairs/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} {'errors':>6s}")
    for n, hosts, rate, p50, p99_, errors in rows:
        print(f"{n:8d} {hosts!s:>28s} {rate:8.1f} {p50:7.0f} {p99_:7.0f} {errors:6d}")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="Ray Serve's HTTP proxy on the head (a lab address)")
    parser.add_argument("--dashboard", required=True, help="the head's dashboard, for Ray's state API")
    parser.add_argument("--hosts", required=True, help="comma-separated node IPs")
    parser.add_argument("--full", action="store_true", help="longer phases")
    parser.add_argument("--measure", default=None, help="instead of the checks: pairs/s at these fixed replica counts, e.g. 1,2,4")
    parser.add_argument("--config", default=None, help="with --measure: the deployed Serve config, to redeploy with fixed replicas")
    args = parser.parse_args()
    for address in (args.url, args.dashboard):
        if not address.startswith("http://10.231.0."):
            parser.error("addresses must be netlab hosts (10.231.0.x): traffic stays on this machine")
    if args.measure:
        return 0 if asyncio.run(measure(args)) else 1
    return 0 if asyncio.run(run(args)) else 1


if __name__ == "__main__":
    sys.exit(main())
