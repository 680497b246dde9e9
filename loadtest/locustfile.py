"""Locust users posting real sentence pairs to /predict; every run is bounded in users, time and requests.

Environment (set by `python -m loadtest.compare`, or by hand):
  LOAD_SHAPE        steady (default): all users after a 2 s ramp; ramp: users grow in 5 steps to LOAD_USERS
  LOAD_USERS        concurrent users (default 16)
  LOAD_DURATION_S   run time in seconds (default 60)
  LOAD_MAX_REQUESTS stop after this many requests (default 500000)
  MRPC_DIR          GLUE MRPC folder: pairs come from dev.tsv; without it, a built-in set of our own sentences
  PARASERVE_API_KEY sent as a bearer token when set
  LOAD_MODEL        the model each request names (a server of several: fast, accurate, cascade); unset: the default

    locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8000
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from locust import FastHttpUser, LoadTestShape, constant, task

# (pairs per request, weight): mostly single pairs, some small and full batches, as clients really send.
PAIRS_PER_REQUEST = ((1, 50), (2, 15), (3, 10), (4, 10), (6, 8), (8, 7))


def load_pairs() -> list[tuple[str, str]]:
    """MRPC dev pairs when MRPC_DIR points at them, else the build's parity pairs (our own text)."""
    folder = os.environ.get("MRPC_DIR")
    if folder and (Path(folder) / "dev.tsv").is_file():
        from model_build.mrpc import load_split

        return [(p.sentence1, p.sentence2) for p in load_split(Path(folder), "dev")]
    from model_build.parity_pairs import PARITY_PAIRS

    return list(PARITY_PAIRS)


PAIRS = load_pairs()
MODEL = os.environ.get("LOAD_MODEL", "")
SIZES, WEIGHTS = zip(*PAIRS_PER_REQUEST, strict=True)


def check_body(body: Any, sent: int) -> str | None:
    """Why a 200 body is wrong, or None if it has the documented shape."""
    if not isinstance(body, dict) or not isinstance(body.get("predictions"), list) or "model" not in body:
        return "body lacks predictions or model"
    predictions = body["predictions"]
    if len(predictions) != sent:
        return f"{len(predictions)} predictions for {sent} pairs"
    for p in predictions:
        if p.get("label") not in ("paraphrase", "not_paraphrase") or not 0.0 <= float(p.get("score", -1)) <= 1.0:
            return f"bad prediction {p}"
        if (p["score"] >= 0.5) != (p["label"] == "paraphrase"):
            return f"label disagrees with score {p}"
    return None


class PredictUser(FastHttpUser):
    """A closed-loop client: sends, reads the answer, sends again (no think time, to find saturation)."""

    wait_time = constant(0)
    connection_timeout = 10.0
    network_timeout = 60.0

    def on_start(self) -> None:
        self.rng = random.Random()
        key = os.environ.get("PARASERVE_API_KEY")
        self.headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}

    @task
    def predict(self) -> None:
        size = self.rng.choices(SIZES, WEIGHTS)[0]
        pairs = self.rng.sample(PAIRS, size) if size <= len(PAIRS) else self.rng.choices(PAIRS, k=size)
        payload: dict[str, Any] = {"pairs": [{"sentence1": a, "sentence2": b} for a, b in pairs]}
        if MODEL:
            payload["model"] = MODEL
        with self.client.post("/predict", json=payload, headers=self.headers, name=f"/predict [{size}]", catch_response=True) as r:
            if r.status_code == 429:
                r.failure("429 overloaded")
            elif r.status_code != 200:
                r.failure(f"HTTP {r.status_code}")
            else:
                problem = check_body(r.json(), size)
                if problem:
                    r.failure(problem)
                else:
                    r.success()


class BoundedShape(LoadTestShape):
    """steady: LOAD_USERS after a short ramp; ramp: 5 equal steps up to LOAD_USERS.

    Ends after LOAD_DURATION_S or LOAD_MAX_REQUESTS requests, whichever comes first (checked at every tick, once a
    second). Ending through the shape, not runner.quit() from a request hook, lets locust write its final CSVs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.shape = os.environ.get("LOAD_SHAPE", "steady")
        self.users = max(1, int(os.environ.get("LOAD_USERS", "16")))
        self.duration = float(os.environ.get("LOAD_DURATION_S", "60"))
        self.max_requests = int(os.environ.get("LOAD_MAX_REQUESTS", "500000"))

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        if elapsed >= self.duration or self.runner.stats.total.num_requests >= self.max_requests:
            return None
        if self.shape == "ramp":
            step = min(4, int(5 * elapsed / self.duration))
            return max(1, round(self.users * (step + 1) / 5)), float(self.users)
        return self.users, float(max(1, self.users // 2))
