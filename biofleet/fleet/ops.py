"""``down``, ``logs``, ``register``/``unregister`` and ``token``: the fleet's everyday operations."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from biofleet.errors import FleetError
from biofleet.fleet.context import Fleet
from biofleet.fleet.proxy_job import stop_local_proxy
from biofleet.fleet.state import load_state
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
            stop_local_proxy(state.proxy.pid)
            on_event(f"stopped the local proxy (pid {state.proxy.pid})")
    removed = 0
    ours: set[str] = set()
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
    """(server log, scheduler output) of the latest submission running server ``name``."""
    inst = find_instance(fleet.profile, name)
    state = load_state(fleet.runner, fleet.paths)
    rec = state.latest(inst.job, inst.task) if state else None
    if rec is None:
        raise FleetError(f"{inst.name} has not been submitted; run biofleet up --profile {fleet.profile.name}")
    job = fleet.profile.job(inst.job)
    out = fleet.scheduler.dialect.output_path(fleet.paths.logs, job.name, rec.job_id,
                                              inst.task if job.is_array else None)
    return fleet.paths.server_log(inst.name, rec.task_job_id(inst.task)), out


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
