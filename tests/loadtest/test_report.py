"""The report builder on recorded locust CSVs and /metrics scrapes, and a short real run against the tiny model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loadtest.report import history, markdown_table, summarize, write_report
from tests.harness.server import running_server

FIXTURES = Path(__file__).with_name("fixtures")


def _summary(name: str):
    before = (FIXTURES / f"{name}_metrics_before.txt").read_text()
    after = (FIXTURES / f"{name}_metrics_after.txt").read_text()
    return summarize(name, f"http://{name}", FIXTURES / name, before, after, duration_s=10.0)


def test_summary_combines_locust_and_server_figures_exactly():
    s = _summary("int8")
    assert (s.requests, s.failures, s.overloaded_429) == (135, 0, 0)
    assert s.requests_per_s == pytest.approx(13.66658470061683)
    assert (s.p50_s, s.p90_s, s.p99_s) == pytest.approx((0.270, 0.380, 0.460))
    assert s.batch_fill_rows == pytest.approx(331 / 73)
    assert s.padding_fraction == pytest.approx(1 - 17.3359375 / 73)
    assert s.pairs_per_s == pytest.approx(13.66658470061683 * 328 / 136)
    assert s.rss_bytes == 528678912
    assert s.model_size_bytes > 0


def test_table_has_ratio_column_and_exact_cells():
    table = markdown_table([_summary("int8"), _summary("fp32")])
    lines = table.splitlines()
    assert lines[0] == "| | int8 | fp32 | int8 ÷ fp32 |"
    requests_row = next(line for line in lines if line.startswith("| requests |"))
    assert requests_row == "| requests | 135 | 58 | 2.33 |"
    assert "| batch fill (pairs / 8) | 4.53 | 4.58 |" in table
    assert "| padding fraction | 76.3% | 76.9% |" in table


def test_history_is_relative_to_the_start():
    rows = history(FIXTURES / "int8_stats_history.csv")
    assert rows[0]["t"] == 0 and rows[-1]["t"] > 5
    assert max(r["users"] for r in rows) == 4


def test_report_writes_markdown_json_and_charts(tmp_path: Path):
    for f in FIXTURES.glob("*.csv"):
        shutil.copy(f, tmp_path / f.name)
    summaries = [_summary("int8"), _summary("fp32")]
    report = write_report(tmp_path, summaries, {"int8": tmp_path / "int8", "fp32": tmp_path / "fp32"}, {"users": 4})
    text = report.read_text()
    assert "Throughput int8 ÷ fp32: 2.25× pairs/s, 2.30× requests/s" in text  # (13.67 * 328/136) / (5.94 * 143/58)
    for chart in ("throughput_latency.png", "latency_distribution.png"):
        assert (tmp_path / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({chart})" in text
    assert (tmp_path / "summary.json").is_file()


@pytest.fixture
def two_servers(tiny_artifacts: Path):
    """int8 and fp32 tiny servers as real processes on 127.0.0.1."""
    with running_server(tiny_artifacts / "int8") as int8, running_server(tiny_artifacts / "fp32") as fp32:
        yield {"int8": int8.url, "fp32": fp32.url}


@pytest.mark.slow
def test_a_short_real_comparison_run(two_servers: dict[str, str], tmp_path: Path):
    from loadtest.compare import main

    out = tmp_path / "out"
    args = ["--users", "2", "--duration", "6s", "--max-requests", "400", "--out", str(out)]
    for name, url in two_servers.items():
        args += ["--target", f"{name}={url}"]
    assert main(args) == 0
    import json

    summary = json.loads((out / "summary.json").read_text())
    for target in summary["targets"]:
        assert target["requests"] > 0 and target["failures"] == 0, target
        assert 1 <= target["batch_fill_rows"] <= 8
    assert (out / "latency_distribution.png").is_file()
    assert "int8 ÷ fp32" in (out / "report.md").read_text()


def test_throughput_is_the_rate_of_each_second_not_locusts_running_average():
    from loadtest.report import per_second

    rows = [{"t": 0.0, "total": 0.0}, {"t": 1.0, "total": 50.0}, {"t": 2.0, "total": 150.0}, {"t": 4.0, "total": 170.0}]
    assert per_second(rows) == ([1.0, 2.0, 4.0], [50.0, 100.0, 10.0])
    real = history(FIXTURES / "int8_stats_history.csv")
    _, rates = per_second(real)
    assert len(rates) == len(real) - 1 and all(r >= 0 for r in rates)
