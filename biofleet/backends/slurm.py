"""SLURM through its commands: sbatch, squeue, sacct, scancel — argv in, parsed text out.

Rules this module keeps:

* one batched ``squeue --jobs=...`` per poll, whatever the number of jobs;
* ``sacct`` only for jobs that already left the queue, and a cluster without
  accounting ("Slurm accounting storage is disabled") is normal, not an error;
* cancel by explicit job id only — never by name, so another fleet (or user)
  with the same job name is never touched.

The parsers (:func:`parse_sbatch`, :func:`parse_squeue`, :func:`parse_sacct`) are pure
functions, tested on output recorded from a real SLURM 22.05 in ``tests/data/slurm``.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from biofleet.backends.base import JobInfo, JobState, ScriptDialect
from biofleet.remote.base import CommandError, CompletedCommand, Runner

if TYPE_CHECKING:
    from biofleet.profile import JobSpec, Profile

# squeue fields, "|"-separated. The job name goes LAST because it is free text that may
# itself contain "|": the parser splits at most len-1 times so the name keeps any pipes.
#   %i job id as users see it ("123", "123_4", "123_[5-9%2]")   %A raw job id of this record
#   %F array job id   %K array task id or range ("N/A" if not an array)   %T long state
#   %r reason   %N node list   %P partition   %M time used   %L time left   %l time limit
#   %S start time (or the expected start when pending, "N/A" if unknown)   %j name
SQUEUE_FIELDS = ("id", "raw_id", "array_job_id", "array_task", "state", "reason", "nodes",
                 "partition", "time_used", "time_left", "time_limit", "start_time", "name")
SQUEUE_FORMAT = "%i|%A|%F|%K|%T|%r|%N|%P|%M|%L|%l|%S|%j"

# find_tagged: the job id, its state and its comment (free text, so last: split once).
TAGGED_FORMAT = "%i|%T|%k"
_TAG = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")

SACCT_FIELDS = ("JobID", "JobName", "State", "ExitCode", "NodeList", "Elapsed", "Start", "End")

ACCOUNTING_DISABLED = "accounting storage is disabled"

# "None assigned" is sacct's NodeList of a job that never got a node (cancelled while pending).
_EMPTY = {"", "N/A", "(null)", "None", "Unknown", "n/a", "None assigned"}


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


def _opt(value: str) -> str | None:
    value = value.strip()
    return None if value in _EMPTY else value


# ---------------------------------------------------------------------------- pure parsers


_SBATCH_RE = re.compile(r"^\s*(\d+)(?:;(\S+))?\s*$")


def parse_duration(text: str | None) -> float | None:
    """SLURM durations ("2:59", "1:02:03", "1-02:03:04", "5-00") in seconds; None for UNLIMITED etc."""
    if not text:
        return None
    text = text.strip()
    days = 0
    if "-" in text:
        d, _, text = text.partition("-")
        if not d.isdigit():
            return None
        days = int(d)
    parts = text.split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
        return None
    nums = [int(p) for p in parts]
    if days and len(nums) == 1:  # "D-HH"
        h, m, sec = nums[0], 0, 0
    elif len(nums) == 3:
        h, m, sec = nums
    elif len(nums) == 2:
        h, m, sec = 0, nums[0], nums[1]
    else:
        h, m, sec = 0, nums[0], 0
    return float(days * 86400 + h * 3600 + m * 60 + sec)


def parse_sbatch(text: str) -> str:
    """Job id from ``sbatch --parsable`` output: ``"123"`` or ``"123;cluster"`` → ``"123"``.

    Lines that are not an id (warnings some sites print) are skipped; the id is the last match.
    """
    job_id = None
    for line in text.splitlines():
        m = _SBATCH_RE.match(line)
        if m:
            job_id = m.group(1)
    if job_id is None:
        raise ValueError(f"no job id in sbatch output: {text.strip()[:200]!r}")
    return job_id


_RANGE_RE = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


def expand_array_tasks(spec: str) -> list[int]:
    """Task ids from an array spec as squeue prints it: ``"5-9%2"``, ``"[1,3,5-7]"``, ``"2-10:2"``.

    The ``%N`` throttle is dropped (it limits how many run at once, not which exist).
    """
    spec = spec.strip().split("%", 1)[0]
    spec = spec.removeprefix("[").removesuffix("]")
    tasks: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        m = _RANGE_RE.match(part)
        if not m:
            raise ValueError(f"not an array task spec: {spec!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        step = int(m.group(3)) if m.group(3) else 1
        tasks.extend(range(lo, hi + 1, step))
    return tasks


_JOBID_RE = re.compile(r"^(\d+)(?:_(\d+|\[[^\]]*\]))?(?:\+\d+)?(?:\.(.+))?$")


def split_job_id(job_id: str) -> tuple[str, str | None, str | None]:
    """``"123_[5-9%2]"`` → ("123", "[5-9%2]", None); ``"123_4.batch"`` → ("123", "4", "batch")."""
    m = _JOBID_RE.match(job_id.strip())
    if not m:
        raise ValueError(f"not a SLURM job id: {job_id!r}")
    return m.group(1), m.group(2), m.group(3)


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """Parse ``squeue --noheader --format=SQUEUE_FORMAT`` output into {job id: JobInfo}.

    Array tasks get one entry each ("123_4"); a pending range ("123_[5-9%2]") is expanded
    into one PENDING entry per task. Lines that do not parse are skipped.
    """
    jobs: dict[str, JobInfo] = {}
    n = len(SQUEUE_FIELDS)
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", n - 1)
        if len(parts) != n:
            continue
        f = dict(zip(SQUEUE_FIELDS, parts, strict=True))
        try:
            base, task, _step = split_job_id(f["id"])
        except ValueError:
            continue
        state_text = f["state"].strip()
        info = JobInfo(
            job_id=f["id"].strip(),
            state=parse_state(state_text),
            raw_state=state_text,
            name=f["name"].rstrip("\n"),
            reason=_opt(f["reason"]),
            nodes=_opt(f["nodes"]),
            partition=_opt(f["partition"]),
            time_used=_opt(f["time_used"]),
            time_left=_opt(f["time_left"]),
            time_left_s=parse_duration(_opt(f["time_left"])),
            time_limit=_opt(f["time_limit"]),
            start_time=_opt(f["start_time"]),
        )
        # For an array the user-facing id is "<array job id>_<task>"; %F is that array job id.
        _store(jobs, info, _opt(f["array_job_id"]) or base, task)
    return jobs


def parse_sacct(text: str) -> dict[str, JobInfo]:
    """Parse ``sacct --parsable2 --noheader --format=SACCT_FIELDS`` output into {job id: JobInfo}.

    Only the allocation line of each job counts; step lines ("123.batch", "123.extern", "123.0")
    are skipped. sacct's ``CANCELLED by 0`` becomes CANCELLED. Pending array ranges are expanded
    like in :func:`parse_squeue`.
    """
    jobs: dict[str, JobInfo] = {}
    n = len(SACCT_FIELDS)
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) < n:
            continue
        if len(parts) > n:
            # A job name with "|" in it: the name is the only free-text field, glue it back.
            extra = len(parts) - n
            parts = [parts[0], "|".join(parts[1 : 2 + extra]), *parts[2 + extra :]]
        f = dict(zip(SACCT_FIELDS, parts, strict=True))
        try:
            base, task, step = split_job_id(f["JobID"])
        except ValueError:
            continue
        if step is not None:
            continue
        state_text = f["State"].strip()
        info = JobInfo(
            job_id=f["JobID"].strip(),
            state=parse_state(state_text),
            raw_state=state_text,
            name=f["JobName"],
            nodes=_opt(f["NodeList"]),
            time_used=_opt(f["Elapsed"]),
            start_time=_opt(f["Start"]),
            end_time=_opt(f["End"]),
            exit_code=_opt(f["ExitCode"]),
            source="sacct",
        )
        _store(jobs, info, base, task)
    return jobs


def parse_tagged(text: str, prefix: str) -> dict[str, str]:
    """{comment: job id} from ``squeue --format=TAGGED_FORMAT`` output, for comments starting with ``prefix``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split("|", 2)
        if len(parts) != 3:
            continue
        job_id, _state, comment = (p.strip() for p in parts)
        if comment.startswith(prefix) and job_id:
            out[comment] = job_id
    return out


def check_tag(tag: str) -> str:
    """A tag goes onto sbatch's command line: letters, digits and ``_.:-`` only."""
    if not _TAG.match(tag):
        raise ValueError(f"not a valid job tag: {tag[:60]!r} (letters, digits, '_', '.', ':', '-')")
    return tag


def _store(jobs: dict[str, JobInfo], info: JobInfo, array_id: str, task: str | None) -> None:
    """Add one squeue/sacct row: a plain job as is, an array row once per task ("[0-3]" expanded),
    keyed "<array id>_<task>"."""
    if task is None:
        jobs[info.job_id] = info
    elif task.startswith("["):
        for t in expand_array_tasks(task):
            tid = f"{array_id}_{t}"
            jobs[tid] = replace(info, job_id=tid, array_job_id=array_id, array_task_id=t)
    else:
        jobs[info.job_id] = replace(info, array_job_id=array_id, array_task_id=int(task))


# ---------------------------------------------------------------------------- the scheduler


def _ids(job_ids: Iterable[str]) -> list[str]:
    out: list[str] = []
    for j in job_ids:
        j = str(j).strip()
        split_job_id(j)  # refuses anything that is not a job id: nothing else reaches scancel
        if j not in out:
            out.append(j)
    return out


def _matches(requested: str, info: JobInfo) -> bool:
    """Does ``info`` answer the request for ``requested`` ("123" also covers every task of array 123)?"""
    return info.job_id == requested or info.array_job_id == requested


class Slurm:
    """SLURM's commands over a :class:`~biofleet.remote.base.Runner` (local or SSH).

    ``env`` is passed to every command (e.g. ``{"SLURM_CONF": ...}`` for a test cluster).
    """

    name = "slurm"

    def __init__(self, runner: Runner, *, env: dict[str, str] | None = None, timeout: float = 30) -> None:
        self.dialect: ScriptDialect = SLURM
        self.runner = runner
        self.env = dict(env or {})
        self.timeout = timeout

    def _run(self, argv: list[str], *, check: bool = True) -> CompletedCommand:
        return self.runner.run(argv, timeout=self.timeout, check=check, env=self.env or None)

    def submit(self, script_path: str, *, tasks: Sequence[int] | None = None, tag: str | None = None,
               extra_args: Sequence[str] = ()) -> str:
        """Submit a batch script; return its job id. ``tasks``: only these tasks of its array;
        ``tag``: stored as the job's comment (see :meth:`find_tagged`)."""
        if tasks is not None:
            extra_args = [*extra_args, array_option(tasks)]
        if tag is not None:
            extra_args = [*extra_args, f"--comment={check_tag(tag)}"]
        argv = ["sbatch", "--parsable", *extra_args, str(script_path)]
        result = self._run(argv)
        try:
            return parse_sbatch(result.stdout)
        except ValueError:
            raise CommandError(argv, result.returncode, result.stdout, result.stderr,
                               reason="sbatch succeeded but printed no job id") from None

    def queue(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """Jobs still known to the controller, in ONE squeue call. Unknown ids are simply absent.

        An array job id ("123") yields one entry per task ("123_0", "123_1", ...).
        """
        ids = _ids(job_ids)
        if not ids:
            return {}
        # --states=all: without it squeue hides jobs that just ended (COMPLETED/FAILED/CANCELLED
        # stay in the controller for MinJobAge seconds) even when asked for them by id.
        argv = ["squeue", f"--jobs={','.join(ids)}", "--states=all", "--noheader", f"--format={SQUEUE_FORMAT}"]
        result = self._run(argv, check=False)
        if result.returncode != 0:
            # When none of the ids is known any more, squeue fails with "Invalid job id specified"
            # (exit 1) instead of printing nothing. That is an empty answer, not an error.
            if "Invalid job id" in result.stderr:
                return {}
            raise CommandError(argv, result.returncode, result.stdout, result.stderr)
        found = parse_squeue(result.stdout)
        # squeue answers a raw id ("6") with the array task's user id ("2_0"); keep what it says.
        return found

    def find_tagged(self, prefix: str) -> dict[str, str]:
        """{comment: job id} of this user's jobs squeue still shows whose comment starts with ``prefix``."""
        argv = ["squeue", "--noheader", "--states=all", "--me", f"--format={TAGGED_FORMAT}"]
        return parse_tagged(self._run(argv).stdout, prefix)

    def accounting(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """Finished jobs from sacct. Returns {} when accounting is disabled on this cluster."""
        ids = _ids(job_ids)
        if not ids:
            return {}
        argv = ["sacct", "--parsable2", "--noheader", "-j", ",".join(ids),
                f"--format={','.join(SACCT_FIELDS)}"]
        result = self._run(argv, check=False)
        if result.returncode != 0:
            if ACCOUNTING_DISABLED in (result.stderr + result.stdout).lower():
                return {}
            raise CommandError(argv, result.returncode, result.stdout, result.stderr)
        return parse_sacct(result.stdout)

    def states(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """squeue for everything, sacct only for the ids squeue no longer knows.

        A job known to neither (left the queue, no accounting) is absent from the result.
        """
        ids = _ids(job_ids)
        found = self.queue(ids)
        gone = [j for j in ids if not any(_matches(j, info) for info in found.values())]
        if gone:
            for key, info in self.accounting(gone).items():
                found.setdefault(key, info)
        return found

    def cancel(self, job_ids: Sequence[str]) -> None:
        """scancel exactly these ids. Jobs that already finished or vanished are not an error."""
        ids = _ids(job_ids)
        if not ids:
            return
        argv = ["scancel", *ids]
        result = self._run(argv, check=False)
        if result.returncode == 0:
            return
        benign = ("Invalid job id", "already completing or completed", "Job/step already completing")
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        if lines and all(any(b in ln for b in benign) for ln in lines):
            return
        raise CommandError(argv, result.returncode, result.stdout, result.stderr)

    def wait_gone(self, job_ids: Sequence[str], timeout: float, *, poll: float = 0.5) -> dict[str, JobInfo]:
        """Wait until no job holds resources any more: each is absent from squeue or terminal.

        Returns the last squeue answer (terminal jobs still listed). Raises TimeoutError
        naming the jobs that are still active.
        """
        ids = _ids(job_ids)
        deadline = time.monotonic() + timeout
        delay = min(poll, 0.25)
        while True:
            found = self.queue(ids)
            active = {k: v for k, v in found.items() if not v.state.is_terminal}
            if not active:
                return found
            if time.monotonic() >= deadline:
                desc = ", ".join(f"{k} {v.state.value}" for k, v in sorted(active.items()))
                raise TimeoutError(f"jobs still active after {timeout:g}s: {desc}")
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, poll)


# ---------------------------------------------------------------------------- the script dialect


def array_option(tasks: Sequence[int]) -> str:
    """sbatch's option for a subset of an array's tasks (command-line options win over #SBATCH)."""
    return "--array=" + ",".join(str(int(t)) for t in tasks)


# Sets the job's neutral variables from SLURM's: the array task, the id squeue shows for this task,
# the node, the GPUs SLURM granted (global ids; CUDA_VISIBLE_DEVICES is read first by the script).
_JOB_ENVIRONMENT = """\
# shellcheck disable=SC2034  # a script uses the variables it needs (the proxy job few)
{
  TASK_ID="${SLURM_ARRAY_TASK_ID:-0}"
  if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then
    JOB_KEY="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
    IS_ARRAY=1
  else
    JOB_KEY="${SLURM_JOB_ID:-local$$}"
    IS_ARRAY=0
  fi
  NODE_NAME="${SLURMD_NODENAME:-$(hostname)}"
  GRANTED_GPUS="${SLURM_JOB_GPUS:-}"
}
"""


class SlurmDialect:
    """sbatch scripts: ``#SBATCH`` lines, SLURM's job variables, ``123_4`` task ids, ``%A_%a`` output files."""

    def directives(self, profile: Profile, job: JobSpec | None, fleet_dir: str) -> list[str]:
        from biofleet.plan import gpu_of

        c = profile.cluster
        if job is None:  # the proxy job, on the profile's CPU partition
            px = profile.proxy
            d: dict[str, str | None] = {
                "job-name": f"biofleet-{profile.name}-proxy",
                "partition": px.partition or c.partition,
                "account": c.account,
                "qos": c.qos,
                "time": px.time or c.time,
                "cpus-per-task": str(px.cpus_per_task),
                "mem": px.mem,
                "nodes": "1",
                "ntasks": "1",
                "output": f"{fleet_dir}/logs/proxy-%j.out",
            }
            return [f"#SBATCH --{k}={v}" for k, v in sorted(d.items()) if v]
        gres = None
        if job.gpu is not None:
            gpu = gpu_of(job)
            gres_type = job.gres_type if job.gres_type is not None else (gpu.gres_type if gpu else None)
            gres = f"gpu:{gres_type}:{job.gpus_per_node}" if gres_type else f"gpu:{job.gpus_per_node}"
        d = {
            "job-name": f"biofleet-{profile.name}-{job.name}",
            "partition": job.partition or c.partition,
            "account": job.account or c.account,
            "qos": job.qos or c.qos,
            "constraint": job.constraint or c.constraint,
            "reservation": c.reservation,
            "time": job.time or c.time,
            "cpus-per-task": str(job.cpus_per_task or c.cpus_per_task),
            "mem": job.mem or c.mem,
            "gres": gres,
            "nodes": "1",
            "ntasks": "1",
            "output": (f"{fleet_dir}/logs/{job.name}-%A_%a.out" if job.is_array
                       else f"{fleet_dir}/logs/{job.name}-%j.out"),
        }
        if job.is_array:
            d["array"] = f"0-{len(job.nodes) - 1}"
        lines = [f"#SBATCH --{k}={v}" for k, v in sorted(d.items()) if v]
        return lines + [f"#SBATCH {x}" for x in sorted(c.sbatch_extra)]

    def job_environment(self) -> str:
        return _JOB_ENVIRONMENT

    def task_job_id(self, job_id: str, task: int, array: bool) -> str:
        return f"{job_id}_{task}" if array else job_id

    def output_path(self, logs_dir: str, job_name: str, job_id: str, task: int | None) -> str:
        name = f"{job_name}-{job_id}_{task}.out" if task is not None else f"{job_name}-{job_id}.out"
        return f"{logs_dir}/{name}"

    def parse_time_limit(self, text: str) -> float | None:
        return parse_duration(text)


SLURM = SlurmDialect()
