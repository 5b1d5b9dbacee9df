"""The fleet directory on the cluster side, and the state ``up`` records in it.

    <workdir>/<fleet>/
        state.json        job ids up submitted (down cancels exactly these)
        routing.json      the proxy's routing table, written at up
        proxy.json        where the proxy listens (written by the proxy job / up)
        scripts/          rendered sbatch scripts
        logs/             SLURM output and one log per server
        registry/         one JSON record per live server (see biofleet.registry)
        servers/          one supervision record per server of a running task (state, restarts,
                          last exit code), written by the job script
        control/          requests to a running job (``<server>.<job key>.restart``), written by up
        secrets/          proxy.token, backend.key (mode 0600, read by jobs at start)
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class FleetPaths:
    root: str  # absolute, on the cluster side (posix)

    def _p(self, *parts: str) -> str:
        return "/".join((self.root.rstrip("/"), *parts))

    @property
    def scripts(self) -> str:
        return self._p("scripts")

    @property
    def logs(self) -> str:
        return self._p("logs")

    @property
    def registry(self) -> str:
        return self._p("registry")

    @property
    def servers(self) -> str:
        return self._p("servers")

    @property
    def control(self) -> str:
        return self._p("control")

    @property
    def secrets(self) -> str:
        return self._p("secrets")

    @property
    def state(self) -> str:
        return self._p("state.json")

    @property
    def routing(self) -> str:
        return self._p("routing.json")

    @property
    def proxy_record(self) -> str:
        return self._p("proxy.json")

    @property
    def token(self) -> str:
        return self._p("secrets", "proxy.token")

    @property
    def backend_key(self) -> str:
        return self._p("secrets", "backend.key")

    def script(self, job: str) -> str:
        return self._p("scripts", f"{job}.sbatch")

    def server_log(self, server: str, job_key: str) -> str:
        return self._p("logs", f"{server}.{job_key}.log")

    def restart_request(self, server: str, job_key: str) -> str:
        return self._p("control", f"{server}.{job_key}.restart")


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
    """One sbatch submission: a profile job, or some array tasks of it resubmitted."""

    model_config = ConfigDict(extra="ignore")

    job: str  # job name in the profile ("proxy" for the proxy job)
    job_id: str
    tasks: list[int] = Field(default_factory=lambda: [0])  # array task indices this submission runs
    array: bool = False
    submitted_at: float = Field(default_factory=time.time)
    replaces: list[str] = Field(default_factory=list)  # task job ids this renewal drains once READY

    def task_job_id(self, task: int) -> str:
        """The id squeue shows for one task of this submission."""
        return f"{self.job_id}_{task}" if self.array else self.job_id


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
    backend: Literal["slurm", "local"]
    fleet_dir: str
    jobs: list[JobRecord] = Field(default_factory=list)
    proxy: ProxyRecord | None = None
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)

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
