"""What every scheduler backend answers, in scheduler-neutral terms.

A backend is two things:

* a :class:`Scheduler` — submit a script, query many jobs in one call, cancel by id, wait
  until jobs are gone — run through a :class:`~biofleet.remote.base.Runner`;
* a :class:`ScriptDialect` — pure knowledge of the batch script and the job's environment:
  the directive lines (``#SBATCH ...``), the shell lines that set ``TASK_ID``, ``JOB_KEY``,
  ``NODE_NAME`` and ``GRANTED_GPUS`` from the scheduler's own variables, the id of one array
  task, where a task's output file goes. The renderer and the fleet use only these.

Job states are an enum with a documented terminal set; each backend translates its own
state names into it (unknown ones become :attr:`JobState.UNKNOWN` with a warning).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from biofleet.profile import JobSpec, Profile


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


@dataclass(frozen=True)
class JobInfo:
    """One job (or one array task) as the scheduler reports it."""

    job_id: str  # "123" or "123_4" for an array task
    state: JobState
    raw_state: str = ""
    name: str | None = None
    reason: str | None = None  # why it is pending ("Resources", "Priority", ...) or why it ended
    nodes: str | None = None  # node list, e.g. "t4-[01-02]"
    partition: str | None = None
    time_used: str | None = None
    time_left: str | None = None  # as the scheduler prints it ("UNLIMITED" when there is no limit)
    time_left_s: float | None = None  # the same in seconds; None: no limit, or not known
    time_limit: str | None = None
    start_time: str | None = None  # ISO-like local time; expected start while pending
    end_time: str | None = None
    exit_code: str | None = None  # "rc:signal" from sacct, e.g. "1:0"
    array_job_id: str | None = None
    array_task_id: int | None = None
    source: str = "squeue"  # "squeue" or "sacct"

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal


class Scheduler(Protocol):
    """Submits, watches and cancels batch jobs; one batched query per poll, cancel by id only."""

    name: str  # "slurm", "local": recorded in the fleet's state
    dialect: ScriptDialect

    def submit(self, script_path: str, *, tasks: Sequence[int] | None = None, tag: str | None = None) -> str:
        """Submit a rendered script; ``tasks``: only these array tasks; ``tag``: a word stored with the
        job (SLURM's comment) that :meth:`find_tagged` finds again. Returns the job id."""
        ...

    def find_tagged(self, prefix: str) -> dict[str, str]:
        """{tag: job id} of this user's jobs still in the queue whose tag starts with ``prefix``, in
        one query: how a submission whose id was never recorded (a crash right after it) is found."""
        ...

    def queue(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """Jobs the scheduler still holds (one call); an array id yields one entry per task."""
        ...

    def states(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """Like :meth:`queue`, plus the final state of jobs that left it (accounting), where known."""
        ...

    def cancel(self, job_ids: Sequence[str]) -> None:
        """Cancel exactly these ids; jobs already gone are not an error."""
        ...

    def wait_gone(self, job_ids: Sequence[str], timeout: float) -> dict[str, JobInfo]:
        """Wait until none of the jobs holds resources; TimeoutError naming the ones left."""
        ...


class ScriptDialect(Protocol):
    """Pure knowledge of a scheduler's batch scripts (no I/O): what the renderer and the fleet need."""

    def directives(self, profile: Profile, job: JobSpec | None, fleet_dir: str) -> list[str]:
        """The header lines of a job's script (``job`` None: the proxy job), sorted."""
        ...

    def job_environment(self) -> str:
        """Shell lines that set TASK_ID, JOB_KEY (this task's job id), NODE_NAME and GRANTED_GPUS
        (the scheduler's list of GPUs, empty when it has none) from the job's environment."""
        ...

    def task_job_id(self, job_id: str, task: int, array: bool) -> str:
        """The id the scheduler shows for one task of a submission ("123_4")."""
        ...

    def output_path(self, logs_dir: str, job_name: str, job_id: str, task: int | None) -> str:
        """Where the scheduler writes a task's stdout/stderr (``task`` None: not an array)."""
        ...

    def parse_time_limit(self, text: str) -> float | None:
        """A time limit as profiles write it ("24:00:00", "1-00:00:00") in seconds."""
        ...
