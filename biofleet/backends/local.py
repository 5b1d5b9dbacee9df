"""A scheduler without SLURM: rendered job scripts run as local processes.

The embedded default for a laptop or a CI box with no ``sbatch``: the same
scripts, started with the environment variables SLURM would set
(``SLURM_JOB_ID``, ``SLURM_ARRAY_JOB_ID``, ``SLURM_ARRAY_TASK_ID``, ...), one
process group per array task. It answers the same questions as
:class:`biofleet.backends.slurm.Slurm` (submit, queue, states, cancel,
wait_gone) so the fleet code does not care which one it has.

Bookkeeping lives in ``<state_dir>/<job>_<task>.json``; each task's exit code is
written by a tiny wrapper shell into ``<job>_<task>.rc`` so that a later
``biofleet status`` (another process) still learns how the task ended.

GPUs are granted as SLURM grants them: a task asking ``--gres=gpu[:type]:N`` gets
``CUDA_VISIBLE_DEVICES`` listing N indices not held by another running local task,
taken from this machine's ``/dev/nvidiaN`` devices (or from ``BIOFLEET_LOCAL_GPUS``
stand-in GPUs; unlimited stand-ins when the machine has none). When fewer are free,
the task gets what is free and its job script refuses to start, as it would on a
short allocation.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from biofleet.backends.base import JobInfo, JobState, ScriptDialect
from biofleet.backends.slurm import SLURM, array_option, check_tag, expand_array_tasks, split_job_id

_ARRAY_DIRECTIVE = re.compile(r"^#SBATCH\s+--array=(\S+)", re.M)
_OUTPUT_DIRECTIVE = re.compile(r"^#SBATCH\s+--output=(\S+)", re.M)
_NAME_DIRECTIVE = re.compile(r"^#SBATCH\s+--job-name=(\S+)", re.M)
_GRES_DIRECTIVE = re.compile(r"^#SBATCH\s+--gres=(\S+)", re.M)
_GRES_GPU = re.compile(r"^gpu(?::[^:,]+)?:(\d+)$|^gpu$")
LOCAL_GPUS_ENV = "BIOFLEET_LOCAL_GPUS"


def gpus_requested(gres: str | None) -> int:
    """GPUs asked for by a --gres value such as ``gpu:t4:2`` or ``gpu:1`` (0 when none)."""
    for item in (gres or "").split(","):
        m = _GRES_GPU.match(item.strip())
        if m:
            return int(m.group(1) or 1)
    return 0


def machine_gpus() -> list[int] | None:
    """The GPU indices this machine can hand out, or None for unlimited stand-ins."""
    forced = os.environ.get(LOCAL_GPUS_ENV)
    if forced is not None and forced.strip().isdigit():
        return list(range(int(forced)))
    found = sorted(int(m.group(1)) for d in Path("/dev").glob("nvidia*")
                   if (m := re.fullmatch(r"nvidia(\d+)", d.name)))
    return found or None


class LocalScheduler:
    """Runs sbatch scripts (SLURM's dialect) as local process groups; the same answers as SLURM."""

    name = "local"

    def __init__(self, state_dir: str | Path) -> None:
        self.dialect: ScriptDialect = SLURM
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)

    # -- submission ------------------------------------------------------------

    def _next_id(self) -> str:
        # Two processes may submit at once (up, and an elastic fleet's controller in the proxy).
        with open(self.dir / "next-id.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            counter = self.dir / "next-id"
            n = int(counter.read_text()) if counter.exists() else 1000
            counter.write_text(str(n + 1))
        return str(n)

    def submit(self, script_path: str, *, tasks: Sequence[int] | None = None, tag: str | None = None,
               extra_args: Sequence[str] = ()) -> str:
        if tasks is not None:
            extra_args = [*extra_args, array_option(tasks)]
        comment = check_tag(tag) if tag is not None else None
        text = Path(script_path).read_text()
        array = None
        m = _ARRAY_DIRECTIVE.search(text)
        if m:
            array = m.group(1)
        for arg in extra_args:  # command-line options win over #SBATCH lines, as with sbatch
            if arg.startswith("--array="):
                array = arg.split("=", 1)[1]
        job_id = self._next_id()
        gres_lines = _GRES_DIRECTIVE.findall(text)  # sbatch takes the last of repeated options
        gres = gres_lines[-1] if gres_lines else None
        for arg in extra_args:
            if arg.startswith("--gres="):
                gres = arg.split("=", 1)[1]
        name_m, out_m = _NAME_DIRECTIVE.search(text), _OUTPUT_DIRECTIVE.search(text)
        name = name_m.group(1) if name_m else Path(script_path).stem
        out_pattern = out_m.group(1) if out_m else str(self.dir / "slurm-%j.out")
        task_ids: list[int | None] = list(expand_array_tasks(array)) if array else [None]
        for task in task_ids:
            self._start(script_path, job_id, task, name, out_pattern, gpus_requested(gres), comment)
        return job_id

    def _grant_gpus(self, n: int) -> list[int]:
        held = {g for rec in self._records() if _group_alive(rec["pgid"]) for g in rec.get("gpus") or ()}
        pool = machine_gpus()
        if pool is None:
            free = (g for g in range(len(held) + n + 1) if g not in held)
        else:
            free = (g for g in pool if g not in held)
        return list(itertools.islice(free, n))

    def _start(self, script: str, job_id: str, task: int | None, name: str, out_pattern: str,
               gpus: int = 0, comment: str | None = None) -> None:
        key = f"{job_id}_{task}" if task is not None else job_id
        granted = self._grant_gpus(gpus) if gpus else []
        env = dict(os.environ)
        env.pop("CUDA_VISIBLE_DEVICES", None)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, granted))
        env.update({
            "SLURM_JOB_ID": key if task is None else str(int(job_id) * 1000 + task),
            "SLURM_JOB_NAME": name,
            "SLURMD_NODENAME": socket.gethostname(),
            "SLURM_CPUS_PER_TASK": "1",
            "BIOFLEET_LOCAL_BACKEND": "1",
        })
        env.pop("SLURM_ARRAY_JOB_ID", None)
        env.pop("SLURM_ARRAY_TASK_ID", None)
        if task is not None:
            env["SLURM_ARRAY_JOB_ID"] = job_id
            env["SLURM_ARRAY_TASK_ID"] = str(task)
        out = (out_pattern.replace("%A", job_id).replace("%a", str(task if task is not None else 0))
               .replace("%j", key).replace("%x", name))
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        rc_file = self.dir / f"{key}.rc"
        rc_file.unlink(missing_ok=True)
        with open(out, "ab") as fh:
            # The wrapper records the exit code; start_new_session gives the task its own
            # process group so cancel() can signal the script and every server it started.
            proc = subprocess.Popen(
                ["bash", "-c", 'bash "$1"; echo $? > "$2"', "biofleet-local", script, str(rc_file)],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True, close_fds=True,
            )
        record = {"job_id": key, "array_job_id": job_id if task is not None else None, "array_task_id": task,
                  "name": name, "pid": proc.pid, "pgid": proc.pid, "start": time.time(), "output": out,
                  "gpus": granted, "comment": comment}
        (self.dir / f"{key}.json").write_text(json.dumps(record))

    # -- state -----------------------------------------------------------------

    def _records(self) -> list[dict]:
        out = []
        for p in sorted(self.dir.glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def _info(self, rec: dict) -> JobInfo:
        key = rec["job_id"]
        rc_file = self.dir / f"{key}.rc"
        cancelled = (self.dir / f"{key}.cancelled").exists()
        alive = _group_alive(rec["pgid"])
        if alive:
            state = JobState.COMPLETING if cancelled else JobState.RUNNING
            exit_code = None
        elif cancelled:
            state, exit_code = JobState.CANCELLED, None
        else:
            rc = rc_file.read_text().strip() if rc_file.exists() else ""
            exit_code = f"{rc}:0" if rc else None
            state = JobState.COMPLETED if rc == "0" else JobState.FAILED
        elapsed = int(time.time() - rec["start"])
        return JobInfo(
            job_id=key, state=state, raw_state=state.value, name=rec.get("name"),
            nodes=socket.gethostname(), partition="local", time_used=_hms(elapsed), time_left="UNLIMITED",
            exit_code=exit_code, array_job_id=rec.get("array_job_id"), array_task_id=rec.get("array_task_id"),
            source="local",
        )

    def queue(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        wanted = {str(j) for j in job_ids}
        out = {}
        for rec in self._records():
            if rec["job_id"] in wanted or (rec.get("array_job_id") or "") in wanted:
                info = self._info(rec)
                out[info.job_id] = info
        return out

    def accounting(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        return {}

    def find_tagged(self, prefix: str) -> dict[str, str]:
        # What squeue would show: jobs not ended (this backend keeps its records forever).
        return {rec["comment"]: rec["job_id"] for rec in self._records()
                if isinstance(rec.get("comment"), str) and rec["comment"].startswith(prefix)
                and not self._info(rec).state.is_terminal}

    def states(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        return self.queue(job_ids)

    def cancel(self, job_ids: Sequence[str]) -> None:
        for j in job_ids:
            split_job_id(str(j))
        for info in self.queue(job_ids).values():
            if info.state.is_terminal:
                continue
            rec = json.loads((self.dir / f"{info.job_id}.json").read_text())
            (self.dir / f"{info.job_id}.cancelled").touch()
            try:
                os.killpg(rec["pgid"], signal.SIGTERM)
            except ProcessLookupError:
                pass

    def wait_gone(self, job_ids: Sequence[str], timeout: float, *, poll: float = 0.2) -> dict[str, JobInfo]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.queue(job_ids)
            active = [k for k, v in found.items() if not v.state.is_terminal]
            if not active:
                return found
            if time.monotonic() >= deadline:
                # SLURM would SIGKILL after KillWait; do the same so nothing is left behind.
                for k in active:
                    rec = json.loads((self.dir / f"{k}.json").read_text())
                    try:
                        os.killpg(rec["pgid"], signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.2)
                return self.queue(job_ids)
            time.sleep(poll)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader with no other members still "exists"; check the leader's state.
    try:
        stat = Path(f"/proc/{pgid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return _other_members(pgid)
    except OSError:
        return _other_members(pgid)
    return True


def _other_members(pgid: int) -> bool:
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == pgid:
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _hms(seconds: int) -> str:
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"
