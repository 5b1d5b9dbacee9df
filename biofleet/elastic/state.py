"""What the elastic controller reads and writes in the fleet directory.

* ``elastic.json`` — the :class:`ElasticPlan`, written by ``up``: which servers are elastic, the
  script one replica runs, their policies, and how to reach the scheduler. The controller needs
  no profile and no renderer.
* ``elastic-state.json`` — the :class:`ElasticState`, the controller's journal (``state.json``
  belongs to ``up``; the two never write each other's file). Every scale-up is recorded as an
  *intent* with an id before ``sbatch`` runs, and that id travels with the job (its tag, SLURM's
  comment), so a controller that restarts finds a submission it never recorded with one
  ``squeue`` and adopts it instead of submitting again. ``status`` and ``down`` read it too.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from biofleet.elastic.policy import ScalingPolicy
from biofleet.errors import FleetError
from biofleet.paths import FleetPaths
from biofleet.remote.base import Runner

MAX_DECISIONS = 100  # decisions kept in the journal (the newest)
MAX_ENDED = 50  # ended replicas kept for the record (the newest)
MAX_JOURNAL_BYTES = 4 << 20


class ElasticServerPlan(BaseModel):
    model_config = ConfigDict(extra="ignore")

    server: str  # the server's key in the profile (its registry records are <server>.<job id>.json)
    job: str  # the profile job whose script one replica runs
    script: str  # that script, rendered by up
    served_names: tuple[str, ...]  # served name and aliases
    min: int
    max: int
    policy: ScalingPolicy = Field(default_factory=ScalingPolicy)


class ElasticPlan(BaseModel):
    model_config = ConfigDict(extra="ignore")

    fleet: str
    fleet_dir: str
    backend: str  # the scheduler up used (biofleet.backends.BACKENDS)
    scheduler_env: dict[str, str] = Field(default_factory=dict)  # e.g. SLURM_CONF
    local_state_dir: str = ""  # the local backend's bookkeeping
    tag: str  # every replica's job carries tag + intent id
    servers: dict[str, ElasticServerPlan] = Field(default_factory=dict)

    @property
    def paths(self) -> FleetPaths:
        return FleetPaths(self.fleet_dir)

    def server_for(self, served: str) -> ElasticServerPlan | None:
        for s in self.servers.values():
            if served in s.served_names:
                return s
        return None


def fleet_tag(fleet: str, fleet_dir: str) -> str:
    """The prefix of every elastic job's tag in this fleet (the fleet directory tells two fleets of
    the same name apart)."""
    digest = hashlib.sha256(fleet_dir.encode()).hexdigest()[:8]
    safe = "".join(c if c.isalnum() or c in "_.-" else "-" for c in fleet)[:60]
    return f"biofleet:{safe}:{digest}:"


ReplicaState = Literal["intent", "submitted", "draining", "cancelled", "ended"]


class ReplicaRecord(BaseModel):
    """One replica the controller decided on, from the decision until its job ended."""

    model_config = ConfigDict(extra="ignore")

    id: str  # the intent id; the job's tag is plan.tag + id
    server: str
    state: ReplicaState = "intent"  # intent: recorded, sbatch not confirmed yet
    job_id: str | None = None
    reason: str = ""  # why it was started
    decided_at: float = Field(default_factory=time.time)
    submitted_at: float | None = None
    running_at: float | None = None  # first seen RUNNING by the scheduler
    ready_at: float | None = None  # first routed to by the proxy
    drain_at: float | None = None
    ended_at: float | None = None
    end: str | None = None  # how it ended ("FAILED exit 1:0", "drained", "sbatch failed: ...")
    failed: bool = False  # it ended without ever serving: a failed start

    @property
    def live(self) -> bool:
        return self.state != "ended"


class DecisionRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    at: float
    server: str
    action: str  # scale-up, drain, undrain, cancel, adopt, failed, lost, timeout
    reason: str
    replica: str | None = None
    job_id: str | None = None


class ModelSnapshot(BaseModel):
    """What the controller last saw of one elastic server (for status)."""

    model_config = ConfigDict(extra="ignore")

    held: int = 0
    ready: int = 0
    starting: int = 0
    pending: int = 0
    draining: int = 0
    waiting_for: str | None = None  # what held requests wait for ("job 12: PENDING (Resources)")
    backoff_until: float | None = None
    last_cold_start_s: float | None = None


class ControllerInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    pid: int
    host: str
    started_at: float
    heartbeat: float


class ElasticState(BaseModel):
    model_config = ConfigDict(extra="ignore")

    fleet: str
    replicas: list[ReplicaRecord] = Field(default_factory=list)
    decisions: list[DecisionRecord] = Field(default_factory=list)
    models: dict[str, ModelSnapshot] = Field(default_factory=dict)
    controller: ControllerInfo | None = None
    updated_at: float = Field(default_factory=time.time)

    def live(self, server: str | None = None) -> list[ReplicaRecord]:
        return [r for r in self.replicas if r.live and (server is None or r.server == server)]

    def job_ids(self) -> list[str]:
        """Job ids of replicas whose jobs may still be in the queue."""
        return [r.job_id for r in self.replicas if r.live and r.job_id]

    def prune(self) -> None:
        ended = [r for r in self.replicas if not r.live]
        if len(ended) > MAX_ENDED:
            drop = {id(r) for r in ended[: len(ended) - MAX_ENDED]}
            self.replicas = [r for r in self.replicas if id(r) not in drop]
        if len(self.decisions) > MAX_DECISIONS:
            self.decisions = self.decisions[-MAX_DECISIONS:]

    def dumps(self) -> str:
        self.updated_at = time.time()
        self.prune()
        return json.dumps(self.model_dump(mode="json"), indent=1)


def new_intent_id() -> str:
    return f"{int(time.time())}-{secrets.token_hex(4)}"


def load_plan(runner: Runner, paths: FleetPaths) -> ElasticPlan | None:
    if not runner.exists(paths.elastic_plan):
        return None
    try:
        return ElasticPlan.model_validate(json.loads(runner.read_text(paths.elastic_plan)))
    except ValueError as exc:
        raise FleetError(f"elastic plan {paths.elastic_plan} is unreadable ({exc}); run biofleet up again "
                         "to rewrite it") from None


def load_elastic_state(runner: Runner, paths: FleetPaths) -> ElasticState | None:
    """The controller's journal, or None when there is none. Raises FleetError when it is unreadable."""
    if not runner.exists(paths.elastic_state):
        return None
    try:
        text = runner.read_text(paths.elastic_state, MAX_JOURNAL_BYTES)
        return ElasticState.model_validate(json.loads(text))
    except ValueError as exc:
        raise FleetError(f"elastic journal {paths.elastic_state} is unreadable ({exc})") from None


def save_elastic_state(runner: Runner, paths: FleetPaths, state: ElasticState) -> None:
    runner.write_text(paths.elastic_state, state.dumps())
