"""tqdm progress bars that stay readable when stderr is a log file (CI, nohup), not a terminal."""

from __future__ import annotations

import sys
from typing import Any


def progress(**kwargs: Any) -> Any:
    """A tqdm bar: live on a terminal, one line every 30 s in a log."""
    from tqdm.auto import tqdm

    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 30.0)
    return tqdm(**kwargs)
