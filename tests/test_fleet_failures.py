"""Failure paths of up / down / renew, through the CLI as a user meets them, on the real test SLURM.

up timing out (exit 3) and not ready (exit 1), --force past a refusing fit-check, the proxy job dying
and being resubmitted, down timing out and being run again, down --purge, a renewal whose replacement
fails, and options that are refused before anything is submitted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from biofleet.backends.slurm import Slurm
from biofleet.fleet import ServerState, collect_status, down, open_fleet, up
from biofleet.profile import load_profile
from biofleet.remote.local import LocalRunner

pytestmark = pytest.mark.slurm
BINDIR = Path(sys.executable).parent


def demo(tmp_path: Path, name: str, extra: str = "", proxy: str = "none", cluster_extra: str = "") -> Path:
    """cpu-demo on the test cluster, with profile lines added under the top level and under cluster."""
    p = tmp_path / f"{name}.yaml"
    proxy_block = {"none": "", "local": "", "slurm": "proxy: {run: slurm, partition: cpuspot, host: 127.0.0.1, port: null}\n"}
    p.write_text(
        f"extends: cpu-demo\nname: {name}\ncluster:\n  workdir: {tmp_path}/work\n"
        f"  setup: ['export PATH={BINDIR}:$PATH']\n{cluster_extra}{extra}{proxy_block[proxy]}"
    )
    return p


class Ran:
    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.exit_code, self.stdout, self.output = proc.returncode, proc.stdout, proc.stdout + proc.stderr


def cli(*args: str) -> Ran:
    """The real entry point in a subprocess: exit codes and messages exactly as a user sees them."""
    return Ran(subprocess.run([sys.executable, "-m", "biofleet.cli.main", *args], capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "200"}, timeout=300))


def ids_in_queue(job_ids) -> dict[str, str]:
    return {k: v.state.value for k, v in Slurm(LocalRunner()).queue(job_ids).items() if not v.state.is_terminal}


def state_of(tmp_path: Path, name: str) -> dict | None:
    f = tmp_path / "work" / name / "state.json"
    return json.loads(f.read_text()) if f.exists() else None


def test_up_times_out_with_exit_3_and_leaves_the_jobs_queued(slurm_cluster, tmp_path):
    ref = demo(tmp_path, "late", cluster_extra="  sbatch_extra: ['--begin=now+3600']\n")
    try:
        r = cli("up", "--profile", str(ref), "--backend", "slurm", "--proxy", "none", "--timeout", "3")
        assert r.exit_code == 3, r.output
        assert "timed out after 3s; not ready:" in r.output and "PENDING" in r.output, r.output
        st = state_of(tmp_path, "late")
        ids = [j["job_id"] for j in st["jobs"]]
        assert len(ids) == 2 and set(ids_in_queue(ids).values()) == {"PENDING"}  # jobs keep their place
    finally:
        assert cli("down", "--profile", str(ref), "--backend", "slurm").exit_code == 0


def test_up_not_ready_exits_1_naming_the_failed_servers(slurm_cluster, tmp_path):
    ref = demo(tmp_path, "broken", extra="servers:\n  coder: {extra_args: [--no-such-flag], max_restarts: 0}\n")
    try:
        r = cli("up", "--profile", str(ref), "--backend", "slurm", "--proxy", "none", "--timeout", "60")
        assert r.exit_code == 1, r.output
        assert "not ready: coder-0 (" in r.output and "coder-1 (" in r.output, r.output
        assert "math" not in r.output.split("not ready:")[1], r.output  # math is READY
        assert "--no-such-flag" in r.output  # the failed task's log tail
    finally:
        cli("down", "--profile", str(ref), "--backend", "slurm")


def test_force_submits_a_plan_the_fit_check_refuses(slurm_cluster, tmp_path):
    """The seed's H100 share for the coder (0.05 of 80 GB) cannot hold its weights."""
    ref = tmp_path / "tight.yaml"
    ref.write_text(
        f"extends: h100x2\nname: tight\ncluster:\n  partition: h100flex\n  workdir: {tmp_path}/work\n"
        f"  setup: ['export PATH={BINDIR}:$PATH']\n  hf_home: null\n  bind_host: 127.0.0.1\n  advertise: loopback\n"
        "  cpus_per_task: 1\n  mem: 100M\nservers:\n  coder: {gpu_memory_utilization: 0.05}\n"
    )
    try:
        r = cli("up", "--profile", str(ref), "--backend", "slurm", "--proxy", "none", "--engine", "mock")
        assert r.exit_code == 1, r.output
        assert "fit-check refuses this plan; nothing was submitted" in r.output and "coder" in r.output
        assert state_of(tmp_path, "tight") is None

        r = cli("up", "--profile", str(ref), "--backend", "slurm", "--proxy", "none", "--engine", "mock",
                "--force", "--timeout", "90")
        assert r.exit_code == 0, r.output
        assert "--force: submitting despite" in r.output
        assert "8/8 servers ready" in r.output, r.output
    finally:
        cli("down", "--profile", str(ref), "--backend", "slurm")


def test_dead_proxy_job_is_resubmitted_by_up(slurm_cluster, tmp_path):
    ref = demo(tmp_path, "px", proxy="slurm")
    profile = load_profile(ref)
    with open_fleet(profile, backend="slurm") as fleet:
        try:
            res = up(fleet, profile_ref=str(ref), timeout=60, poll=0.3)
            assert res.status.proxy.state == ServerState.READY, res.status.proxy
            old_proxy = res.state.proxy.job_id
            Slurm(LocalRunner()).cancel([old_proxy])
            deadline = time.monotonic() + 30
            while collect_status(fleet).proxy.state == ServerState.READY:
                assert time.monotonic() < deadline, "the cancelled proxy job still shows READY"
                time.sleep(0.3)
            events: list[str] = []
            res2 = up(fleet, profile_ref=str(ref), timeout=60, poll=0.3, on_event=events.append)
            assert res2.submitted == [], events  # the servers keep running
            assert res2.state.proxy.job_id != old_proxy and res2.status.proxy.state == ServerState.READY, events
            token = Path(fleet.paths.token).read_text().strip()
            r = httpx.post(f"{res2.status.proxy.url}/v1/chat/completions", headers={"Authorization": f"Bearer {token}"},
                           json={"model": "coder", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
            assert r.status_code == 200, r.text
        finally:
            down(fleet)


def test_down_timeout_keeps_the_state_and_a_second_down_finishes(slurm_cluster, tmp_path):
    # The servers take 30 s to stop after SIGTERM (SLURM kills them after KillWait, 2 s here).
    ref = demo(tmp_path, "slow", extra="servers:\n  coder: {extra_args: [--shutdown-delay-s, '30']}\n")
    r = cli("up", "--profile", str(ref), "--backend", "slurm", "--proxy", "none", "--timeout", "60")
    assert r.exit_code == 0, r.output
    ids = [j["job_id"] for j in state_of(tmp_path, "slow")["jobs"]]
    r = cli("down", "--profile", str(ref), "--backend", "slurm", "--timeout", "0.5")
    assert r.exit_code == 1, r.output
    assert "still active after 0.5s" in r.output and "run biofleet down again" in r.output, r.output
    assert state_of(tmp_path, "slow") is not None  # nothing forgotten: the ids are still recorded
    r = cli("down", "--profile", str(ref), "--backend", "slurm", "--timeout", "60")
    assert r.exit_code == 0, r.output
    assert ids_in_queue(ids) == {} and state_of(tmp_path, "slow") is None


def test_down_purge_removes_the_fleet_dir_and_nothing_else(slurm_cluster, tmp_path):
    ref = demo(tmp_path, "gone")
    neighbour = tmp_path / "work" / "other-fleet"
    neighbour.mkdir(parents=True)
    (neighbour / "state.json").write_text("{}")
    r = cli("up", "--profile", str(ref), "--backend", "slurm", "--proxy", "none", "--timeout", "60")
    assert r.exit_code == 0, r.output
    assert cli("register", "ext", "http://127.0.0.1:9", "--profile", str(ref), "--backend", "slurm").exit_code == 0
    fleet_dir = tmp_path / "work" / "gone"
    ids = [j["job_id"] for j in state_of(tmp_path, "gone")["jobs"]]
    r = cli("down", "--profile", str(ref), "--backend", "slurm", "--purge", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["purged"] and sorted(out["cancelled"]) == sorted(ids)
    assert not fleet_dir.exists() and ids_in_queue(ids) == {}
    assert (neighbour / "state.json").read_text() == "{}"
    # without --purge the logs stay
    r = cli("up", "--profile", str(ref), "--backend", "slurm", "--proxy", "none", "--timeout", "60")
    assert r.exit_code == 0, r.output
    assert cli("down", "--profile", str(ref), "--backend", "slurm").exit_code == 0
    assert list((fleet_dir / "logs").glob("*.log")) and not (fleet_dir / "state.json").exists()


def test_renewal_whose_replacement_fails_leaves_the_old_tasks_serving(slurm_cluster, tmp_path):
    body = (f"extends: cpu-demo\nname: renewfail\nrenew: true\nrenew_margin: '00:30:00'\ncluster:\n"
            f"  workdir: {tmp_path}/work\n  time: '00:10:00'\n  setup: ['export PATH={BINDIR}:$PATH']\n")
    ref = tmp_path / "renewfail.yaml"
    ref.write_text(body)
    with open_fleet(load_profile(ref), backend="slurm") as fleet:
        try:
            res = up(fleet, profile_ref=str(ref), timeout=60, poll=0.3)
            assert all(s.state == ServerState.READY for s in res.status.servers)
            old = {s.name: s.job_id for s in res.status.servers}
            token = Path(fleet.paths.token).read_text().strip()
            url = res.status.proxy.url
            failures, done, count = [], threading.Event(), [0]

            def load():
                try:
                    with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {token}"}) as c:
                        while not done.is_set():
                            try:
                                r = c.post(f"{url}/v1/chat/completions",
                                           json={"model": "coder", "messages": [{"role": "user", "content": "x"}]})
                                if r.status_code != 200:
                                    failures.append((r.status_code, r.text[:300]))
                            except httpx.HTTPError as exc:
                                failures.append(repr(exc))
                            count[0] += 1
                            time.sleep(0.05)
                except BaseException as exc:
                    failures.append(f"load thread died: {exc!r}")

            # the replacement of the coders cannot start (a flag its engine rejects, no restarts)
            ref.write_text(body + "servers:\n  coder: {extra_args: [--no-such-flag], max_restarts: 0}\n")
            broken = load_profile(ref)
            t = threading.Thread(target=load)
            t.start()
            events: list[str] = []
            try:
                with open_fleet(broken, backend="slurm") as fleet2:
                    res2 = up(fleet2, profile_ref=str(ref), timeout=90, poll=0.3, renew=True, on_event=events.append)
            finally:
                done.set()
                t.join()
            assert sorted(r.job for r in res2.submitted) == ["coders", "misc"], events
            assert any("did not start" in e and "keep serving" in e for e in events), events
            # the old coder tasks still run and serve; misc was renewed normally
            alive = ids_in_queue([old["coder-0"], old["coder-1"]])
            assert set(alive) == {old["coder-0"], old["coder-1"]}, (alive, events)
            assert count[0] > 20 and failures == [], (count, failures[:5])
            new = {s.name: s for s in collect_status(fleet).servers}
            assert new["math"].job_id != old["math"] and new["math"].state == ServerState.READY
            assert new["coder-0"].state in (ServerState.FAILED, ServerState.GONE)  # the latest submission failed; up would retry it
        finally:
            down(fleet)


@pytest.mark.ssh
def test_options_are_refused_before_anything_is_submitted(slurm_cluster, sshd_server, tmp_path):
    """--proxy local with a fleet on a login node: refused with the fix, and no job reaches the queue."""
    ref = demo(tmp_path, "remote", cluster_extra=(
        f"  ssh: {{host: 127.0.0.1, port: {sshd_server.port}, user: {sshd_server.user}, "
        f"key_file: {sshd_server.key_file}, known_hosts: {sshd_server.known_hosts}}}\n"
        f"  slurm_conf: {slurm_cluster.env()['SLURM_CONF']}\n"))
    r = cli("up", "--profile", str(ref), "--proxy", "local", "--no-wait")
    assert r.exit_code == 1, r.output
    assert "--proxy local runs the proxy on this machine" in r.output and "nothing was submitted" in r.output
    assert "--proxy slurm" in r.output
    assert state_of(tmp_path, "remote") is None
    names = LocalRunner().run(["squeue", "--noheader", "--format=%j"]).stdout.split()
    assert "biofleet-remote-coders" not in names and "biofleet-remote-misc" not in names
