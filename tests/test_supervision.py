"""A server that dies beside living ones is restarted in place by its job, on the real test SLURM.

cpu-demo's ``misc`` job runs ``math`` and ``embeddings`` side by side in one task (as co-located
servers share a GPU). ``math`` is SIGKILLed: its job restarts it within seconds while
``embeddings`` keeps answering; after its restart budget it is FAILED with its log tail while
the task and its neighbour keep running; ``up`` then asks the running task to restart it again
instead of cancelling the neighbour with a resubmission.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from biofleet.cli.main import app
from biofleet.fleet import ServerState, collect_status, down, open_fleet, up
from biofleet.profile import load_profile
from biofleet.registry import read_records

pytestmark = pytest.mark.slurm


def record(fleet, server: str):
    recs = [r for r in read_records(Path(fleet.paths.registry)) if r.server == server]
    return recs[0] if recs else None


def wait_for(pred, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(poll)


def server(fleet, name):
    return next(s for s in collect_status(fleet).servers if s.name == name)


class Load(threading.Thread):
    """Requests to one server directly, counting every failure (a dead thread would hide them)."""

    def __init__(self, url: str, key: str, model: str) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.model = url, key, model
        self.stop, self.ok, self.failures = threading.Event(), 0, []

    def run(self) -> None:
        with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {self.key}"}) as c:
            while not self.stop.is_set():
                try:
                    r = c.post(f"{self.url}/v1/embeddings", json={"model": self.model, "input": "x"})
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(r.status_code)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                time.sleep(0.05)


def test_killed_colocated_server_restarts_in_place_then_fails_then_up_restarts_it(slurm_cluster, tmp_path):
    ref = tmp_path / "sup.yaml"
    ref.write_text(
        f"extends: cpu-demo\nname: sup\ncluster:\n  workdir: {tmp_path}/work\n"
        f"  setup: ['export PATH={Path(sys.executable).parent}:$PATH']\n"
        "servers:\n  math: {max_restarts: 1}\n"
    )
    with open_fleet(load_profile(ref), backend="slurm") as fleet:
        try:
            res = up(fleet, profile_ref=str(ref), proxy_mode="none", timeout=60, poll=0.3)
            assert all(s.state == ServerState.READY for s in res.status.servers), res.status.servers
            emb = record(fleet, "embeddings")
            math0 = record(fleet, "math")
            key = Path(fleet.paths.backend_key).read_text().strip()
            load = Load(emb.url, key, "embeddings")
            load.start()
            try:
                # 1. kill math: restarted in place within seconds, same task, new process
                os.kill(math0.pid, signal.SIGKILL)
                wait_for(lambda: record(fleet, "math") is None or record(fleet, "math").pid != math0.pid, 5,
                         "math to leave the registry")
                math1 = wait_for(lambda: (r := record(fleet, "math")) is not None and r.pid != math0.pid and r, 10,
                                 "math to be restarted")
                assert math1.job_id == math0.job_id
                st = wait_for(lambda: (s := server(fleet, "math")).state == ServerState.READY and s, 10, "math READY again")
                assert st.restarts == 1 and st.last_exit == 137, st

                # 2. kill it again: the budget (max_restarts: 1) is spent, it is FAILED with its log tail
                os.kill(math1.pid, signal.SIGKILL)
                st = wait_for(lambda: (s := server(fleet, "math")).state == ServerState.FAILED and s, 10, "math FAILED")
                assert "restart budget spent" in st.reason and st.task_running, st
                assert any("exited with code 137" in line for line in st.log_tail), st.log_tail
                assert record(fleet, "math") is None  # not routed to
                neighbour = server(fleet, "embeddings")
                assert neighbour.state == ServerState.READY and record(fleet, "embeddings").pid == emb.pid
                shown = CliRunner().invoke(app, ["status", "--profile", str(ref), "--backend", "slurm"],
                                           env={"COLUMNS": "250"})
                assert shown.exit_code == 0 and "restart budget spent" in shown.output, shown.output
                assert "last exit 137" in shown.output, shown.output

                # 3. up restarts it in place: nothing submitted, the neighbour never stopped
                events: list[str] = []
                res2 = up(fleet, profile_ref=str(ref), proxy_mode="none", timeout=60, poll=0.3,
                          on_event=events.append)
                assert res2.submitted == [], events
                assert any("restart it in place" in e for e in events), events
                assert any(f"math: {ServerState.RESTARTING}" in e for e in events), events
                assert all(s.state == ServerState.READY for s in res2.status.servers), res2.status.servers
                assert record(fleet, "math").job_id == math0.job_id
                assert record(fleet, "embeddings").pid == emb.pid
            finally:
                load.stop.set()
                load.join()
            assert load.ok > 20 and load.failures == [], (load.ok, load.failures[:5])
        finally:
            down(fleet)
