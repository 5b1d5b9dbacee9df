"""The state ``up`` records in the fleet directory (see :mod:`biofleet.paths` for its layout).


``state.json`` holds the job ids ``up`` submitted (``down`` cancels exactly these), the
proxy's whereabouts, and what each submission replaces during a renewal.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from biofleet.errors import FleetError
from biofleet.paths import FleetPaths
from biofleet.remote.base import Runner


class Supervision(BaseModel):
    """What a running job's watcher says of one server (``servers/<server>.<job key>.json``)."""

    model_config = ConfigDict(extra="ignore")

    server: str
    job_id: str
    state: Literal["running", "restarting", "failed"]
    reason: str | None = None
    restarts: int = 0
    max_restarts: int = 0
    last_exit: int | None = None
    pid: int | None = None
    devices: str | None = None  # what CUDA_VISIBLE_DEVICES the server was given
    updated_at: float | None = None


class JobRecord(BaseModel):
    """One submission: a profile job, or some array tasks of it resubmitted."""

    model_config = ConfigDict(extra="ignore")

    job: str  # job name in the profile ("proxy" for the proxy job)
    job_id: str
    tasks: list[int] = Field(default_factory=lambda: [0])  # array task indices this submission runs
    array: bool = False
    # The id the scheduler shows for each task ("123_4"), from its dialect at submission.
    task_ids: dict[int, str] = Field(default_factory=dict)
    submitted_at: float = Field(default_factory=time.time)
    replaces: list[str] = Field(default_factory=list)  # task job ids this renewal drains once READY

    @model_validator(mode="after")
    def _older_state_files(self) -> JobRecord:
        # state.json written before task ids were recorded: SLURM's convention, the only one then.
        if not self.task_ids:
            from biofleet.backends.slurm import SLURM

            self.task_ids = {t: SLURM.task_job_id(self.job_id, t, self.array) for t in self.tasks}
        return self

    def task_job_id(self, task: int) -> str:
        """The id the scheduler shows for one task of this submission."""
        return self.task_ids[task]


class ProxyRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    run: Literal["slurm", "local"]
    job_id: str | None = None
    pid: int | None = None
    host: str | None = None
    url: str | None = None


class FleetState(BaseModel):
    model_config = ConfigDict(extra="ignore")

    fleet: str
    profile: str
    backend: str  # a name in biofleet.backends.BACKENDS
    fleet_dir: str
    jobs: list[JobRecord] = Field(default_factory=list)
    proxy: ProxyRecord | None = None
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        from biofleet.backends import BACKENDS

        if v not in BACKENDS:
            raise ValueError(f"unknown backend {v!r}; known: {', '.join(BACKENDS)}")
        return v

    def job_ids(self) -> list[str]:
        ids = [j.job_id for j in self.jobs]
        if self.proxy and self.proxy.job_id:
            ids.append(self.proxy.job_id)
        return ids

    def latest(self, job: str, task: int) -> JobRecord | None:
        """The most recent submission that runs ``task`` of ``job``."""
        for rec in reversed(self.jobs):
            if rec.job == job and task in rec.tasks:
                return rec
        return None

    def dumps(self) -> str:
        self.updated_at = time.time()
        return json.dumps(self.model_dump(mode="json"), indent=2)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def load_state(runner: Runner, paths: FleetPaths) -> FleetState | None:
    if not runner.exists(paths.state):
        return None
    try:
        return FleetState.model_validate(json.loads(runner.read_text(paths.state)))
    except ValueError as exc:
        raise FleetError(
            f"fleet state {paths.state} is unreadable ({exc}); move it aside to start this fleet afresh"
        ) from None


def save_state(runner: Runner, paths: FleetPaths, state: FleetState) -> None:
    runner.write_text(paths.state, state.dumps())
