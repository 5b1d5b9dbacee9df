"""The fleet's proxy: a job on the scheduler's CPU partition (``proxy.run: slurm``), or a process
on this machine (``local``). Its command line has one definition: :meth:`FleetPaths.proxy_args`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from biofleet.fleet.context import Fleet
from biofleet.fleet.state import FleetState, ProxyRecord
from biofleet.paths import PROXY_MODULE
from biofleet.procs import free_port, pid_alive, pid_cmdline

PROXY_ENDING = (
    "the proxy job {job} ends in {mins} min and --renew does not move it: after it ends, biofleet up "
    "starts a new one, whose address may differ. For a fleet that outlives the time limit, give "
    "proxy.time a longer limit on a partition that allows it, or run the proxy where there is none "
    "(proxy.run: local)"
)


def proxy_alive(fleet: Fleet, state: FleetState) -> bool:
    """Is the proxy ``up`` recorded still there (a live local process, or a job not ending)?"""
    px = state.proxy
    if px is None:
        return False
    if px.run == "local":
        return pid_alive(px.pid)
    if not px.job_id:
        return False
    info = fleet.scheduler.states([px.job_id]).get(px.job_id)
    return info is not None and not info.state.is_done


def ensure_proxy(fleet: Fleet, state: FleetState, mode: str, on_event: Callable[[str], None],
                 script_text: str | None) -> None:
    """Start the proxy unless the recorded one is alive. ``script_text``: the rendered proxy job
    (rendered before anything was submitted)."""
    p, paths = fleet.profile, fleet.paths
    if mode == "none" or proxy_alive(fleet, state):
        return
    if mode == "local":
        host = p.proxy.host
        port = p.proxy.port or free_port(host)
        log = open(paths.logs + "/proxy.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", PROXY_MODULE,
             *paths.proxy_args(host, str(port), p.proxy, elastic=bool(p.elastic_servers()))],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True,
        )
        log.close()
        connect = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        url = f"http://{connect}:{port}"
        state.proxy = ProxyRecord(run="local", pid=proc.pid, host=host, url=url)
        fleet.runner.write_text(paths.proxy_record, json.dumps({"url": url, "pid": proc.pid}))
        on_event(f"proxy started locally (pid {proc.pid}) at {url}")
        return
    if script_text is None:
        from biofleet.render import render_proxy_job

        script_text = render_proxy_job(p, paths.root, fleet.scheduler.dialect)
    script = paths.script("proxy")
    fleet.runner.write_text(script, script_text, mode=0o755)
    if fleet.runner.exists(paths.proxy_record):
        fleet.runner.remove(paths.proxy_record)
    job_id = fleet.scheduler.submit(script)
    state.proxy = ProxyRecord(run="slurm", job_id=job_id)
    on_event(f"proxy submitted as job {job_id} (partition {p.proxy.partition or p.cluster.partition})")


def stop_local_proxy(pid: int | None) -> None:
    """SIGTERM the local proxy's process group (SIGKILL after 5 s), if the pid is still a biofleet."""
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
