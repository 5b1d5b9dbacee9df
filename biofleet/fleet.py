"""Fleet lifecycle: up, status, down, logs, register — over any runner and scheduler.

``up`` renders the profile's jobs, submits them, records the job ids in the fleet
directory, starts the proxy and (optionally) waits until every server answers.
``status`` joins three sources: the scheduler (one batched query), the registry
the jobs write, and concurrent HTTP probes. ``down`` cancels exactly the job ids
``up`` recorded — never by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from biofleet.errors import FleetError
from biofleet.fleetdir import FleetPaths, FleetState, JobRecord, ProxyRecord, Supervision, new_secret
from biofleet.plan import node_label
from biofleet.procs import free_port, pid_alive, pid_cmdline
from biofleet.profile import Instance, Profile
from biofleet.registry import Endpoint, record_filename

# Server states shown by status, in the order a server goes through them.
NOT_SUBMITTED, PENDING, RUNNING, STARTING, READY = "NOT_SUBMITTED", "PENDING", "RUNNING", "STARTING", "READY"
RESTARTING = "RESTARTING"  # exited; its job restarts it in place after a back-off
FAILED, STOPPED, GONE = "FAILED", "STOPPED", "GONE"
SETTLED = {READY, FAILED, STOPPED, GONE}  # up stops waiting for a server in one of these
NEEDS_RESUBMIT = {NOT_SUBMITTED, FAILED, STOPPED, GONE}
MAX_RECORD_BYTES = 64 * 1024  # a registry or supervision record larger than this is skipped


# ---------------------------------------------------------------------------- context


@dataclass
class Fleet:
    """A profile bound to where it runs: runner (local/SSH), scheduler (SLURM/local), fleet dir."""

    profile: Profile
    runner: Any
    scheduler: Any
    backend: str  # "slurm" | "local"
    paths: FleetPaths

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_ssh_target(target: str) -> dict[str, Any]:
    """``user@host[:port]`` -> SSHSettings fields."""
    user, _, hostport = target.rpartition("@")
    host, _, port = hostport.partition(":")
    out: dict[str, Any] = {"host": host}
    if user:
        out["user"] = user
    if port:
        out["port"] = int(port)
    return out


def open_fleet(
    profile: Profile,
    *,
    backend: str = "auto",
    ssh: str | None = None,
    trust_new_host: bool = False,
) -> Fleet:
    """Connect to where the fleet runs and decide the scheduler.

    ``backend``: ``slurm``, ``local`` or ``auto`` (an existing fleet keeps the backend
    it was started with; a new one uses SLURM when ``sbatch`` is there, else local).
    """
    from biofleet.slurm.runner import LocalRunner, SSHRunner

    ssh_settings = None
    if ssh:
        from biofleet.profile import SSHSettings

        ssh_settings = SSHSettings(**parse_ssh_target(ssh))
    elif profile.cluster.ssh is not None:
        ssh_settings = profile.cluster.ssh
    if ssh_settings is not None:
        runner = SSHRunner(
            ssh_settings.host, user=ssh_settings.user, port=ssh_settings.port,
            key_file=_expand_local(ssh_settings.key_file), known_hosts=_expand_local(ssh_settings.known_hosts),
            allow_unknown_host=trust_new_host or ssh_settings.trust_new_host,
        )
    else:
        runner = LocalRunner()
    try:
        paths = FleetPaths(_cluster_path(runner, profile.cluster.workdir).rstrip("/") + "/" + profile.name)
        state = load_state(runner, paths)
        chosen = backend
        if chosen == "auto":
            if state is not None:
                chosen = state.backend
            else:
                chosen = "slurm" if runner.which("sbatch") else "local"
        if chosen == "local":
            if ssh_settings is not None:
                raise FleetError("the local backend runs jobs on this machine; it cannot be combined with SSH")
            from biofleet.slurm.local import LocalScheduler

            scheduler: Any = LocalScheduler(paths.root + "/local-jobs")
        elif chosen == "slurm":
            from biofleet.slurm.scheduler import Slurm

            env = {"SLURM_CONF": profile.cluster.slurm_conf} if profile.cluster.slurm_conf else None
            scheduler = Slurm(runner, env=env)
        else:
            raise FleetError(f"unknown backend {backend!r}; use slurm, local or auto")
    except BaseException:
        runner.close()
        raise
    return Fleet(profile, runner, scheduler, chosen, paths)


def _expand_local(path: str | None) -> str | None:
    return os.path.expandvars(os.path.expanduser(path)) if path else None


def _cluster_path(runner, path: str) -> str:
    """Expand ~, $HOME and $USER the way the cluster side sees them."""
    from biofleet.slurm.runner import LocalRunner

    if isinstance(runner, LocalRunner):
        return os.path.abspath(os.path.expandvars(os.path.expanduser(path)))
    out = runner.run(["sh", "-c", 'printf "%s\\n%s\\n" "$HOME" "$(id -un)"']).stdout.splitlines()
    home, user = out[0], out[1]
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    for var, val in (("${HOME}", home), ("$HOME", home), ("${USER}", user), ("$USER", user)):
        path = path.replace(var, val)
    return path


# ---------------------------------------------------------------------------- state


def load_state(runner, paths: FleetPaths) -> FleetState | None:
    if not runner.exists(paths.state):
        return None
    try:
        return FleetState.model_validate(json.loads(runner.read_text(paths.state)))
    except ValueError as exc:
        raise FleetError(
            f"fleet state {paths.state} is unreadable ({exc}); move it aside to start this fleet afresh"
        ) from None


def save_state(runner, paths: FleetPaths, state: FleetState) -> None:
    runner.write_text(paths.state, state.dumps())


# ---------------------------------------------------------------------------- status


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
    state: str = NOT_SUBMITTED
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
    log_tail: list[str] = field(default_factory=list)

    @property
    def uptime_s(self) -> float | None:
        return time.time() - self.started_at if self.started_at else None


@dataclass
class ProxyStatus:
    run: str | None = None
    job_id: str | None = None
    state: str = NOT_SUBMITTED
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

    @property
    def ready(self) -> int:
        return sum(s.state == READY for s in self.servers)

    @property
    def all_ready(self) -> bool:
        return bool(self.servers) and all(s.state == READY for s in self.servers)

    def to_json_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for s, raw in zip(self.servers, d["servers"]):
            raw["uptime_s"] = round(s.uptime_s, 1) if s.uptime_s is not None else None
        d["ready"] = self.ready
        d["total"] = len(self.servers)
        return d


def read_json_dir(runner, directory: str) -> list[Any]:
    """The parsed ``*.json`` files of a directory (records written by jobs), in one round trip
    on remote runners. Temp files, non-regular files, unparsable and oversized ones are skipped."""
    from biofleet.slurm.runner import LocalRunner

    texts: list[str] = []
    if isinstance(runner, LocalRunner):
        from pathlib import Path

        d = Path(directory)
        if not d.is_dir():
            return []
        for path in sorted(d.glob("*.json")):
            try:
                if path.name.startswith(".") or not path.is_file() or path.stat().st_size > MAX_RECORD_BYTES:
                    continue
                texts.append(path.read_text())
            except OSError:
                continue
    else:
        # One record per line: the writers emit compact JSON without newlines.
        script = ('for f in "$1"/*.json; do [ -f "$f" ] && [ "$(wc -c <"$f")" -le "$2" ] && cat "$f" '
                  '&& printf "\\n"; done; true')
        out = runner.run(["sh", "-c", script, "sh", directory, str(MAX_RECORD_BYTES)], check=False).stdout
        texts = out.splitlines()
    recs = []
    for text in texts:
        if text.strip():
            try:
                recs.append(json.loads(text))
            except ValueError:
                continue
    return recs


def read_registry(runner, paths: FleetPaths) -> list[Endpoint]:
    """Every well-formed record in the registry dir."""
    out = []
    for raw in read_json_dir(runner, paths.registry):
        try:
            out.append(Endpoint.model_validate(raw))
        except ValueError:
            continue
    return out


def read_supervision(runner, paths: FleetPaths) -> dict[tuple[str, str], Supervision]:
    """(server, job key) -> what its job's watcher last said of it."""
    out = {}
    for raw in read_json_dir(runner, paths.servers):
        try:
            sup = Supervision.model_validate(raw)
        except ValueError:
            continue
        out[(sup.server, sup.job_id)] = sup
    return out


def _restart_requests(runner, paths: FleetPaths) -> set[str]:
    try:
        return {n for n in runner.listdir(paths.control) if n.endswith(".restart")}
    except Exception:  # noqa: BLE001 - no control dir yet
        return set()


def _tail(runner, path: str, n: int = 8) -> list[str]:
    try:
        text = runner.read_text(path)
    except (OSError, Exception):  # noqa: BLE001 - a missing log must not break status
        return []
    return text.rstrip("\n").splitlines()[-n:]


def collect_status(fleet: Fleet, *, probe: bool = True, state: FleetState | None = None) -> FleetStatus:
    from biofleet.slurm.scheduler import parse_duration
    from biofleet.slurm.states import JobState

    p = fleet.profile
    margin = parse_duration(p.renew_margin) or 0.0
    state = state if state is not None else load_state(fleet.runner, fleet.paths)
    insts = p.instances()
    servers = [ServerStatus(i.name, i.served_name, i.spec.model, i.spec.engine,
                            node_label(p.job(i.job), i.task), i.job, i.task) for i in insts]
    proxy = ProxyStatus()
    if state is None:
        return FleetStatus(p.name, fleet.backend, fleet.paths.root, False, servers, proxy)

    ids = state.job_ids()
    infos = fleet.scheduler.states(ids) if ids else {}
    records = read_registry(fleet.runner, fleet.paths)
    by_key = {(r.server, r.job_id): r for r in records}
    supervision = read_supervision(fleet.runner, fleet.paths)
    asked = _restart_requests(fleet.runner, fleet.paths)

    for st, inst in zip(servers, insts):
        rec = state.latest(inst.job, inst.task)
        if rec is None:
            continue
        st.job_id = rec.task_job_id(inst.task)
        info = infos.get(st.job_id)
        endpoint = by_key.get((inst.name, st.job_id))
        if info is None:
            # Without accounting SLURM forgets a finished job within seconds; the log says why it ended.
            st.state, st.reason = GONE, "left the queue (no accounting record)"
            st.log_tail = _tail(fleet.runner, fleet.paths.server_log(inst.name, st.job_id))
        elif info.state in (JobState.PENDING, JobState.REQUEUED, JobState.SUSPENDED):
            st.state, st.reason = PENDING, info.reason
        elif info.state.is_done:
            ok_end = info.state in (JobState.COMPLETED, JobState.CANCELLED, JobState.COMPLETING)
            st.state = STOPPED if ok_end else FAILED
            st.reason = info.state.value + (f" exit {info.exit_code}" if info.exit_code else "")
            if not ok_end:
                st.log_tail = _tail(fleet.runner, fleet.paths.server_log(inst.name, st.job_id))
        else:
            st.state = RUNNING if endpoint is None else STARTING
            st.reason = "starting, not registered yet" if endpoint is None else "registered, not healthy yet"
        if info is not None:
            st.node = info.nodes
            st.time_left = info.time_left
            if info.state == JobState.RUNNING:
                st.ends_in_s = parse_duration(info.time_left)
                st.ending_soon = st.ends_in_s is not None and st.ends_in_s < margin
        if endpoint is not None and (info is None or not info.state.is_done):
            st.url = endpoint.url
            st.started_at = endpoint.started_at
        st.task_running = info is not None and info.state == JobState.RUNNING
        _apply_supervision(fleet, st, supervision.get((inst.name, st.job_id)),
                           os.path.basename(fleet.paths.restart_request(inst.name, st.job_id)) in asked)

    manual = [r for r in records if r.manual]
    # proxy
    if state.proxy is not None:
        proxy.run, proxy.job_id = state.proxy.run, state.proxy.job_id
        proxy.url = state.proxy.url
        if state.proxy.run == "slurm" and state.proxy.job_id:
            info = infos.get(state.proxy.job_id)
            if info is None or info.state.is_done:
                ended_ok = (JobState.COMPLETED, JobState.CANCELLED, JobState.COMPLETING)
                proxy.state = STOPPED if info is None or info.state in ended_ok else FAILED
                proxy.reason = info.state.value if info else "left the queue"
            elif info.state == JobState.PENDING:
                proxy.state, proxy.reason = PENDING, info.reason
            else:
                proxy.state = STARTING
                proxy.time_left = info.time_left
                proxy.ends_in_s = parse_duration(info.time_left)
                proxy.ending_soon = proxy.ends_in_s is not None and proxy.ends_in_s < margin
            if proxy.url is None and fleet.runner.exists(fleet.paths.proxy_record):
                try:
                    proxy.url = json.loads(fleet.runner.read_text(fleet.paths.proxy_record)).get("url")
                except ValueError:
                    pass
        elif state.proxy.run == "local":
            proxy.state = STARTING if pid_alive(state.proxy.pid) else STOPPED

    if probe:
        _probe_into(fleet, servers, proxy)
    return FleetStatus(p.name, fleet.backend, fleet.paths.root, True, servers, proxy,
                       [r.model_dump(exclude_none=True) for r in manual])


def _apply_supervision(fleet: Fleet, st: ServerStatus, sup: Supervision | None, restart_asked: bool) -> None:
    """What the task's own watcher says of the server: restarts, last exit, and whether it is
    down between restarts or failed for good while its neighbours in the task keep running."""
    if sup is None:
        return
    st.restarts, st.last_exit, st.devices = sup.restarts, sup.last_exit, sup.devices
    if st.task_running:
        if sup.state == "failed" and restart_asked:
            st.state, st.reason, st.url = RESTARTING, "restart asked for by up", None
        elif sup.state == "failed":
            st.state, st.reason, st.url = FAILED, sup.reason, None
            st.log_tail = _tail(fleet.runner, fleet.paths.server_log(st.name, st.job_id or ""))
        elif sup.state == "restarting":
            st.state, st.reason, st.url = RESTARTING, sup.reason, None
    elif sup.state == "failed" and st.state in (FAILED, GONE):
        st.reason = sup.reason  # e.g. the allocation had fewer GPUs than the plan


def _probe_into(fleet: Fleet, servers: list[ServerStatus], proxy: ProxyStatus) -> None:
    from biofleet.probe import probe_all_any

    key = _read_secret(fleet, fleet.paths.backend_key)
    urls = [s.url for s in servers if s.url]
    results = probe_all_any(urls, api_key=key, transport=fleet.runner.http_transport()) if urls else {}
    for s in servers:
        r = results.get(s.url) if s.url else None
        if r is None:
            continue
        s.running, s.waiting, s.kv_cache_usage = r.running, r.waiting, r.kv_cache_usage
        if r.healthy and s.served_name in r.models:
            s.state, s.health, s.reason = READY, "ok", None
        elif r.healthy:
            s.health = f"serves {r.models}, not {s.served_name!r}"
        else:
            s.health = r.error or "unhealthy"
    if proxy.url and proxy.state not in (STOPPED, FAILED):
        token = _read_secret(fleet, fleet.paths.token)
        pr = probe_all_any([proxy.url], api_key=token, transport=fleet.runner.http_transport(), metrics=False)
        r = pr.get(proxy.url)
        if r is not None and r.status is not None:
            proxy.state = READY
            backends = (r.health_json or {}).get("backends")
            proxy.backends = backends if isinstance(backends, dict) else None
            proxy.health = "ok" if r.status == 200 else f"/health {r.status} (some model has no healthy replica)"
        elif r is not None:
            proxy.health = r.error


def _read_secret(fleet: Fleet, path: str) -> str | None:
    try:
        return fleet.runner.read_text(path).strip() or None
    except Exception:  # noqa: BLE001 - no secret yet
        return None


# ---------------------------------------------------------------------------- up


@dataclass
class UpResult:
    state: FleetState
    submitted: list[JobRecord]
    kept: list[str]  # servers left alone because they are healthy or on their way
    status: FleetStatus | None
    timed_out: bool = False


Event = Callable[[str], None]


def prepare_fleet_dir(fleet: Fleet) -> None:
    r, p = fleet.runner, fleet.paths
    for d in (p.root, p.scripts, p.logs, p.registry, p.servers, p.control):
        r.mkdir(d)
    r.mkdir(p.secrets, mode=0o700)
    for path in (p.token, p.backend_key):
        if not r.exists(path):
            r.write_text(path, new_secret() + "\n", mode=0o600)


PROXY_ENDING = (
    "the proxy job {job} ends in {mins} min and --renew does not move it: after it ends, biofleet up "
    "starts a new one, whose address may differ. For a fleet that outlives the time limit, give "
    "proxy.time a longer limit on a partition that allows it, or run the proxy where there is none "
    "(proxy.run: local)"
)


def up(
    fleet: Fleet,
    *,
    profile_ref: str,
    wait: bool = True,
    timeout: float = 1800,
    proxy_mode: str | None = None,
    on_event: Event = lambda msg: None,
    on_status: Callable[[FleetStatus], None] | None = None,
    poll: float = 2.0,
    renew: bool = False,
) -> UpResult:
    from biofleet.render import render_job, render_proxy_job

    p, r, paths = fleet.profile, fleet.runner, fleet.paths
    mode = proxy_mode or p.proxy.run
    if mode not in ("slurm", "local", "none"):
        raise FleetError(f"--proxy must be slurm, local or none, not {mode!r}")
    if renew and not p.renew:
        raise FleetError(f"profile {p.name} does not allow renewal; set renew: true (and renew_margin) in it")
    if renew and not wait:
        raise FleetError("--renew drains the old tasks once their replacements are READY, so it needs --wait")
    if mode == "local" and not fleet.runner.is_local:
        raise FleetError("--proxy local runs the proxy on this machine, but this fleet runs on "
                         f"{fleet.runner.where}; nothing was submitted. Use --proxy slurm (a job on the "
                         "cluster; proxy.run: slurm in the profile), or run biofleet on the login node")
    prepare_fleet_dir(fleet)
    state = load_state(r, paths)
    kept: list[str] = []
    renewing: dict[tuple[str, int], str] = {}  # (job, task) -> the task job id it replaces
    if state is None:
        state = FleetState(fleet=p.name, profile=profile_ref, backend=fleet.backend, fleet_dir=paths.root)
        todo = {(i.job, i.task) for i in p.instances()}
    else:
        if state.backend != fleet.backend:
            raise FleetError(
                f"fleet {p.name} was started with the {state.backend} backend; run biofleet down first "
                f"to switch to {fleet.backend}"
            )
        current = collect_status(fleet, state=state)
        # A server that failed in a task whose other servers still run is restarted in place by that
        # task (cancelling the task would stop its living neighbours); a task is resubmitted whole
        # when it is gone, or when every server in it has failed.
        tasks: dict[tuple[str, int], list[ServerStatus]] = {}
        for s in current.servers:
            tasks.setdefault((s.job, s.task), []).append(s)
        in_place = [s for s in current.servers if s.state == FAILED and s.task_running
                    and not all(o.state == FAILED for o in tasks[(s.job, s.task)])]
        todo = {(s.job, s.task) for s in current.servers if s.state in NEEDS_RESUBMIT and s not in in_place}
        for s in in_place:
            r.write_text(paths.restart_request(s.name, s.job_id or ""), f"{time.time()}\n")
            on_event(f"{s.name} failed in running task {s.job_id} ({s.reason}); asked the task to restart it "
                     "in place (its neighbours keep serving)")
        kept = [s.name for s in current.servers if (s.job, s.task) not in todo]
        if renew:
            for s in current.servers:
                key = (s.job, s.task)
                if s.state == READY and s.ending_soon and key not in todo and s.job_id:
                    renewing[key] = s.job_id
            if renewing:
                todo |= set(renewing)
                on_event("renewing (time limit near): " + ", ".join(
                    f"{s.name} ends in {int((s.ends_in_s or 0) // 60)} min" for s in current.servers
                    if (s.job, s.task) in renewing))
            if current.proxy.ending_soon:
                on_event(PROXY_ENDING.format(job=current.proxy.job_id, mins=int((current.proxy.ends_in_s or 0) // 60)))
        if kept:
            on_event(f"keeping {len(kept)} server(s) that are running or on their way: {', '.join(kept)}")
    state.profile = profile_ref
    # Everything that can fail is done before the first sbatch: render every script, write the
    # routing table. A refusal after a submission would leave jobs running that nobody asked for.
    scripts = {job.name: render_job(p, job, paths.root) for job in p.jobs
               if any(j == job.name for (j, _) in todo)}
    proxy_script = render_proxy_job(p, paths.root) if mode == "slurm" else None
    _write_routing(fleet)
    submitted: list[JobRecord] = []
    for job in p.jobs:
        tasks = sorted(t for (j, t) in todo if j == job.name)
        if not tasks:
            continue
        script = paths.script(job.name)
        r.write_text(script, scripts[job.name], mode=0o755)
        extra: list[str] = []
        if job.is_array and len(tasks) < len(job.nodes):
            extra.append("--array=" + ",".join(map(str, tasks)))
        job_id = fleet.scheduler.submit(script, extra_args=extra)
        rec = JobRecord(job=job.name, job_id=job_id, tasks=tasks, array=job.is_array,
                        replaces=[renewing[(job.name, t)] for t in tasks if (job.name, t) in renewing])
        state.jobs.append(rec)
        submitted.append(rec)
        save_state(r, paths, state)  # after every submission: a crash must not lose a job id
        what = f"tasks {','.join(map(str, tasks))}" if job.is_array else "1 node"
        on_event(f"submitted job {job.name} ({what}) as {job_id}")
    _ensure_proxy(fleet, state, mode, on_event, proxy_script)
    save_state(r, paths, state)

    if not wait:
        return UpResult(state, submitted, kept, None)
    status = None
    deadline = time.monotonic() + timeout
    last: dict[str, str] = {}
    announced: set[str] = set()
    while True:
        status = collect_status(fleet, state=state)
        for s in status.servers:
            desc = s.state + (f" ({s.reason})" if s.reason and s.state != READY else "")
            if last.get(s.name) != desc:
                last[s.name] = desc
                on_event(f"{s.node_label} {s.name}: {desc}")
                for line in s.log_tail if s.state == FAILED else ():
                    on_event(f"    | {line}")
        if on_status is not None:
            on_status(status)
        if status.proxy.url and state.proxy is not None and state.proxy.url != status.proxy.url:
            state.proxy.url = status.proxy.url  # the proxy job has written where it listens
            save_state(r, paths, state)
        _drain_renewed(fleet, state, status, on_event, announced)
        draining = any(rec.replaces for rec in state.jobs)  # old tasks wait for the proxy to route to the new
        unrouted = _unrouted(status)
        if unrouted and unrouted != last.get("#proxy"):
            last["#proxy"] = unrouted
            on_event(f"proxy: not routing to {unrouted} yet")
        if (all(s.state in SETTLED for s in status.servers) and not draining and not unrouted
                and status.proxy.state in (READY, FAILED, STOPPED, NOT_SUBMITTED)):
            return UpResult(state, submitted, kept, status)
        if time.monotonic() >= deadline:
            return UpResult(state, submitted, kept, status, timed_out=True)
        time.sleep(poll)


def _unrouted(status: FleetStatus) -> str:
    """READY servers a running proxy does not route to yet (it finds and probes them on its own
    clock): ``up`` returns only once the endpoint it prints answers for every READY server."""
    routed = status.proxy.backends
    if status.proxy.state != READY or routed is None:
        return ""
    return ", ".join(s.name for s in status.servers
                     if s.state == READY and not routed.get(f"{s.name}@{s.job_id}", False))


def _drain_renewed(fleet: Fleet, state: FleetState, status: FleetStatus, on_event: Event,
                   announced: set[str] | None = None) -> None:
    """Cancel the tasks a renewal replaces, once every server of the replacement is READY and,
    when a proxy is up, routed to by it (it admits a server on its own probe, a moment after ours).

    Until then both answer: the proxy routes to old and new records alike, so there is no gap.
    A replacement that fails leaves the old tasks running to their time limit.
    """
    announced = set() if announced is None else announced
    routed = status.proxy.backends
    for rec in state.jobs:
        if not rec.replaces:
            continue
        mine = [s for s in status.servers if s.job == rec.job and s.task in rec.tasks
                and s.job_id == rec.task_job_id(s.task)]
        if not mine:
            continue
        if any(s.state in NEEDS_RESUBMIT for s in mine):
            on_event(f"replacement {rec.job_id} did not start ({', '.join(s.name + ': ' + s.state for s in mine)}); "
                     f"{' '.join(rec.replaces)} keep serving until their time limit")
            rec.replaces = []
            save_state(fleet.runner, fleet.paths, state)
            continue
        if not all(s.state == READY for s in mine):
            continue
        unrouted = [s.name for s in mine if routed is not None and not routed.get(f"{s.name}@{s.job_id}", False)]
        if unrouted:
            if rec.job_id not in announced:
                announced.add(rec.job_id)
                on_event(f"replacement {rec.job_id} is READY; waiting for the proxy to route to "
                         f"{', '.join(unrouted)} before draining {' '.join(rec.replaces)}")
            continue
        fleet.scheduler.cancel(rec.replaces)
        on_event(f"replacement {rec.job_id} is READY; drained {' '.join(rec.replaces)}")
        rec.replaces = []
        save_state(fleet.runner, fleet.paths, state)


def _write_routing(fleet: Fleet) -> None:
    p = fleet.profile
    routing = p.routing.model_copy(update={"tasks": p.task_table()})
    fleet.runner.write_text(fleet.paths.routing, json.dumps(routing.model_dump(mode="json"), indent=2))


def _proxy_argv(fleet: Fleet, host: str, port: str) -> list[str]:
    paths = fleet.paths
    return [
        "-m", "biofleet.cli.main", "proxy", "--registry", paths.registry, "--routing", paths.routing,
        "--host", host, "--port", port, "--token-file", paths.token, "--backend-key-file", paths.backend_key,
    ]


def _ensure_proxy(fleet: Fleet, state: FleetState, mode: str, on_event: Event, script_text: str | None) -> None:
    p, paths = fleet.profile, fleet.paths
    if mode == "none":
        return
    if state.proxy is not None:
        alive = False
        if state.proxy.run == "local":
            alive = pid_alive(state.proxy.pid)
        elif state.proxy.job_id:
            info = fleet.scheduler.states([state.proxy.job_id]).get(state.proxy.job_id)
            alive = info is not None and not info.state.is_done
        if alive:
            return
    if mode == "local":
        host = p.proxy.host
        port = p.proxy.port or free_port(host)
        log = open(paths.logs + "/proxy.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, *_proxy_argv(fleet, host, str(port))], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True,
        )
        log.close()
        connect = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        url = f"http://{connect}:{port}"
        state.proxy = ProxyRecord(run="local", pid=proc.pid, host=host, url=url)
        fleet.runner.write_text(paths.proxy_record, json.dumps({"url": url, "pid": proc.pid}))
        on_event(f"proxy started locally (pid {proc.pid}) at {url}")
        return
    from biofleet.render import render_proxy_job

    script = paths.script("proxy")
    text = script_text if script_text is not None else render_proxy_job(p, paths.root)
    fleet.runner.write_text(script, text, mode=0o755)
    if fleet.runner.exists(paths.proxy_record):
        fleet.runner.remove(paths.proxy_record)
    job_id = fleet.scheduler.submit(script)
    state.proxy = ProxyRecord(run="slurm", job_id=job_id)
    on_event(f"proxy submitted as job {job_id} (partition {p.proxy.partition or p.cluster.partition})")


# ---------------------------------------------------------------------------- down


@dataclass
class DownResult:
    cancelled: list[str]
    removed_records: int
    purged: bool
    had_state: bool


def down(fleet: Fleet, *, purge: bool = False, timeout: float = 120, on_event: Event = lambda m: None) -> DownResult:
    r, paths = fleet.runner, fleet.paths
    state = load_state(r, paths)
    cancelled: list[str] = []
    if state is not None:
        ids = state.job_ids()
        if ids:
            fleet.scheduler.cancel(ids)
            cancelled = ids
            on_event(f"cancelled job(s) {' '.join(ids)}; waiting for them to leave the queue")
            try:
                fleet.scheduler.wait_gone(ids, timeout)
            except TimeoutError as exc:
                raise FleetError(f"{exc}; run biofleet down again, or scancel them by id") from None
        if state.proxy and state.proxy.run == "local" and pid_alive(state.proxy.pid):
            _stop_local_proxy(state.proxy.pid)
            on_event(f"stopped the local proxy (pid {state.proxy.pid})")
    removed = 0
    ours = set()
    if state is not None:
        for rec in state.jobs:
            ours.update(rec.task_job_id(t) for t in rec.tasks)
    for ep in read_registry(r, paths):
        if ep.job_id in ours or (purge and ep.manual):
            _remove_quiet(r, f"{paths.registry}/{record_filename(ep.server, ep.job_id)}")
            removed += 1
    if state is not None:
        r.remove(paths.state)
    if r.exists(paths.proxy_record):
        r.remove(paths.proxy_record)
    if purge and r.exists(paths.root):
        r.rmtree(paths.root)
        on_event(f"removed {paths.root}")
    return DownResult(cancelled, removed, purge, state is not None)


def _stop_local_proxy(pid: int | None) -> None:
    if not pid:
        return
    if "biofleet" not in pid_cmdline(pid):
        return  # the pid was reused by something else (or is gone): leave it alone
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _remove_quiet(runner, path: str) -> None:
    try:
        runner.remove(path)
    except Exception:  # noqa: BLE001 - already gone (the job removed it on exit)
        pass


# ---------------------------------------------------------------------------- logs, register, token


def find_instance(profile: Profile, name: str) -> Instance:
    insts = profile.instances()
    for i in insts:
        if i.name == name:
            return i
    matches = [i for i in insts if i.server == name or i.served_name == name]
    if len(matches) == 1:
        return matches[0]
    names = ", ".join(i.name for i in insts)
    if matches:
        raise FleetError(f"{name!r} has {len(matches)} replicas; name one: {', '.join(i.name for i in matches)}")
    raise FleetError(f"no server {name!r} in fleet {profile.name}; servers: {names}")


def log_paths(fleet: Fleet, name: str) -> tuple[str, str]:
    """(server log, SLURM output) of the latest submission running server ``name``."""
    inst = find_instance(fleet.profile, name)
    state = load_state(fleet.runner, fleet.paths)
    rec = state.latest(inst.job, inst.task) if state else None
    if rec is None:
        raise FleetError(f"{inst.name} has not been submitted; run biofleet up --profile {fleet.profile.name}")
    key = rec.task_job_id(inst.task)
    job = fleet.profile.job(inst.job)
    out = (f"{fleet.paths.logs}/{job.name}-{rec.job_id}_{inst.task}.out" if job.is_array
           else f"{fleet.paths.logs}/{job.name}-{rec.job_id}.out")
    return fleet.paths.server_log(inst.name, key), out


def register_endpoint(fleet: Fleet, name: str, url: str, served_names: Sequence[str], kind: str = "generate") -> Endpoint:
    ep = Endpoint(fleet=fleet.profile.name, server=name, url=url.rstrip("/"),
                  served_names=tuple(served_names) or (name,), kind=kind, engine="external", manual=True,
                  started_at=time.time())
    fleet.runner.mkdir(fleet.paths.registry)
    fleet.runner.write_text(f"{fleet.paths.registry}/{record_filename(name, None)}", ep.model_dump_json(exclude_none=True))
    return ep


def unregister_endpoint(fleet: Fleet, name: str) -> bool:
    path = f"{fleet.paths.registry}/{record_filename(name, None)}"
    if not fleet.runner.exists(path):
        return False
    fleet.runner.remove(path)
    return True


def read_token(fleet: Fleet) -> str:
    tok = _read_secret(fleet, fleet.paths.token)
    if tok is None:
        raise FleetError(f"no proxy token at {fleet.paths.token}; biofleet up creates it")
    return tok

