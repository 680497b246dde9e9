"""ConnectionBudget (app/transport/budget.py): the totals, the per-peer cap, the fair share near the top; the open-file
budget checked at start."""

from __future__ import annotations

import resource

import pytest

from app.transport.budget import GRPC_FDS_PER_CONNECTION, RESERVED_FDS, ConnectionBudget, fd_budget
from artifact.errors import UserError


def test_a_connection_is_refused_over_the_total_and_over_its_peers_cap():
    budget = ConnectionBudget(total=4, per_peer=2, reserve=0.0)
    assert [budget.take("a"), budget.take("a"), budget.take("a")] == [None, None, "client_connections"]
    assert [budget.take("b"), budget.take("b")] == [None, None]
    assert budget.take("c") == "too_many_connections"
    budget.release("a")
    assert budget.take("c") is None and budget.open == 4


def test_near_the_top_a_peer_over_its_share_is_refused_while_a_new_peer_still_gets_in():
    budget = ConnectionBudget(total=8, per_peer=8, reserve=0.25)
    for _ in range(6):  # three quarters, all one peer's: alone, its share is everything
        assert budget.take("attacker") is None
    assert budget.take("newcomer") is None  # holds 0 of its share of 8 // 2
    assert budget.take("attacker") == "client_connections"  # holds 6, over its share of 4 now that two peers hold some
    assert budget.take("newcomer") is None
    assert budget.open == 8 and budget.take("third") == "too_many_connections"


def test_release_forgets_a_peer_with_no_connection_left():
    budget = ConnectionBudget(total=2, per_peer=2)
    budget.take("a")
    budget.release("a")
    assert budget.open == 0 and budget._by_peer == {}


def test_the_fd_budget_is_checked_against_the_hard_limit_in_one_line(monkeypatch: pytest.MonkeyPatch):
    set_to: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda _, limits: set_to.append(limits))
    assert fd_budget(1000, 256) == 1000 + GRPC_FDS_PER_CONNECTION * 256 + RESERVED_FDS
    assert set_to == [(1000 + 3 * 256 + 256, 4096)]
    with pytest.raises(UserError, match=r"the open-file limit \(4096\) cannot hold PARASERVE_MAX_CONNECTIONS \(4000\)"):
        fd_budget(4000, 256)
