"""Fleet status: the scheduler (one batched query), the registry and supervision records the
jobs write, and concurrent HTTP probes, joined per server."""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from biofleet.backends.base import JobInfo, JobState
from biofleet.fleet.context import Fleet
from biofleet.fleet.elastic import ElasticSummary, elastic_summaries, read_journal
from biofleet.fleet.state import FleetState, Supervision, load_state
from biofleet.names import check_endpoint_url
from biofleet.paths import FleetPaths
from biofleet.plan import node_label
from biofleet.procs import pid_alive
from biofleet.registry import MAX_RECORD_BYTES, MAX_RECORDS, Endpoint, parse_records, problems_line
from biofleet.remote.base import MAX_SECRET_BYTES, Runner, last_lines


class ServerState(str, Enum):
    """A server as status shows it, in the order it goes through them."""

    NOT_SUBMITTED = "NOT_SUBMITTED"
    PENDING = "PENDING"  # its task waits in the queue
    RUNNING = "RUNNING"  # its task runs; the server has not registered yet
    STARTING = "STARTING"  # registered, not answering /health with its model yet
    READY = "READY"
    DRAINING = "DRAINING"  # an elastic replica being released: no new requests, in-flight ones finish
    RESTARTING = "RESTARTING"  # exited; its job restarts it in place after a back-off
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    GONE = "GONE"  # its job left the queue and no accounting record says how

    def __str__(self) -> str:
        return self.value


SETTLED = frozenset({ServerState.READY, ServerState.FAILED, ServerState.STOPPED, ServerState.GONE})
"""up stops waiting for a server in one of these."""
NEEDS_RESUBMIT = frozenset({ServerState.NOT_SUBMITTED, ServerState.FAILED, ServerState.STOPPED, ServerState.GONE})


@dataclass
class ServerStatus:
    name: str
    served_name: str
    model: str
    engine: str
    node_label: str
    job: str
    task: int
    job_id: str | None = None
    state: ServerState = ServerState.NOT_SUBMITTED
    reason: str | None = None
    node: str | None = None
    url: str | None = None
    health: str | None = None
    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None
    started_at: float | None = None
    time_left: str | None = None
    ends_in_s: float | None = None  # seconds until the job's time limit (None: unlimited/unknown)
    ending_soon: bool = False  # within the profile's renew_margin
    restarts: int = 0  # in-place restarts by its job since the last fresh budget
    last_exit: int | None = None  # exit code of its last exit
    devices: str | None = None  # CUDA_VISIBLE_DEVICES it was given
    task_running: bool = False  # its job task runs (a FAILED server is then restarted in place)
    # its job is COMPLETING: ended, but the scheduler has not said how yet (shown STOPPED; up waits for the outcome)
    completing: bool = False
    log_tail: list[str] = field(default_factory=list)
    elastic: bool = False  # a replica of an elastic server, started by the proxy's controller

    @property
    def uptime_s(self) -> float | None:
        return time.time() - self.started_at if self.started_at else None


@dataclass
class ProxyStatus:
    run: str | None = None
    job_id: str | None = None
    state: ServerState = ServerState.NOT_SUBMITTED
    url: str | None = None
    health: str | None = None
    reason: str | None = None
    time_left: str | None = None  # a proxy job's, as squeue says it
    ends_in_s: float | None = None
    ending_soon: bool = False  # within the profile's renew_margin: `up --renew` does not move the proxy
    backends: dict[str, bool] | None = None  # registry key -> routed to, as the proxy's /health says


@dataclass
class FleetStatus:
    fleet: str
    backend: str
    fleet_dir: str
    submitted: bool
    servers: list[ServerStatus]
    proxy: ProxyStatus
    extra_endpoints: list[dict[str, Any]] = field(default_factory=list)  # registered by hand
    elastic: list[ElasticSummary] = field(default_factory=list)  # per elastic server
    notes: list[str] = field(default_factory=list)  # what could not be read

    @property
    def ready(self) -> int:
        return sum(s.state == ServerState.READY for s in self.servers)

    @property
    def fixed(self) -> list[ServerStatus]:
        """The servers up submits and waits for (not the replicas of elastic servers)."""
        return [s for s in self.servers if not s.elastic]

    @property
    def all_ready(self) -> bool:
        return bool(self.servers) and all(s.state == ServerState.READY for s in self.servers)

    def to_json_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for s, raw in zip(self.servers, d["servers"], strict=True):
            raw["uptime_s"] = round(s.uptime_s, 1) if s.uptime_s is not None else None
        d["ready"] = self.ready
        d["total"] = len(self.servers)
        return d


def _read_records(runner: Runner, directory: str) -> list[Any]:
    """The parsed records in a directory the jobs write (bounded: see MAX_RECORD_BYTES/MAX_RECORDS)."""
    recs = []
    for text in runner.read_small_files(directory, ".json", MAX_RECORD_BYTES, MAX_RECORDS):
        try:
            recs.append(json.loads(text))
        except ValueError:
            continue
    return recs


def read_registry(runner: Runner, paths: FleetPaths, problems: list[str] | None = None) -> list[Endpoint]:
    """Every well-formed record in the registry dir (bounded like the proxy's reading); ``problems`` gets a
    line per file skipped or record refused, as the proxy logs them."""
    texts = runner.read_small_files(paths.registry, ".json", MAX_RECORD_BYTES, MAX_RECORDS, problems)
    return parse_records(texts, problems)[0]


def read_supervision(runner: Runner, paths: FleetPaths) -> dict[tuple[str, str], Supervision]:
    """(server, job key) -> what its job's watcher last said of it."""
    out = {}
    for raw in _read_records(runner, paths.servers):
        try:
            sup = Supervision.model_validate(raw)
        except ValueError:
            continue
        out[(sup.server, sup.job_id)] = sup
    return out


def _restart_requests(runner: Runner, paths: FleetPaths) -> set[str]:
    try:
        return {n for n in runner.listdir(paths.control) if n.endswith(".restart")}
    except Exception:
        return set()


TAIL_BYTES = 64 * 1024  # the end of a server log that status shows lines from


def _tail(runner: Runner, path: str, n: int = 8) -> list[str]:
    try:
        lines, _ = last_lines(runner, path, n, most=TAIL_BYTES)
    except Exception:
        return []
    return "".join(lines).rstrip("\n").splitlines()[-n:]


def collect_status(fleet: Fleet, *, probe: bool = True, state: FleetState | None = None) -> FleetStatus:
    p = fleet.profile
    margin = fleet.scheduler.dialect.parse_time_limit(p.renew_margin) or 0.0
    state = state if state is not None else load_state(fleet.runner, fleet.paths)
    insts = p.instances()
    elastic_jobs = p.elastic_jobs()
    servers = [ServerStatus(i.name, i.served_name, i.spec.model, i.spec.engine,
                            node_label(p.job(i.job), i.task), i.job, i.task) for i in insts
               if i.job not in elastic_jobs]
    proxy = ProxyStatus()
    if state is None:
        return FleetStatus(p.name, fleet.backend, fleet.paths.root, False, servers, proxy)

    journal, note = read_journal(fleet) if elastic_jobs else (None, None)
    ids = state.job_ids() + (journal.job_ids() if journal is not None else [])
    infos = fleet.scheduler.states(ids) if ids else {}
    problems: list[str] = []
    records = read_registry(fleet.runner, fleet.paths, problems)
    by_key = {(r.server, r.job_id): r for r in records}
    supervision = read_supervision(fleet.runner, fleet.paths)
    asked = _restart_requests(fleet.runner, fleet.paths)

    def fill(st: ServerStatus, job_id: str) -> None:
        st.job_id = job_id
        _fill_row(fleet, st, infos.get(job_id), by_key.get((st.name, job_id)), margin,
                  supervision.get((st.name, job_id)),
                  posixpath.basename(fleet.paths.restart_request(st.name, job_id)) in asked)

    for st in servers:
        rec = state.latest(st.job, st.task)
        if rec is not None:
            fill(st, rec.task_job_id(st.task))

    # Elastic servers: one row per replica the controller's journal names (none at zero replicas).
    draining: list[ServerStatus] = []
    if journal is not None:
        by_server = {i.server: i for i in insts if i.job in elastic_jobs}
        for rec_e in journal.live():
            inst = by_server.get(rec_e.server)
            if inst is None:
                continue
            st = ServerStatus(inst.name, inst.served_name, inst.spec.model, inst.spec.engine, inst.job, inst.job, 0,
                              elastic=True)
            servers.append(st)
            if rec_e.job_id is None:
                st.reason = "being submitted"
                continue
            fill(st, rec_e.job_id)
            if rec_e.state in ("draining", "cancelled"):
                draining.append(st)

    manual = [r for r in records if r.manual]
    # proxy
    if state.proxy is not None:
        proxy.run, proxy.job_id = state.proxy.run, state.proxy.job_id
        proxy.url = state.proxy.url
        if state.proxy.run == "slurm" and state.proxy.job_id:
            info = infos.get(state.proxy.job_id)
            if info is None or info.state.is_done:
                ended_ok = (JobState.COMPLETED, JobState.CANCELLED, JobState.COMPLETING)
                proxy.state = ServerState.STOPPED if info is None or info.state in ended_ok else ServerState.FAILED
                proxy.reason = info.state.value if info else "left the queue"
            elif info.state == JobState.PENDING:
                proxy.state, proxy.reason = ServerState.PENDING, info.reason
            else:
                proxy.state = ServerState.STARTING
                proxy.time_left = info.time_left
                proxy.ends_in_s = info.time_left_s
                proxy.ending_soon = proxy.ends_in_s is not None and proxy.ends_in_s < margin
            if proxy.url is None and fleet.runner.exists(fleet.paths.proxy_record):
                try:
                    record = fleet.runner.read_text(fleet.paths.proxy_record, MAX_RECORD_BYTES)
                    doc = json.loads(record)
                    url = doc.get("url") if isinstance(doc, dict) else None
                    proxy.url = check_endpoint_url(url) if isinstance(url, str) else None
                except (ValueError, OSError):
                    pass
        elif state.proxy.run == "local":
            proxy.state = ServerState.STARTING if pid_alive(state.proxy.pid) else ServerState.STOPPED

    if probe:
        _probe_into(fleet, servers, proxy)
    for st in draining:
        if st.state in (ServerState.READY, ServerState.STARTING, ServerState.RUNNING):
            st.state, st.reason = ServerState.DRAINING, "no new requests; cancelled once in-flight ones finish"
    out = FleetStatus(p.name, fleet.backend, fleet.paths.root, True, servers, proxy,
                      [r.model_dump(exclude_none=True) for r in manual])
    if elastic_jobs:
        out.elastic = elastic_summaries(p, journal, servers)
        out.notes += [note] if note else []
    if problems:
        out.notes.append(f"registry {fleet.paths.registry}: {len(problems)} record(s) ignored: "
                         f"{problems_line(problems)}")
    return out


def _fill_row(fleet: Fleet, st: ServerStatus, info: JobInfo | None, endpoint: Endpoint | None, margin: float,
              sup: Supervision | None, restart_asked: bool) -> None:
    """One server's row from its job's scheduler state, its registry record and its supervision record."""
    job_id = st.job_id or ""
    if info is None:
        # Without accounting a scheduler forgets a finished job within seconds; the log says why it ended.
        st.state, st.reason = ServerState.GONE, "left the queue (no accounting record)"
        st.log_tail = _tail(fleet.runner, fleet.paths.server_log(st.name, job_id))
    elif info.state in (JobState.PENDING, JobState.REQUEUED, JobState.SUSPENDED):
        st.state, st.reason = ServerState.PENDING, info.reason
    elif info.state.is_done:
        # COMPLETING: SLURM is tearing the job down and squeue does not say yet whether it failed (a job that
        # refused a short GPU grant is COMPLETING for a moment, then FAILED): STOPPED, with the log, until it says
        st.completing = info.state is JobState.COMPLETING
        ok_end = info.state in (JobState.COMPLETED, JobState.CANCELLED, JobState.COMPLETING)
        st.state = ServerState.STOPPED if ok_end else ServerState.FAILED
        st.reason = info.state.value + (f" exit {info.exit_code}" if info.exit_code else "")
        if not ok_end or st.completing:
            st.log_tail = _tail(fleet.runner, fleet.paths.server_log(st.name, job_id))
    else:
        st.state = ServerState.RUNNING if endpoint is None else ServerState.STARTING
        st.reason = "starting, not registered yet" if endpoint is None else "registered, not healthy yet"
    if info is not None:
        st.node = info.nodes
        st.time_left = info.time_left
        if info.state == JobState.RUNNING:
            st.ends_in_s = info.time_left_s
            st.ending_soon = st.ends_in_s is not None and st.ends_in_s < margin
    if endpoint is not None and (info is None or not info.state.is_done):
        st.url = endpoint.url
        st.started_at = endpoint.started_at
    st.task_running = info is not None and info.state == JobState.RUNNING
    _apply_supervision(fleet, st, sup, restart_asked)


def _apply_supervision(fleet: Fleet, st: ServerStatus, sup: Supervision | None, restart_asked: bool) -> None:
    """What the task's own watcher says of the server: restarts, last exit, and whether it is
    down between restarts or failed for good while its neighbours in the task keep running."""
    if sup is None:
        return
    st.restarts, st.last_exit, st.devices = sup.restarts, sup.last_exit, sup.devices
    if st.task_running:
        if sup.state == "failed" and restart_asked:
            st.state, st.reason, st.url = ServerState.RESTARTING, "restart asked for by up", None
        elif sup.state == "failed":
            st.state, st.reason, st.url = ServerState.FAILED, sup.reason, None
            st.log_tail = _tail(fleet.runner, fleet.paths.server_log(st.name, st.job_id or ""))
        elif sup.state == "restarting":
            st.state, st.reason, st.url = ServerState.RESTARTING, sup.reason, None
    elif sup.state == "failed" and st.state in (ServerState.FAILED, ServerState.GONE):
        st.reason = sup.reason  # e.g. the allocation had fewer GPUs than the plan


def _probe_into(fleet: Fleet, servers: list[ServerStatus], proxy: ProxyStatus) -> None:
    from biofleet.fleet.probe import probe_all_any

    key = read_secret(fleet, fleet.paths.backend_key)
    urls = [s.url for s in servers if s.url]
    results = probe_all_any(urls, api_key=key, transport=fleet.runner.http_transport()) if urls else {}
    for s in servers:
        r = results.get(s.url) if s.url else None
        if r is None:
            continue
        s.running, s.waiting, s.kv_cache_usage = r.running, r.waiting, r.kv_cache_usage
        if r.healthy and s.served_name in r.models:
            s.state, s.health, s.reason = ServerState.READY, "ok", None
        elif r.healthy:
            s.health = f"serves {r.models}, not {s.served_name!r}"
        else:
            s.health = r.error or "unhealthy"
    if proxy.url and proxy.state not in (ServerState.STOPPED, ServerState.FAILED):
        token = read_secret(fleet, fleet.paths.token)
        pr = probe_all_any([proxy.url], api_key=token, transport=fleet.runner.http_transport(), metrics=False)
        r = pr.get(proxy.url)
        if r is not None and r.status is not None:
            proxy.state = ServerState.READY
            backends = (r.health_json or {}).get("backends")
            proxy.backends = backends if isinstance(backends, dict) else None
            proxy.health = "ok" if r.status == 200 else f"/health {r.status} (some model has no healthy replica)"
        elif r is not None:
            proxy.health = r.error


def read_secret(fleet: Fleet, path: str) -> str | None:
    try:
        return fleet.runner.read_text(path, MAX_SECRET_BYTES).strip() or None
    except Exception:
        return None
