"""Elastic fleets on the real test SLURM cluster, with the mock engine standing in for a model
that takes a while to load (``--startup-delay-s``): 0 -> 1 on the first request, 1 -> N under a
burst, N -> 0 when idle; a replica whose job fails, one that stays pending; the controller killed
in the middle of a scale-up; ``down`` during a scale-up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from test_fleet_slurm import wait_for
from typer.testing import CliRunner

from biofleet.backends.slurm import Slurm
from biofleet.cli.main import app
from biofleet.elastic.state import load_elastic_state
from biofleet.fleet import ServerState, collect_status, down, open_fleet, up
from biofleet.fleet.elastic import make_plan
from biofleet.profile import load_profile
from biofleet.remote.local import LocalRunner

pytestmark = pytest.mark.slurm

PROFILE = """\
name: {name}
cluster:
  partition: t4flex
  workdir: {workdir}
  setup: ["export PATH={bindir}:$PATH"]
  bind_host: 127.0.0.1
  advertise: loopback
  time: "00:30:00"
  cpus_per_task: 1
  mem: 200M
{cluster_extra}servers:
  coder:
    model: Qwen/Qwen2.5-Coder-7B-Instruct-AWQ
    engine: mock
    replicas: {{min: 0, max: {max}}}
    max_restarts: 0
    extra_args: {extra_args}
    scaling: {scaling}
jobs:
  - name: coder
    gpu: T4
    nodes: [coder]
proxy:
  run: {proxy}
  partition: cpuspot
  host: 127.0.0.1
  port: null
"""


def write_profile(tmp_path: Path, name: str, *, proxy: str = "local", max: int = 3, extra_args: str = "[]",
                  scaling: str = "{}", cluster_extra: str = "") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(PROFILE.format(name=name, workdir=tmp_path / "work", bindir=Path(sys.executable).parent,
                                proxy=proxy, max=max, extra_args=extra_args, scaling=scaling,
                                cluster_extra=cluster_extra))
    return p


class Client:
    def __init__(self, fleet) -> None:
        self.fleet = fleet
        self.token = Path(fleet.paths.token).read_text().strip()

    @property
    def url(self) -> str:
        return wait_for(lambda: _proxy_url(self.fleet), 60, "the proxy's address")

    def chat(self, *, stream: bool = False, timeout: float = 90) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/chat/completions", timeout=timeout,
                          headers={"Authorization": f"Bearer {self.token}"},
                          json={"model": "coder", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})


def _proxy_url(fleet) -> str | None:
    try:
        return json.loads(Path(fleet.paths.proxy_record).read_text())["url"]
    except (OSError, ValueError, KeyError):
        return None


def journal(fleet):
    return load_elastic_state(fleet.runner, fleet.paths)


def actions(fleet) -> list[str]:
    j = journal(fleet)
    return [d.action for d in j.decisions] if j else []


def tagged_active(fleet) -> dict[str, str]:
    """This fleet's tagged jobs SLURM still holds (not ended)."""
    slurm = Slurm(LocalRunner())
    tag = make_plan(fleet, fleet.profile).tag
    found = slurm.find_tagged(tag)
    infos = slurm.queue(list(found.values())) if found else {}
    return {t: j for t, j in found.items() if j in infos and not infos[j].state.is_terminal}


def test_zero_to_n_under_a_burst_and_back_to_zero(slurm_cluster, tmp_path):
    """The proxy runs as a SLURM job and its controller submits replicas from there."""
    ref = write_profile(tmp_path, "el-burst", proxy="slurm", max=3,
                        extra_args='[--startup-delay-s, "2", --latency-ms, "300"]',
                        scaling="{target: 2, scale_up_after_s: 1, idle_s: 6, cold_start_s: 90, poll_s: 1, "
                                "keepalive_s: 1}")
    profile = load_profile(ref)
    events: list[str] = []
    with open_fleet(profile, backend="slurm") as fleet:
        try:
            res = up(fleet, profile_ref=str(ref), timeout=90, on_event=events.append, poll=0.5)
            assert not res.timed_out, "\n".join(events)
            assert res.submitted == [] and res.status.proxy.state == ServerState.READY  # min 0: no replica
            assert res.status.elastic[0].ready == 0 and not tagged_active(fleet)
            # an idle controller reports 0 held (status showed "? held" until the first change)
            wait_for(lambda: collect_status(fleet).elastic[0].held == 0, 10, "the controller to report 0 held")
            client = Client(fleet)

            # 0 -> 1: the first requests are held, not refused, and all answered
            results: list[httpx.Response] = []
            threads = [threading.Thread(target=lambda i=i: results.append(client.chat(stream=i == 1)))
                       for i in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert [r.status_code for r in results] == [200, 200, 200], [r.text for r in results]
            streamed = next(r for r in results if r.headers["content-type"].startswith("text/event-stream"))
            assert streamed.text.rstrip().endswith("data: [DONE]")
            first = wait_for(lambda: "ready" in actions(fleet) and actions(fleet), 5, "the journal to say ready")
            assert first[0] == "scale-up", first
            st = collect_status(fleet)
            assert st.elastic[0].ready >= 1 and any(s.elastic and s.state == ServerState.READY for s in st.servers)
            # status and logs, through the CLI
            shown = CliRunner().invoke(app, ["status", "--profile", str(ref)], env={"COLUMNS": "200"})
            assert shown.exit_code == 0, shown.output
            assert "elastic coder (0..3):" in shown.output and "held and no replica" in shown.output
            as_json = CliRunner().invoke(app, ["status", "--profile", str(ref), "--json"])
            elastic = json.loads(as_json.output)["elastic"]
            assert elastic[0]["server"] == "coder" and elastic[0]["decisions"][0]["action"] == "scale-up"
            logs = CliRunner().invoke(app, ["logs", "coder", "--profile", str(ref)])
            assert logs.exit_code == 0 and "mock engine: listening on" in logs.output, logs.output
            # each replica is a job of its own, on a T4 node, tagged for this fleet
            jobs = tagged_active(fleet)
            assert len(jobs) == st.elastic[0].ready + st.elastic[0].starting + st.elastic[0].pending
            assert all(s.node and s.node.startswith("t4-") for s in st.servers if s.elastic and s.node)

            # 1 -> N: a burst keeps the load per ready replica above target
            burst: list[int] = []
            stop = time.monotonic() + 12
            most, live_most = [0], [0]

            def hammer() -> None:
                while time.monotonic() < stop:
                    burst.append(client.chat(timeout=60).status_code)

            def watch() -> None:
                while time.monotonic() < stop + 5:
                    j = journal(fleet)
                    most[0] = max(most[0], sum(1 for r in j.live("coder") if r.ready_at is not None))
                    live_most[0] = max(live_most[0], len(j.live("coder")))
                    time.sleep(0.5)

            workers = [threading.Thread(target=hammer) for _ in range(8)] + [threading.Thread(target=watch)]
            for w in workers:
                w.start()
            for w in workers:
                w.join(90)
            assert burst and set(burst) == {200}, f"lost requests: {[c for c in burst if c != 200]}"
            assert most[0] >= 2, f"never more than {most[0]} ready replica(s): {journal(fleet).decisions}"
            assert live_most[0] <= 3  # never more than max

            # N -> 0: idle past idle_s, every replica drained and cancelled by id
            wait_for(lambda: not journal(fleet).live("coder"), 60, "scale to zero")
            wait_for(lambda: not tagged_active(fleet), 30, "the replica jobs to leave the queue")
            acts = actions(fleet)
            assert "drain" in acts and "cancel" in acts, acts
            j = journal(fleet)
            assert all(not r.failed for r in j.replicas), [r.end for r in j.replicas]
            st = collect_status(fleet)
            assert st.elastic[0].ready == 0 and not [s for s in st.servers if s.elastic]
        finally:
            down(fleet)
        assert not tagged_active(fleet)


def test_failed_replica_job_and_a_pending_one_end_held_requests_with_503(slurm_cluster, tmp_path):
    # a replica whose server cannot start: its job fails on the node
    ref = write_profile(tmp_path, "el-fail", extra_args="[--no-such-flag]", scaling="{cold_start_s: 60, poll_s: 1}")
    with open_fleet(load_profile(ref), backend="slurm") as fleet:
        try:
            up(fleet, profile_ref=str(ref), timeout=60, poll=0.5)
            t0 = time.monotonic()
            r = Client(fleet).chat()
            assert time.monotonic() - t0 < 45, "the failure must end the wait, not cold_start_s"
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            err = r.json()["error"]
            assert err["code"] == "replica_start_failed" and "FAILED" in err["message"], err
            wait_for(lambda: actions(fleet)[:2] == ["scale-up", "failed"], 5, "the failure in the journal")
            # status says why, from the server's log (clients are told the job's state only)
            failed = next(d for d in journal(fleet).decisions if d.action == "failed")
            assert "coder exited with code 2" in failed.reason and "coder exited" not in err["message"]
        finally:
            down(fleet)

    # a replica that cannot start yet: PENDING in the queue past cold_start_s
    ref = write_profile(tmp_path, "el-pend", cluster_extra='  sbatch_extra: ["--begin=now+3600"]\n',
                        scaling="{cold_start_s: 4, poll_s: 1, keepalive_s: 1}")
    with open_fleet(load_profile(ref), backend="slurm") as fleet:
        try:
            up(fleet, profile_ref=str(ref), timeout=60, poll=0.5)
            r = Client(fleet).chat()
            assert r.status_code == 503 and r.json()["error"]["code"] == "cold_start_timeout"
            assert "PENDING (BeginTime)" in r.json()["error"]["message"], r.text
            s = Client(fleet).chat(stream=True)  # keep-alives went out: the error comes in-band
            assert ": waiting for a replica of coder" in s.text and "PENDING (BeginTime)" in s.text
            st = collect_status(fleet)
            assert st.elastic[0].pending == 1 and "PENDING (BeginTime)" in (st.elastic[0].waiting_for or "")
        finally:
            down(fleet)
        assert not tagged_active(fleet)


def test_controller_killed_mid_scale_up_submits_nothing_twice(slurm_cluster, tmp_path, monkeypatch):
    """sbatch submits the job, then the proxy dies before it hears the job id. The restarted
    controller finds the job by its tag and adopts it; no second sbatch for that decision."""
    real = shutil.which("sbatch")
    assert real
    wrap = tmp_path / "bin"
    wrap.mkdir()
    calls, kill_once = tmp_path / "sbatch-calls", tmp_path / "kill-once"
    (wrap / "sbatch").write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\nout=$({real} "$@")\nrc=$?\n'
        f'if [ -e {kill_once} ]; then rm -f {kill_once}; kill -9 $PPID; sleep 5; fi\necho "$out"\nexit $rc\n')
    (wrap / "sbatch").chmod(0o755)
    kill_once.touch()
    monkeypatch.setenv("PATH", f"{wrap}:{os.environ['PATH']}")  # the local proxy inherits it
    ref = write_profile(tmp_path, "el-crash", extra_args='[--startup-delay-s, "2"]',
                        scaling="{cold_start_s: 60, poll_s: 1}")
    with open_fleet(load_profile(ref), backend="slurm") as fleet:
        try:
            res = up(fleet, profile_ref=str(ref), timeout=60, poll=0.5)
            pid = res.state.proxy.pid
            client = Client(fleet)
            with pytest.raises(httpx.TransportError):  # the proxy died holding this request
                client.chat(timeout=60)
            wait_for(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 10, "the proxy to be gone")
            j = journal(fleet)
            assert [r.state for r in j.replicas] == ["intent"] and j.replicas[0].job_id is None  # never heard the id
            assert len(tagged_active(fleet)) == 1  # ...but the job is in the queue

            up(fleet, profile_ref=str(ref), timeout=60, poll=0.5)  # starts the proxy again
            r = client.chat()
            assert r.status_code == 200, r.text
            wait_for(lambda: "ready" in actions(fleet), 5, "the journal to say ready")
            j = journal(fleet)
            assert len(calls.read_text().splitlines()) == 1, calls.read_text()
            assert len(j.replicas) == 1 and j.replicas[0].job_id == next(iter(tagged_active(fleet).values()))
            assert [d.action for d in j.decisions] == ["scale-up", "adopt", "ready"], j.decisions
        finally:
            down(fleet)
        assert not tagged_active(fleet)


def _pgrep(pattern: str) -> list[str]:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_down_during_a_scale_up_leaves_nothing(slurm_cluster, tmp_path):
    ref = write_profile(tmp_path, "el-down", proxy="slurm", extra_args='[--startup-delay-s, "61.5"]',
                        scaling="{target: 1, cold_start_s: 120, poll_s: 1}")
    with open_fleet(load_profile(ref), backend="slurm") as fleet:
        try:
            up(fleet, profile_ref=str(ref), timeout=90, poll=0.5)
            client = Client(fleet)
            outcome: list[object] = []

            def held() -> None:
                try:
                    outcome.append(client.chat(timeout=60).status_code)
                except httpx.HTTPError as exc:
                    outcome.append(type(exc).__name__)

            threads = [threading.Thread(target=held) for _ in range(2)]
            for t in threads:
                t.start()
            wait_for(lambda: len(tagged_active(fleet)) == 2, 30, "two replicas submitted (target 1, 2 held)")
        finally:
            d = down(fleet)
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), "a held client still hangs after down"
        assert len(outcome) == 2 and 200 not in outcome, outcome
        assert not tagged_active(fleet)
        assert len(d.cancelled) >= 3  # the proxy job and both replicas
        assert not list(Path(fleet.paths.registry).glob("*.json"))
        assert not Path(fleet.paths.elastic_state).exists()
        # no replica's server still runs on the machine (SLURM ended the jobs' processes)
        wait_for(lambda: not _pgrep("--startup-delay-s 61.5"), 15, "the replicas' servers to exit")
