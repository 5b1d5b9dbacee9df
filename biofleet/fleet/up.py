"""``up``: check the plan, submit what is missing, start the proxy, wait until the endpoint works.

Running ``up`` again reconciles: servers that are running or on their way are kept, a failed
server whose task still runs is restarted in place by that task, and only what is missing or
ended is resubmitted. With ``renew`` a task near its time limit gets a replacement first; the old
one is drained once the replacement is READY and routed to.

Elastic servers (``replicas: {min, max}``) are not submitted here: ``up`` renders the script one
replica runs and writes the plan (:mod:`biofleet.fleet.elastic`); the controller in the proxy
submits ``min`` replicas when it starts and follows the load from there. ``up`` waits for those
``min`` replicas like for any server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from biofleet.errors import FleetError
from biofleet.fleet.context import Fleet
from biofleet.fleet.elastic import make_plan, write_plan
from biofleet.fleet.proxy_job import PROXY_ENDING, ensure_proxy
from biofleet.fleet.state import FleetState, JobRecord, load_state, new_secret, save_state
from biofleet.fleet.status import NEEDS_RESUBMIT, SETTLED, FleetStatus, ServerState, ServerStatus, collect_status
from biofleet.profile import Profile
from biofleet.registry import endpoint_key

Event = Callable[[str], None]
PROXY_MODES = ("slurm", "local", "none")
_PROXY_DONE = (ServerState.READY, ServerState.FAILED, ServerState.STOPPED, ServerState.NOT_SUBMITTED)


@dataclass
class UpResult:
    state: FleetState
    submitted: list[JobRecord]
    kept: list[str]  # servers left alone because they are healthy or on their way
    status: FleetStatus | None
    timed_out: bool = False
    fit_errors: list[str] = field(default_factory=list)  # submitted anyway (force)


class FitRefused(FleetError):
    """The fit-check finds that some server cannot start; nothing was submitted."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        lines = "\n".join(f"  {e}" for e in errors)
        super().__init__(f"fit-check refuses this plan; nothing was submitted:\n{lines}\n"
                         "run biofleet fit-check for the full report, or up --force to submit anyway")


def fit_errors(profile: Profile) -> list[str]:
    """The fit-check's errors for a profile, one line each: where, what, and the fix."""
    from biofleet.fitcheck import check
    from biofleet.plan import fit_inputs

    report = check(fit_inputs(profile))
    found = [(s.name, f) for s in report.servers for f in s.findings if f.severity == "error"]
    found += [(g.node, f) for g in report.gpus for f in g.findings if f.severity == "error"]
    return [f"{where}: {f.message} (fix: {f.fix})" for where, f in found]


def with_engine(profile: Profile, engine: str | None) -> Profile:
    """The profile with every server's engine replaced (``mock``: dry-run the plumbing of the plan)."""
    if engine is None:
        return profile
    if engine not in ("vllm", "mock"):
        raise FleetError(f"--engine must be vllm or mock, not {engine!r}")
    return profile.model_copy(update={"servers": {k: s.model_copy(update={"engine": engine})
                                                  for k, s in profile.servers.items()}})


def prepare_fleet_dir(fleet: Fleet) -> None:
    r, p = fleet.runner, fleet.paths
    for d in (p.root, p.scripts, p.logs, p.registry, p.servers, p.control):
        r.mkdir(d)
    # Forced even when they exist: a directory or file made readable to others (by hand, a restored
    # backup, a umask) would hand the token and the backend key to every user of the cluster.
    r.mkdir(p.secrets, mode=0o700)
    r.chmod(p.secrets, 0o700)
    for path in (p.token, p.backend_key):
        if r.exists(path):
            r.chmod(path, 0o600)
        else:
            r.write_text(path, new_secret() + "\n", mode=0o600)


@dataclass
class _Plan:
    """What this up will submit: (job, task) pairs, and what each renewal replaces."""

    todo: set[tuple[str, int]]
    kept: list[str] = field(default_factory=list)
    renewing: dict[tuple[str, int], str] = field(default_factory=dict)  # (job, task) -> task job id replaced


def up(
    fleet: Fleet,
    *,
    profile_ref: str,
    wait: bool = True,
    timeout: float = 1800,
    proxy_mode: str | None = None,
    engine: str | None = None,
    force: bool = False,
    on_event: Event = lambda msg: None,
    on_status: Callable[[FleetStatus], None] | None = None,
    poll: float = 2.0,
    renew: bool = False,
) -> UpResult:
    """Bring the fleet up (or reconcile it); see the module docstring.

    Every option is checked, the plan fit-checked (on the profile as written, also with
    ``engine="mock"``) and every script rendered before the first submission.
    """
    from biofleet.render import render_job, render_proxy_job

    p, r, paths = fleet.profile, fleet.runner, fleet.paths
    mode = _check_options(fleet, proxy_mode, renew=renew, wait=wait)
    errors = fit_errors(p)
    if errors and not force:
        raise FitRefused(errors)
    for e in errors:
        on_event(f"--force: submitting despite a fit-check error: {e}")
    running = with_engine(p, engine)

    prepare_fleet_dir(fleet)
    state = load_state(r, paths)
    if state is not None and state.backend != fleet.backend:
        raise FleetError(f"fleet {p.name} was started with the {state.backend} backend; run biofleet down first "
                         f"to switch to {fleet.backend}")
    elastic_jobs = p.elastic_jobs()
    if state is None:
        state = FleetState(fleet=p.name, profile=profile_ref, backend=fleet.backend, fleet_dir=paths.root)
        plan = _Plan(todo={(i.job, i.task) for i in p.instances() if i.job not in elastic_jobs})
    else:
        plan = _reconcile(fleet, state, renew, on_event)
    state.profile = profile_ref
    # Everything that can fail is done before the first submission: a refusal after one would
    # leave jobs running that nobody asked for.
    scripts = {job.name: render_job(running, job, paths.root, fleet.scheduler.dialect) for job in running.jobs
               if any(j == job.name for (j, _) in plan.todo) or job.name in elastic_jobs}
    proxy_script = render_proxy_job(running, paths.root, fleet.scheduler.dialect) if mode == "slurm" else None
    elastic_plan = make_plan(fleet, running)
    _write_routing(fleet)
    if elastic_plan is not None:
        write_plan(fleet, elastic_plan, scripts)
        on_event("elastic: " + ", ".join(f"{s.server} {s.min}..{s.max} replicas" for s in elastic_plan.servers.values())
                 + " (the proxy's controller submits them with the load)")

    submitted = _submit(fleet, state, plan, scripts, on_event)
    ensure_proxy(fleet, state, mode, on_event, proxy_script)
    save_state(r, paths, state)
    if not wait:
        return UpResult(state, submitted, plan.kept, None, fit_errors=errors)
    status, timed_out = _wait(fleet, state, timeout=timeout, poll=poll, on_event=on_event, on_status=on_status)
    return UpResult(state, submitted, plan.kept, status, timed_out=timed_out, fit_errors=errors)


def _check_options(fleet: Fleet, proxy_mode: str | None, *, renew: bool, wait: bool) -> str:
    p = fleet.profile
    mode = proxy_mode or p.proxy.run
    if mode not in PROXY_MODES:
        raise FleetError(f"--proxy must be one of {', '.join(PROXY_MODES)}, not {mode!r}")
    if renew and not p.renew:
        raise FleetError(f"profile {p.name} does not allow renewal; set renew: true (and renew_margin) in it")
    if renew and not wait:
        raise FleetError("--renew drains the old tasks once their replacements are READY, so it needs --wait")
    if mode == "none" and p.elastic_servers():
        raise FleetError(f"{', '.join(p.elastic_servers())} are elastic: the controller that starts their replicas "
                         "runs in the proxy, so --proxy none would never start them; use --proxy slurm or local")
    if mode == "local" and not fleet.runner.is_local:
        raise FleetError("--proxy local runs the proxy on this machine, but this fleet runs on "
                         f"{fleet.runner.where}; nothing was submitted. Use --proxy slurm (a job on the "
                         "cluster; proxy.run: slurm in the profile), or run biofleet on the login node")
    return mode


def _reconcile(fleet: Fleet, state: FleetState, renew: bool, on_event: Event) -> _Plan:
    """What an up on a fleet that already has state must do."""
    current = collect_status(fleet, state=state)
    current.servers = current.fixed  # elastic replicas are the controller's
    # A server that failed in a task whose other servers still run is restarted in place by that
    # task (cancelling the task would stop its living neighbours); a task is resubmitted whole
    # when it is gone, or when every server in it has failed.
    tasks: dict[tuple[str, int], list[ServerStatus]] = {}
    for s in current.servers:
        tasks.setdefault((s.job, s.task), []).append(s)
    in_place = [s for s in current.servers if s.state == ServerState.FAILED and s.task_running
                and not all(o.state == ServerState.FAILED for o in tasks[(s.job, s.task)])]
    plan = _Plan(todo={(s.job, s.task) for s in current.servers if s.state in NEEDS_RESUBMIT and s not in in_place})
    for s in in_place:
        fleet.runner.write_text(fleet.paths.restart_request(s.name, s.job_id or ""), f"{time.time()}\n")
        on_event(f"{s.name} failed in running task {s.job_id} ({s.reason}); asked the task to restart it "
                 "in place (its neighbours keep serving)")
    plan.kept = [s.name for s in current.servers if (s.job, s.task) not in plan.todo]
    if renew:
        for s in current.servers:
            key = (s.job, s.task)
            if s.state == ServerState.READY and s.ending_soon and key not in plan.todo and s.job_id:
                plan.renewing[key] = s.job_id
        if plan.renewing:
            plan.todo |= set(plan.renewing)
            on_event("renewing (time limit near): " + ", ".join(
                f"{s.name} ends in {int((s.ends_in_s or 0) // 60)} min" for s in current.servers
                if (s.job, s.task) in plan.renewing))
        if current.proxy.ending_soon:
            on_event(PROXY_ENDING.format(job=current.proxy.job_id, mins=int((current.proxy.ends_in_s or 0) // 60)))
    if plan.kept:
        on_event(f"keeping {len(plan.kept)} server(s) that are running or on their way: {', '.join(plan.kept)}")
    return plan


def _submit(fleet: Fleet, state: FleetState, plan: _Plan, scripts: dict[str, str], on_event: Event) -> list[JobRecord]:
    r, paths, dialect = fleet.runner, fleet.paths, fleet.scheduler.dialect
    submitted: list[JobRecord] = []
    for job in fleet.profile.jobs:
        tasks = sorted(t for (j, t) in plan.todo if j == job.name)
        if not tasks:
            continue
        script = paths.script(job.name)
        r.write_text(script, scripts[job.name], mode=0o755)
        subset = tasks if job.is_array and len(tasks) < len(job.nodes) else None
        job_id = fleet.scheduler.submit(script, tasks=subset)
        rec = JobRecord(job=job.name, job_id=job_id, tasks=tasks, array=job.is_array,
                        task_ids={t: dialect.task_job_id(job_id, t, job.is_array) for t in tasks},
                        replaces=[plan.renewing[(job.name, t)] for t in tasks if (job.name, t) in plan.renewing])
        state.jobs.append(rec)
        submitted.append(rec)
        save_state(r, paths, state)  # after every submission: a crash must not lose a job id
        what = f"tasks {','.join(map(str, tasks))}" if job.is_array else "1 node"
        on_event(f"submitted job {job.name} ({what}) as {job_id}")
    return submitted


def _wait(fleet: Fleet, state: FleetState, *, timeout: float, poll: float, on_event: Event,
          on_status: Callable[[FleetStatus], None] | None) -> tuple[FleetStatus, bool]:
    """Poll until every server settled, renewals drained and the proxy routes to every READY server."""
    deadline = time.monotonic() + timeout
    last: dict[str, str] = {}
    announced: set[str] = set()
    while True:
        status = collect_status(fleet, state=state)
        for s in status.servers:
            desc = s.state.value + (f" ({s.reason})" if s.reason and s.state != ServerState.READY else "")
            if last.get(s.name) != desc:
                last[s.name] = desc
                on_event(f"{s.node_label} {s.name}: {desc}")
                for line in s.log_tail if s.state == ServerState.FAILED else ():
                    on_event(f"    | {line}")
        if on_status is not None:
            on_status(status)
        if status.proxy.url and state.proxy is not None and state.proxy.url != status.proxy.url:
            state.proxy.url = status.proxy.url  # the proxy job has written where it listens
            save_state(fleet.runner, fleet.paths, state)
        _drain_renewed(fleet, state, status, on_event, announced)
        draining = any(rec.replaces for rec in state.jobs)  # old tasks wait for the proxy to route to the new
        unrouted = _unrouted(status)
        if unrouted and unrouted != last.get("#proxy"):
            last["#proxy"] = unrouted
            on_event(f"proxy: not routing to {unrouted} yet")
        if (all(s.state in SETTLED and not s.completing for s in status.fixed) and not draining and not unrouted
                and status.proxy.state in _PROXY_DONE and _elastic_settled(status)):
            return status, False
        if time.monotonic() >= deadline:
            return status, True
        time.sleep(poll)


def _elastic_settled(status: FleetStatus) -> bool:
    """Each elastic server has its min replicas READY, or nothing left on the way (a failed start)."""
    if not status.elastic:
        return True
    if status.proxy.state in (ServerState.FAILED, ServerState.STOPPED):
        return True  # no controller: nothing will come
    return all(e.ready >= e.min or (e.starting + e.pending == 0 and any(d["action"] == "failed" for d in e.decisions))
               for e in status.elastic)


def _routed(status: FleetStatus, s: ServerStatus) -> bool:
    routed = status.proxy.backends
    return routed is None or routed.get(endpoint_key(s.name, s.job_id), False)


def _unrouted(status: FleetStatus) -> str:
    """READY servers a running proxy does not route to yet (it finds and probes them on its own
    clock): ``up`` returns only once the endpoint it prints answers for every READY server."""
    if status.proxy.state != ServerState.READY:
        return ""
    return ", ".join(s.name for s in status.servers if s.state == ServerState.READY and not _routed(status, s))


def _drain_renewed(fleet: Fleet, state: FleetState, status: FleetStatus, on_event: Event,
                   announced: set[str]) -> None:
    """Cancel the tasks a renewal replaces, once every server of the replacement is READY and,
    when a proxy is up, routed to by it (it admits a server on its own probe, a moment after ours).

    Until then both answer: the proxy routes to old and new records alike, so there is no gap.
    A replacement that fails leaves the old tasks running to their time limit.
    """
    for rec in state.jobs:
        if not rec.replaces:
            continue
        mine = [s for s in status.servers if s.job == rec.job and s.task in rec.tasks
                and s.job_id == rec.task_job_id(s.task)]
        if not mine:
            continue
        if any(s.state in NEEDS_RESUBMIT for s in mine):
            on_event(f"replacement {rec.job_id} did not start ({', '.join(f'{s.name}: {s.state}' for s in mine)}); "
                     f"{' '.join(rec.replaces)} keep serving until their time limit")
            rec.replaces = []
            save_state(fleet.runner, fleet.paths, state)
            continue
        if not all(s.state == ServerState.READY for s in mine):
            continue
        unrouted = [s.name for s in mine if not _routed(status, s)]
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
