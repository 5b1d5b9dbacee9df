"""Terminal output helpers shared by the commands."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


# Rich lays a file or a pipe out in 80 columns, which cut the status table's cells to "Qwen…" in
# `biofleet status > status.txt`, `| grep` and a batch job's log. There, lines are as wide as they need, up to this.
PIPE_WIDTH = 240


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, highlight=False, width=PIPE_WIDTH if wide else None)


def print_json(data: Any) -> None:
    """Machine-readable output only: one JSON document on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()
