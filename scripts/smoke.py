#!/usr/bin/env python3
"""`python -m app` smoke on both int8 kernel paths: start the server on this CPU's own kernels and again under
FBGEMM_ENABLE_INSTRUCTIONS=AVX2, post the README's pair (and the parity pairs), check /model names the kernel path
and variant, and require the same scores from both. Exits 1 on any difference.

    python -m scripts.smoke ARTIFACT_DIR [--max-score-diff 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from model_build.parity_pairs import PARITY_PAIRS
from tests.harness.server import running_server

README_PAIR = (
    "He said the foodservice pie business doesn't fit the company's long-term growth strategy.",
    "The foodservice pie business does not fit our long-term growth strategy.",
)


def serve_and_score(artifact: Path, env: dict[str, str]) -> dict[str, Any]:
    """Start a server with `env` added, score the pairs through POST /predict, read GET /model; SIGTERM -> exit 0."""
    with running_server(artifact, env=env) as server:
        pairs = [README_PAIR, *PARITY_PAIRS]
        body = {"pairs": [{"sentence1": a, "sentence2": b} for a, b in pairs]}
        answer = httpx.post(f"{server.url}/predict", json=body, timeout=60)
        answer.raise_for_status()
        model = httpx.get(f"{server.url}/model", timeout=10).json()
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    code = server.process.returncode
    info = next(line for line in metrics.splitlines() if line.startswith("paraserve_model_info{"))
    return {
        "scores": [p["score"] for p in answer.json()["predictions"]],
        "first": answer.json()["predictions"][0],
        "variant": model["variant"],
        "int8_kernel": model["cpu"]["int8_kernel"],
        "info": info,
        "exit_code": code,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--max-score-diff", type=float, default=0.0, help="allowed |score difference| between kernel paths")
    args = parser.parse_args()
    runs = {"native": serve_and_score(args.artifact, {})}
    runs["avx2"] = serve_and_score(args.artifact, {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"})
    failures = []
    for name, run in runs.items():
        first = json.dumps(run["first"])
        print(f"{name:6s}: int8 kernel {run['int8_kernel']}, served {run['variant']}, README pair {first}, exit {run['exit_code']}")
        if f'int8_kernel="{run["int8_kernel"]}"' not in run["info"]:
            failures.append(f"{name}: paraserve_model_info does not state the kernel path: {run['info']}")
        if run["exit_code"] != 0:
            failures.append(f"{name}: exit code {run['exit_code']} after SIGTERM")
    if runs["avx2"]["int8_kernel"] != "avx2":
        failures.append("FBGEMM_ENABLE_INSTRUCTIONS=AVX2 did not select the AVX2 kernel path")
    diff = max(abs(a - b) for a, b in zip(runs["native"]["scores"], runs["avx2"]["scores"], strict=True))
    pairs = len(runs["native"]["scores"])
    print(f"max |score difference| between the kernel paths over {pairs} pairs: {diff:.3g} (allowed {args.max_score_diff:g})")
    if diff > args.max_score_diff:
        failures.append(f"scores differ between kernel paths by {diff:.3g}")
    for failure in failures:
        print(f"FAIL: {failure}")
    print("PASS: smoke on both int8 kernel paths" if not failures else "FAIL")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
