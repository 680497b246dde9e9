"""Faults around a serving process (the reliability run's own, at test size): its weights truncated under load, a second
stop signal during the drain, and a request refused at its headers by a client that then stays silent."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.harness.attacks.faults import double_signal, truncated_weights
from tests.harness.attacks.http_edge import refused_then_silent
from tests.harness.server import running_server

LINGER_S = 2.0


def test_truncating_the_weights_under_a_serving_process_changes_nothing_it_answers(tiny_artifacts: Path, tmp_path: Path):
    outcome = asyncio.run(truncated_weights(tiny_artifacts / "openvino-int8", 2.0, tmp_path / "server.log"))
    assert "process alive" in outcome.text
    assert set(outcome.tally.statuses) == {"200"} and outcome.exit_code == 0


def test_a_second_stop_signal_during_the_drain_keeps_draining_and_exits_0(tiny_artifacts: Path, tmp_path: Path):
    outcome = asyncio.run(double_signal(tiny_artifacts / "int8-calibrated", 1.0, tmp_path / "server.log"))
    assert outcome.exit_code == 0 and outcome.unanswered == 0
    assert set(outcome.tally.statuses) <= {"200", "503", "refused", "write failed"}, outcome.text
    assert "during the drain: the drain goes on" in (tmp_path / "server.log").read_text()


def test_a_connection_refused_at_its_headers_is_closed_within_the_linger_whatever_the_client_does(tiny_artifacts: Path, tmp_path: Path):
    log = tmp_path / "server.log"
    with running_server(tiny_artifacts / "int8", log_file=log, body_timeout_s="30") as server:
        outcome, held = asyncio.run(refused_then_silent(server.url, 6, LINGER_S))
    assert held == 0, outcome
    assert "413 x2" in outcome and "400 x4" in outcome
    written = log.read_text(errors="replace")
    assert "Traceback" not in written and "RuntimeError" not in written
