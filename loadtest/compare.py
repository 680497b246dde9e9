"""Run the same locust load against each target in turn and write a side-by-side report with charts.

    python -m loadtest.compare --target int8=http://127.0.0.1:8001 --target fp32=http://127.0.0.1:8002 \\
        --users 16 --duration 60s --out loadtest-out [--shape steady|ramp] [--data-dir ../shared/data/mrpc]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from loadtest.report import TargetSummary, summarize, write_report
from model_build.progress import progress
from tests.harness.server import wait_ready

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def parse_duration(text: str) -> float:
    """'90', '90s', '2m', '1m30s' -> seconds."""
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?", text.strip())
    if not match or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 60s, 2m, 1m30s)")
    return int(match.group(1) or 0) * 60 + float(match.group(2) or 0)


def parse_target(text: str) -> tuple[str, str]:
    """NAME=URL, or NAME=URL#MODEL to name one model of a server of several (e.g. cascade=http://repo:8000#cascade)."""
    name, sep, url = text.partition("=")
    if not sep or not name or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"target must be NAME=URL[#MODEL], e.g. int8=http://127.0.0.1:8001, not {text!r}")
    return name, url.rstrip("/")


def _latest(history_csv: Path) -> str:
    try:
        with history_csv.open(newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r["Name"] == "Aggregated"]
    except (OSError, KeyError):
        return ""
    if not rows:
        return ""
    last = rows[-1]
    return f"{last['User Count']} users, {float(last['Requests/s']):.1f} req/s, p50 {last['50%']} ms"


def run_locust(name: str, url: str, prefix: Path, args: argparse.Namespace) -> float:
    """One headless locust run against `url`, bounded by the shape, --run-time and LOAD_MAX_REQUESTS."""
    url, _, model = url.partition("#")
    env = dict(
        os.environ,
        LOAD_MODEL=model,
        LOAD_SHAPE=args.shape,
        LOAD_USERS=str(args.users),
        LOAD_DURATION_S=str(args.duration),
        LOAD_MAX_REQUESTS=str(args.max_requests),
    )
    if args.data_dir:
        env["MRPC_DIR"] = str(args.data_dir)
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
        "--csv", str(prefix), "--only-summary", "--run-time", f"{int(args.duration) + 15}s", "--loglevel", "WARNING",
    ]  # fmt: skip
    log_path = prefix.with_suffix(".log")
    started = time.monotonic()
    with log_path.open("w") as log, progress(total=int(args.duration), desc=f"{name}", unit="s", mininterval=1) as bar:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while process.poll() is None:
                time.sleep(1)
                bar.n = min(int(time.monotonic() - started), bar.total)
                bar.set_postfix_str(_latest(Path(f"{prefix}_stats_history.csv")), refresh=True)
            if time.monotonic() - started > args.duration + 60:
                process.kill()
        except BaseException:
            process.kill()
            raise
    elapsed = time.monotonic() - started
    if process.returncode not in (0, 1):  # locust exits 1 when any request failed; that is data, not an error
        raise SystemExit(f"locust failed against {url} (exit {process.returncode}); see {log_path}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=parse_target, action="append", required=True, help="NAME=URL; repeat (e.g. int8 and fp32)")
    parser.add_argument("--users", type=int, default=16, help="concurrent closed-loop users (bounded to 1..512)")
    parser.add_argument("--duration", type=parse_duration, default=60.0, help="per target, e.g. 60s or 2m (bounded to 1 h)")
    parser.add_argument("--shape", choices=["steady", "ramp"], default="steady")
    parser.add_argument("--max-requests", type=int, default=500_000, help="stop a run after this many requests")
    parser.add_argument("--data-dir", type=Path, default=None, help="GLUE MRPC folder (dev.tsv pairs); default: built-in pairs")
    parser.add_argument("--out", type=Path, default=Path("loadtest-out"))
    args = parser.parse_args(argv)
    if not 1 <= args.users <= 512 or not 1 <= args.duration <= 3600:
        parser.error("--users must be 1..512 and --duration 1 s..1 h")
    args.out.mkdir(parents=True, exist_ok=True)

    summaries: list[TargetSummary] = []
    prefixes: dict[str, Path] = {}
    with httpx.Client(timeout=10) as client:
        for index, (name, target) in enumerate(args.target, 1):
            url = target.partition("#")[0]
            print(
                f"[compare] {index}/{len(args.target)} {name} at {url}: {args.users} users, {args.shape}, {args.duration:.0f} s", flush=True
            )
            try:
                wait_ready(url)
            except TimeoutError as exc:
                raise SystemExit(str(exc)) from None
            before = client.get(f"{url}/metrics").text
            prefix = args.out / name
            elapsed = run_locust(name, target, prefix, args)
            after = client.get(f"{url}/metrics").text
            (args.out / f"{name}_metrics_before.txt").write_text(before)
            (args.out / f"{name}_metrics_after.txt").write_text(after)
            summaries.append(summarize(name, url, prefix, before, after, min(elapsed, args.duration)))
            prefixes[name] = prefix
    settings = {
        "users": args.users,
        "duration_s": args.duration,
        "shape": args.shape,
        "pairs": "MRPC dev" if args.data_dir else "built-in",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
    }
    report = write_report(args.out, summaries, prefixes, settings)
    print(report.read_text(), flush=True)
    print(f"[compare] wrote {report}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
