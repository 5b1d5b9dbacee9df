"""Scheduler backends: where jobs run and how their scripts read.

A backend is a module here with a :class:`~biofleet.backends.base.Scheduler` and the
:class:`~biofleet.backends.base.ScriptDialect` its scripts are written in; :func:`make_scheduler`
is the one place that knows them all. Adding PBS or Flux means one module, one line in
:data:`BACKENDS`, and its tests (recorded command output for the parsers, a real daemon
where one can run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from biofleet.backends.base import Scheduler
    from biofleet.remote.base import Runner

#: backend name -> what it is, for messages and --help
BACKENDS = {
    "slurm": "SLURM's sbatch/squeue/sacct/scancel, here or on a login node over SSH",
    "local": "the same scripts as local processes on this machine (no scheduler needed)",
}


def make_scheduler(name: str, runner: Runner, *, state_dir: str, env: dict[str, str] | None = None) -> Scheduler:
    """The scheduler called ``name``, running its commands through ``runner``.

    ``state_dir``: where a backend without a daemon keeps its bookkeeping (the local backend);
    ``env``: extra environment for the scheduler's commands (``SLURM_CONF``).
    """
    from biofleet.errors import FleetError

    if name == "slurm":
        from biofleet.backends.slurm import Slurm

        return Slurm(runner, env=env)
    if name == "local":
        if not runner.is_local:
            raise FleetError(f"the local backend runs jobs on this machine; it cannot run them on {runner.where}")
        from biofleet.backends.local import LocalScheduler

        return LocalScheduler(state_dir)
    raise FleetError(f"unknown backend {name!r}; use one of: {', '.join(BACKENDS)} (or auto)")
