"""``down``, ``logs``, ``register``/``unregister`` and ``token``: the fleet's everyday operations."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from biofleet.errors import FleetError
from biofleet.fleet.context import Fleet
from biofleet.fleet.elastic import load_plan_quiet
from biofleet.fleet.proxy_job import stop_local_proxy
from biofleet.fleet.state import FleetState, load_state
from biofleet.fleet.status import read_registry, read_secret
from biofleet.procs import pid_alive
from biofleet.profile import Instance, Profile
from biofleet.registry import Endpoint, record_filename
from biofleet.remote.base import Runner


@dataclass
class DownResult:
    cancelled: list[str]
    removed_records: int
    purged: bool
    had_state: bool


def down(fleet: Fleet, *, purge: bool = False, timeout: float = 120,
         on_event: Callable[[str], None] = lambda m: None) -> DownResult:
    """Cancel exactly the job ids ``up`` recorded, stop a local proxy, clear this fleet's records.

    The state is removed only once every job has left the queue: a timeout keeps it, so running
    ``down`` again cancels the same ids. ``purge`` also deletes the fleet directory.
    """
    r, paths = fleet.runner, fleet.paths
    state = load_state(r, paths)
    cancelled: list[str] = []
    elastic = state is not None and (bool(fleet.profile.elastic_servers()) or r.exists(paths.elastic_plan)
                                     or r.exists(paths.elastic_state))
    if state is not None and elastic:
        cancelled += _stop_elastic(fleet, state, timeout, on_event)
    if state is not None:
        ids = [j for j in state.job_ids() if j not in cancelled]
        if ids:
            fleet.scheduler.cancel(ids)
            on_event(f"cancelled job(s) {' '.join(ids)}; waiting for them to leave the queue")
        cancelled += ids
        if cancelled:
            try:
                fleet.scheduler.wait_gone(cancelled, timeout)
            except TimeoutError as exc:
                raise FleetError(f"{exc}; run biofleet down again, or scancel them by id") from None
        if state.proxy and state.proxy.run == "local" and pid_alive(state.proxy.pid):
            stop_local_proxy(state.proxy.pid)
            on_event(f"stopped the local proxy (pid {state.proxy.pid})")
    removed = 0
    ours: set[str] = set()
    if state is not None:
        ours.update(cancelled)
        for rec in state.jobs:
            ours.update(rec.task_job_id(t) for t in rec.tasks)
    for ep in read_registry(r, paths):
        if ep.job_id in ours or (purge and ep.manual):
            _remove_quiet(r, f"{paths.registry}/{record_filename(ep.server, ep.job_id)}")
            removed += 1
    if state is not None:
        r.remove(paths.state)
        if r.exists(paths.elastic_state):
            r.remove(paths.elastic_state)
    if r.exists(paths.proxy_record):
        r.remove(paths.proxy_record)
    if purge and r.exists(paths.root):
        r.rmtree(paths.root)
        on_event(f"removed {paths.root}")
    return DownResult(cancelled, removed, purge, state is not None)


def _stop_elastic(fleet: Fleet, state: FleetState, timeout: float, on_event: Callable[[str], None]) -> list[str]:
    """An elastic fleet: the proxy (its controller) first, so that no submission races the
    cancellation; then every replica the journal names or the queue holds with this fleet's tag."""
    from biofleet.elastic.state import fleet_tag
    from biofleet.fleet.elastic import read_journal, stop_and_cancel

    stopped: list[str] = []
    px = state.proxy
    if px is not None and px.run == "local" and pid_alive(px.pid):
        stop_local_proxy(px.pid)
        on_event(f"stopped the local proxy (pid {px.pid}) and its elastic controller")
    elif px is not None and px.job_id:
        fleet.scheduler.cancel([px.job_id])
        try:
            fleet.scheduler.wait_gone([px.job_id], timeout)
        except TimeoutError as exc:
            raise FleetError(f"{exc}; the proxy job runs the elastic controller, which must stop before its "
                             "replicas are cancelled: run biofleet down again") from None
        stopped.append(px.job_id)
        on_event(f"cancelled the proxy job {px.job_id} (it runs the elastic controller)")
    journal, note = read_journal(fleet)
    if note:
        on_event(f"{note}; cancelling by this fleet's tag instead")
    plan = load_plan_quiet(fleet)
    tag = plan.tag if plan is not None else fleet_tag(fleet.profile.name, fleet.paths.root)
    ids = stop_and_cancel(fleet, tag, journal, on_event)
    if ids:
        fleet.scheduler.cancel(ids)
        on_event(f"cancelled elastic replica job(s) {' '.join(ids)}")
    return stopped + ids


def _remove_quiet(runner: Runner, path: str) -> None:
    try:
        runner.remove(path)
    except Exception:
        pass


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
    """(server log, scheduler output) of the latest submission running server ``name``; for an
    elastic server, of its newest replica, or of the one named ``server@job id``."""
    server, _, wanted = name.partition("@")
    inst = find_instance(fleet.profile, server)
    if inst.spec.elastic is not None:
        return _elastic_log_paths(fleet, inst, wanted or None)
    state = load_state(fleet.runner, fleet.paths)
    rec = state.latest(inst.job, inst.task) if state else None
    if rec is None:
        raise FleetError(f"{inst.name} has not been submitted; run biofleet up --profile {fleet.profile.name}")
    job = fleet.profile.job(inst.job)
    out = fleet.scheduler.dialect.output_path(fleet.paths.logs, job.name, rec.job_id,
                                              inst.task if job.is_array else None)
    return fleet.paths.server_log(inst.name, rec.task_job_id(inst.task)), out


def _elastic_log_paths(fleet: Fleet, inst: Instance, job_id: str | None) -> tuple[str, str]:
    from biofleet.fleet.elastic import read_journal

    journal, note = read_journal(fleet)
    if note:
        raise FleetError(note)
    reps = [r for r in (journal.replicas if journal else []) if r.server == inst.server and r.job_id]
    if job_id is not None:
        reps = [r for r in reps if r.job_id == job_id]
    if not reps:
        which = f" with job id {job_id}" if job_id else ""
        raise FleetError(f"no replica of elastic server {inst.server}{which} has been submitted (biofleet status "
                         "lists them; the controller starts one with the first request)")
    rec = max(reps, key=lambda r: (r.live, r.decided_at))
    assert rec.job_id is not None
    out = fleet.scheduler.dialect.output_path(fleet.paths.logs, inst.job, rec.job_id, None)
    return fleet.paths.server_log(inst.name, rec.job_id), out


def register_endpoint(fleet: Fleet, name: str, url: str, served_names: Sequence[str],
                      kind: str = "generate") -> Endpoint:
    """Add an endpoint started outside biofleet. The name, URL and served names follow the same rules
    as a profile's (the name becomes a file name in the registry: no ``/``, no leading dot)."""
    kinds: dict[str, Literal["generate", "embed"]] = {"generate": "generate", "embed": "embed"}
    if kind not in kinds:
        raise FleetError(f"--kind must be generate or embed, not {kind[:40]!r}")
    try:
        ep = Endpoint(fleet=fleet.profile.name, server=name, url=url.rstrip("/"),
                      served_names=tuple(served_names) or (name,), kind=kinds[kind], engine="external",
                      manual=True, started_at=time.time())
    except ValidationError as exc:
        what = {"server": "NAME", "url": "URL", "served_names": "--served-name"}
        raise FleetError("cannot register it: " + "; ".join(
            f"{what.get(str(e['loc'][0]), e['loc'][0])}: {str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors())) from None
    fleet.runner.mkdir(fleet.paths.registry)
    fleet.runner.write_text(f"{fleet.paths.registry}/{record_filename(name, None)}",
                            ep.model_dump_json(exclude_none=True))
    return ep


def unregister_endpoint(fleet: Fleet, name: str) -> bool:
    path = f"{fleet.paths.registry}/{record_filename(name, None)}"
    if not fleet.runner.exists(path):
        return False
    fleet.runner.remove(path)
    return True


def read_token(fleet: Fleet) -> str:
    tok = read_secret(fleet, fleet.paths.token)
    if tok is None:
        raise FleetError(f"no proxy token at {fleet.paths.token}; biofleet up creates it")
    return tok
