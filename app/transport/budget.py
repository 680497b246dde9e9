"""Open connections of one listener, per peer address and in total, and what the process's open-file limit holds.

Each listener (HTTP, gRPC) has a `ConnectionBudget`: a new connection is refused when the listener holds its total,
when its peer holds `per_peer`, or, once the listener is three quarters full, when its peer already holds its share
(total / peers holding connections): as fair admission keeps a quarter of the queue for clients within their share
(app/core/batcher.py), a few addresses cannot take the last slots from everyone else.

`fd_budget` is the start-up check that both listeners together fit the process's open-file limit with room for the
model, logs and listeners (Envoy's overload manager counts downstream connections across listeners the same way):
a gRPC connection costs three descriptors (the client's socket, and both ends of the relay to gRPC's own listener:
app/transport/grpc_front.py), an HTTP connection one.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field

from artifact.errors import UserError

RESERVED_FDS = 256  # the model's files, logs, listeners, the tokenizer and worker threads' descriptors, with room to spare
GRPC_FDS_PER_CONNECTION = 3


@dataclass
class ConnectionBudget:
    """Open connections of one listener: at most `total`, at most `per_peer` from one address, and fair near the top."""

    total: int
    per_peer: int
    reserve: float = 0.25
    _by_peer: dict[str, int] = field(default_factory=dict)
    _open: int = 0

    @property
    def open(self) -> int:
        return self._open

    def refusal(self, peer: str) -> str | None:
        """Why a new connection from `peer` cannot be taken now (the reason label), or None."""
        if self._open >= self.total:
            return "too_many_connections"
        held = self._by_peer.get(peer, 0)
        if held >= self.per_peer:
            return "client_connections"
        if self._open >= self.total * (1 - self.reserve):
            peers = len(self._by_peer) + (0 if held else 1)
            if held >= max(1, self.total // peers):
                return "client_connections"
        return None

    def take(self, peer: str) -> str | None:
        """Count a new connection from `peer`, or return why it is refused (nothing counted then)."""
        why = self.refusal(peer)
        if why is None:
            self._by_peer[peer] = self._by_peer.get(peer, 0) + 1
            self._open += 1
        return why

    def release(self, peer: str) -> None:
        left = self._by_peer.get(peer, 0) - 1
        if left > 0:
            self._by_peer[peer] = left
        else:
            self._by_peer.pop(peer, None)
        self._open = max(0, self._open - 1)


def fd_budget(http_connections: int, grpc_connections: int) -> int:
    """Raise the soft open-file limit to what both listeners need (within the hard limit) and return it; a UserError
    (one line at start) when the hard limit cannot hold them."""
    needed = http_connections + GRPC_FDS_PER_CONNECTION * grpc_connections + RESERVED_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise UserError(
            f"the open-file limit ({hard}) cannot hold PARASERVE_MAX_CONNECTIONS ({http_connections}) + "
            f"{GRPC_FDS_PER_CONNECTION} x PARASERVE_GRPC_MAX_CONNECTIONS ({grpc_connections}) + {RESERVED_FDS} for the process: "
            "lower them, or raise the limit (ulimit -n)"
        )
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        return needed
    return soft
