"""The fleet side of elastic servers: what ``up`` writes for the controller, what ``status``
shows of it, and what ``down`` cancels.

``up`` renders an elastic server's job script (what one replica runs) and writes
``elastic.json``; it submits nothing for that server: the controller in the proxy submits ``min``
replicas as soon as it starts, and more (or fewer) with the load. ``status`` joins the
controller's journal with the one batched scheduler query it makes anyway. ``down`` stops the
proxy first (no submission may race the cancellation), then cancels every replica the journal
names and every job in the queue carrying this fleet's tag (a submission the journal never
recorded included).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from biofleet.elastic.state import (
    ElasticPlan,
    ElasticServerPlan,
    ElasticState,
    fleet_tag,
    load_elastic_state,
    load_plan,
)
from biofleet.errors import FleetError
from biofleet.fleet.context import Fleet
from biofleet.profile import Profile

RECENT_DECISIONS = 5  # per server, in status


def make_plan(fleet: Fleet, profile: Profile) -> ElasticPlan | None:
    """The plan the controller follows, or None when the profile has no elastic server."""
    elastic = profile.elastic_servers()
    if not elastic:
        return None
    paths = fleet.paths
    servers = {}
    for key, job in elastic.items():
        spec = profile.servers[key]
        rng = spec.elastic
        assert rng is not None
        servers[key] = ElasticServerPlan(server=key, job=job.name, script=paths.script(job.name),
                                         served_names=(spec.served_name or key, *spec.aliases),
                                         min=rng.min, max=rng.max, policy=spec.policy)
    env = {}
    if profile.cluster.slurm_conf:
        env["SLURM_CONF"] = fleet.runner.expand_path(profile.cluster.slurm_conf)
    return ElasticPlan(fleet=profile.name, fleet_dir=paths.root, backend=fleet.backend, scheduler_env=env,
                       local_state_dir=paths.root + "/local-jobs", tag=fleet_tag(profile.name, paths.root),
                       servers=servers)


def write_plan(fleet: Fleet, plan: ElasticPlan, scripts: dict[str, str]) -> None:
    """The replica scripts, then the plan naming them (a controller reloads the plan when it changes)."""
    for sp in plan.servers.values():
        fleet.runner.write_text(sp.script, scripts[sp.job], mode=0o755)
    fleet.runner.write_text(fleet.paths.elastic_plan, plan.model_dump_json(indent=2))


def read_journal(fleet: Fleet) -> tuple[ElasticState | None, str | None]:
    """(the controller's journal, or None; a note when it could not be read)."""
    try:
        return load_elastic_state(fleet.runner, fleet.paths), None
    except FleetError as exc:
        return None, str(exc)


@dataclass
class ElasticSummary:
    """One elastic server as ``status`` shows it."""

    server: str
    served_name: str
    min: int
    max: int
    ready: int = 0
    starting: int = 0  # decided, submitted or loading (not pending in the queue)
    pending: int = 0  # waiting in the scheduler's queue
    draining: int = 0
    held: int | None = None  # requests held in the proxy (None: the controller has not said)
    waiting_for: str | None = None
    last_cold_start_s: float | None = None
    controller_seen_s: float | None = None  # seconds since the controller last wrote its journal
    decisions: list[dict[str, Any]] = field(default_factory=list)  # the newest last


def elastic_summaries(profile: Profile, journal: ElasticState | None, rows: list[Any]) -> list[ElasticSummary]:
    """Per elastic server: replicas by phase (from the status rows), held requests and the last
    decisions (from the journal)."""
    from biofleet.fleet.status import ServerState

    out = []
    now = time.time()
    for key in profile.elastic_servers():
        spec = profile.servers[key]
        rng = spec.elastic
        assert rng is not None
        s = ElasticSummary(key, spec.served_name or key, rng.min, rng.max)
        for row in rows:
            if not row.elastic or row.name != key:
                continue
            if row.state == ServerState.READY:
                s.ready += 1
            elif row.state == ServerState.DRAINING:
                s.draining += 1
            elif row.state == ServerState.PENDING:
                s.pending += 1
            elif row.state in (ServerState.NOT_SUBMITTED, ServerState.RUNNING, ServerState.STARTING,
                               ServerState.RESTARTING):
                s.starting += 1
        if journal is not None:
            snap = journal.models.get(key)
            if snap is not None:
                s.held, s.waiting_for, s.last_cold_start_s = snap.held, snap.waiting_for, snap.last_cold_start_s
            if journal.controller is not None:
                s.controller_seen_s = round(now - journal.controller.heartbeat, 1)
            s.decisions = [d.model_dump() for d in journal.decisions if d.server == key][-RECENT_DECISIONS:]
        out.append(s)
    return out


def stop_and_cancel(fleet: Fleet, tag: str, journal: ElasticState | None,
                    on_event: Callable[[str], None]) -> list[str]:
    """After the proxy (its controller) is stopped: the job ids of every elastic replica of this
    fleet, from the journal and from one tagged queue query (a submission it never recorded)."""
    ids = list(journal.job_ids()) if journal is not None else []
    found = fleet.scheduler.find_tagged(tag)
    extra = [j for j in found.values() if j not in ids]
    if extra:
        on_event(f"found {len(extra)} elastic replica job(s) the journal did not list, by this fleet's tag: "
                 f"{' '.join(extra)}")
    return ids + extra


def load_plan_quiet(fleet: Fleet) -> ElasticPlan | None:
    try:
        return load_plan(fleet.runner, fleet.paths)
    except FleetError:
        return None
