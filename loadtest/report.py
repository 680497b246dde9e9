"""Turn locust CSVs and before/after /metrics scrapes into one comparison table, ratios and charts."""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.harness.scrape import histogram_mean, metric_delta, metric_sum, samples

PERCENTILE_COLUMNS = ("50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%")


@dataclass
class TargetSummary:
    """One target's row of the comparison table (latencies in seconds, sizes in bytes)."""

    name: str
    url: str
    requests: int
    failures: int
    overloaded_429: int
    requests_per_s: float
    pairs_per_s: float
    p50_s: float
    p90_s: float
    p99_s: float
    batch_fill_rows: float
    padding_fraction: float
    queue_wait_mean_s: float
    inference_mean_s: float
    model_size_bytes: float
    rss_bytes: float
    duration_s: float


def aggregated_row(stats_csv: Path) -> dict[str, str]:
    """The 'Aggregated' row of locust's <prefix>_stats.csv."""
    with stats_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["Name"] == "Aggregated":
                return row
    raise ValueError(f"{stats_csv} has no Aggregated row")


def history(history_csv: Path) -> list[dict[str, float]]:
    """Per-second aggregated rows of <prefix>_stats_history.csv: time from start, users, rps, percentiles (s)."""
    rows: list[dict[str, float]] = []
    with history_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["Name"] != "Aggregated":
                continue
            t = float(row["Timestamp"])
            rows.append(
                {
                    "t": t,
                    "users": float(row["User Count"]),
                    "rps": float(row["Requests/s"]),
                    "total": float(row.get("Total Request Count") or "nan"),
                    "p50_s": _ms(row.get("50%")),
                    "p90_s": _ms(row.get("90%")),
                    "p99_s": _ms(row.get("99%")),
                }
            )
    if rows:
        start = rows[0]["t"]
        for r in rows:
            r["t"] -= start
    return rows


def per_second(rows: Sequence[dict[str, float]]) -> tuple[list[float], list[float]]:
    """Requests completed in each interval between history rows, divided by its length: the rate each second.

    Locust's own Requests/s column is a running average over a window, which ramps for the whole start of a run.
    """
    times, rates = [], []
    for before, after in itertools.pairwise(rows):
        span = after["t"] - before["t"]
        if span > 0 and after["total"] == after["total"] and before["total"] == before["total"]:  # skip NaN
            times.append(after["t"])
            rates.append((after["total"] - before["total"]) / span)
    return times, rates


def _ms(value: str | None) -> float:
    return float(value) / 1000 if value not in (None, "", "N/A") else float("nan")


def summarize(name: str, url: str, csv_prefix: Path, before_text: str, after_text: str, duration_s: float) -> TargetSummary:
    """Combine locust's client-side view with the server's own metrics over the run."""
    row = aggregated_row(Path(f"{csv_prefix}_stats.csv"))
    before, after = samples(before_text), samples(after_text)
    return TargetSummary(
        name=name,
        url=url,
        requests=int(row["Request Count"]),
        failures=int(row["Failure Count"]),
        overloaded_429=int(metric_delta(before, after, "paraserve_http_requests_total", route="/predict", status="429")),
        requests_per_s=float(row["Requests/s"]),
        # locust's requests/s covers its own active time; the server says how many pairs each answered request held.
        pairs_per_s=float(row["Requests/s"])
        * ratio(
            metric_delta(before, after, "paraserve_predictions_total"),
            metric_delta(before, after, "paraserve_http_requests_total", route="/predict", status="200"),
        ),
        p50_s=_ms(row["50%"]),
        p90_s=_ms(row["90%"]),
        p99_s=_ms(row["99%"]),
        batch_fill_rows=histogram_mean(before, after, "paraserve_batch_rows"),
        padding_fraction=1 - histogram_mean(before, after, "paraserve_batch_token_fill_ratio"),
        queue_wait_mean_s=histogram_mean(before, after, "paraserve_queue_wait_seconds"),
        inference_mean_s=histogram_mean(before, after, "paraserve_inference_duration_seconds"),
        model_size_bytes=metric_sum(after, "paraserve_model_size_bytes"),
        rss_bytes=metric_sum(after, "process_resident_memory_bytes"),
        duration_s=duration_s,
    )


ROWS = (
    ("requests/s", "requests_per_s", "{:.1f}"),
    ("pairs/s (server)", "pairs_per_s", "{:.1f}"),
    ("p50 latency (ms)", "p50_s", "ms"),
    ("p90 latency (ms)", "p90_s", "ms"),
    ("p99 latency (ms)", "p99_s", "ms"),
    ("requests", "requests", "{:d}"),
    ("failures", "failures", "{:d}"),
    ("429s", "overloaded_429", "{:d}"),
    ("batch fill (pairs / 8)", "batch_fill_rows", "{:.2f}"),
    ("padding fraction", "padding_fraction", "{:.1%}"),
    ("mean queue wait (ms)", "queue_wait_mean_s", "ms"),
    ("mean inference / batch (ms)", "inference_mean_s", "ms"),
    ("model size (MB)", "model_size_bytes", "MB"),
    ("process RSS (MB)", "rss_bytes", "MB"),
)


def _fmt(value: float, style: str) -> str:
    if style == "ms":
        return f"{value * 1000:.0f}"
    if style == "MB":
        return f"{value / 1e6:.1f}"
    return style.format(value)


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is 0."""
    return a / b if b else float("nan")


def markdown_table(summaries: Sequence[TargetSummary], numerator: str = "int8", denominator: str = "fp32") -> str:
    """One table, a column per target, plus the int8 / fp32 ratio column when both are present."""
    by_name = {s.name: s for s in summaries}
    with_ratio = numerator in by_name and denominator in by_name
    head = "| | " + " | ".join(s.name for s in summaries) + (f" | {numerator} ÷ {denominator} |" if with_ratio else " |")
    lines = [head, "|---" * (len(summaries) + 1 + with_ratio) + "|"]
    for label, field, style in ROWS:
        cells = [_fmt(getattr(s, field), style) for s in summaries]
        if with_ratio:
            r = ratio(getattr(by_name[numerator], field), getattr(by_name[denominator], field))
            cells.append("—" if r != r else f"{r:.2f}")  # NaN: nothing to compare (e.g. no failures on either side)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_charts(out: Path, prefixes: Mapping[str, Path]) -> list[Path]:
    """throughput_latency.png (over time, all targets) and latency_distribution.png (percentile curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    # One colour per target in every panel and chart; the line style tells the percentile.
    colours = {name: f"C{i}" for i, name in enumerate(prefixes)}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7.5), sharex=True)
    for name, prefix in prefixes.items():
        rows = history(Path(f"{prefix}_stats_history.csv"))
        times, rates = per_second(rows)
        top.plot(times, rates, color=colours[name], label=name)
        t = [r["t"] for r in rows]
        for key, style in (("p50_s", "-"), ("p90_s", "--"), ("p99_s", ":")):
            bottom.plot(t, [r[key] * 1000 for r in rows], style, color=colours[name], label=f"{name} {key[:3]}")
    top.set_ylabel("requests completed per second")
    top.set_title("Throughput (each second) and latency over time")
    top.legend(title="target", loc="upper left", bbox_to_anchor=(1.01, 1))
    top.grid(True, alpha=0.3)
    bottom.set_ylabel("latency (ms), locust's 10 s window")
    bottom.set_xlabel("seconds since start")
    bottom.legend(fontsize="small", title="percentile:\nsolid p50\ndashed p90\ndotted p99", loc="upper left", bbox_to_anchor=(1.01, 1))
    bottom.grid(True, alpha=0.3)
    fig.tight_layout()
    path = out / "throughput_latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for name, prefix in prefixes.items():
        row = aggregated_row(Path(f"{prefix}_stats.csv"))
        points = [
            (float(c.rstrip("%")) / 100, _ms(row.get(c)) * 1000)
            for c in PERCENTILE_COLUMNS
            if c != "100%" and row.get(c) not in (None, "", "N/A")  # a logit axis cannot show the maximum
        ]
        ax.plot([p for p, _ in points], [v for _, v in points], marker="o", color=colours[name], label=name)
    ax.set_xscale("logit")
    ticks = [0.5, 0.9, 0.99, 0.999, 0.9999]
    ax.set_xticks(ticks, [f"p{t * 100:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency distribution (whole run)")
    ax.legend(title="target")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = out / "latency_distribution.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def write_report(out: Path, summaries: Sequence[TargetSummary], prefixes: Mapping[str, Path], settings: Mapping[str, Any]) -> Path:
    """report.md, summary.json and the charts in `out`."""
    charts = write_charts(out, prefixes)
    by_name = {s.name: s for s in summaries}
    lines = ["# paraserve load test", "", ", ".join(f"{k}: {v}" for k, v in settings.items()), "", markdown_table(summaries), ""]
    if "int8" in by_name and "fp32" in by_name:
        lines.append(
            f"**Throughput int8 ÷ fp32: {ratio(by_name['int8'].pairs_per_s, by_name['fp32'].pairs_per_s):.2f}× pairs/s, "
            f"{ratio(by_name['int8'].requests_per_s, by_name['fp32'].requests_per_s):.2f}× requests/s.**"
        )
        lines.append("")
    lines += [f"![{c.stem}]({c.name})" for c in charts]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "summary.json").write_text(json.dumps({"settings": dict(settings), "targets": [asdict(s) for s in summaries]}, indent=2) + "\n")
    return path
