"""SLURM job states as an enum, with the translation from what SLURM prints.

squeue and sacct print long names (``RUNNING``), squeue's ``%t`` prints short codes
(``R``), and sacct decorates some (``CANCELLED by 0``, ``RUNNING+``). Anything
this table does not know becomes :attr:`JobState.UNKNOWN` with a warning, never
an exception: a new SLURM release must not crash a status poll.
"""

from __future__ import annotations

import warnings
from enum import Enum


class JobState(str, Enum):
    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    SUSPENDED = "SUSPENDED"
    REQUEUED = "REQUEUED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @property
    def is_done(self) -> bool:
        """Ended, or ending: COMPLETING jobs are being torn down and serve no more. ``up`` replaces
        such a job at once (SLURM keeps its resources until the teardown is over)."""
        return self in TERMINAL or self is JobState.COMPLETING

    @property
    def is_active(self) -> bool:
        """Holds or may soon hold resources (queued, starting, running, finishing)."""
        return self in ACTIVE


# The job will not run (again) by itself. COMPLETING is not terminal: processes may still be alive.
# PREEMPTED is terminal here because biofleet does not configure requeue-on-preempt; a requeued
# job shows up as REQUEUED/PENDING instead.
TERMINAL: frozenset[JobState] = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.NODE_FAIL,
        JobState.PREEMPTED,
        JobState.OUT_OF_MEMORY,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
    }
)

ACTIVE: frozenset[JobState] = frozenset(
    {
        JobState.PENDING,
        JobState.CONFIGURING,
        JobState.RUNNING,
        JobState.COMPLETING,
        JobState.SUSPENDED,
        JobState.REQUEUED,
    }
)

# Long names (squeue %T, sacct State) and short codes (squeue %t) -> JobState.
SLURM_STATES: dict[str, JobState] = {
    "PENDING": JobState.PENDING,
    "PD": JobState.PENDING,
    "CONFIGURING": JobState.CONFIGURING,
    "CF": JobState.CONFIGURING,
    "RUNNING": JobState.RUNNING,
    "R": JobState.RUNNING,
    "COMPLETING": JobState.COMPLETING,
    "CG": JobState.COMPLETING,
    "COMPLETED": JobState.COMPLETED,
    "CD": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "F": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "CA": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT,
    "TO": JobState.TIMEOUT,
    "NODE_FAIL": JobState.NODE_FAIL,
    "NF": JobState.NODE_FAIL,
    "PREEMPTED": JobState.PREEMPTED,
    "PR": JobState.PREEMPTED,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
    "OOM": JobState.OUT_OF_MEMORY,
    "BOOT_FAIL": JobState.BOOT_FAIL,
    "BF": JobState.BOOT_FAIL,
    "DEADLINE": JobState.DEADLINE,
    "DL": JobState.DEADLINE,
    "SUSPENDED": JobState.SUSPENDED,
    "S": JobState.SUSPENDED,
    "REQUEUED": JobState.REQUEUED,
    "RQ": JobState.REQUEUED,
    "REQUEUE_FED": JobState.REQUEUED,
    "RF": JobState.REQUEUED,
    "REQUEUE_HOLD": JobState.REQUEUED,
    "RH": JobState.REQUEUED,
    # Transitional states squeue may show for a moment; closest meaning for biofleet.
    "RESIZING": JobState.RUNNING,
    "RS": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "SI": JobState.RUNNING,
    "STAGE_OUT": JobState.COMPLETING,
    "SO": JobState.COMPLETING,
    "STOPPED": JobState.SUSPENDED,
    "ST": JobState.SUSPENDED,
    "RESV_DEL_HOLD": JobState.PENDING,
    "RD": JobState.PENDING,
    "REVOKED": JobState.CANCELLED,
    "RV": JobState.CANCELLED,
    "SPECIAL_EXIT": JobState.FAILED,
    "SE": JobState.FAILED,
}


def parse_state(text: str) -> JobState:
    """Translate one state string from squeue/sacct; unknown strings warn and give UNKNOWN.

    Handles sacct's decorations: ``CANCELLED by 0`` (who cancelled), ``RUNNING+`` (more
    states than fit the column) and stray whitespace.
    """
    raw = text.strip()
    key = raw.split(" ", 1)[0].rstrip("+").upper()
    state = SLURM_STATES.get(key)
    if state is None:
        warnings.warn(f"unknown SLURM job state {raw!r}; treating it as UNKNOWN", stacklevel=2)
        return JobState.UNKNOWN
    return state
