"""The lifecycle against the real test SLURM cluster, locally and over a real sshd.

The shipped t4x10 profile runs as-is except for what a machine without GPUs and a
shared filesystem needs: the mock engine (``--engine mock``), loopback addresses,
small memory requests and no conda setup lines.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from biofleet.backends.slurm import Slurm
from biofleet.cli.main import app
from biofleet.fleet import ServerState, collect_status, down, open_fleet, up
from biofleet.profile import load_profile
from biofleet.remote.local import LocalRunner

pytestmark = pytest.mark.slurm

TEST_OVERRIDES = """\
cluster:
  workdir: {workdir}
  setup: ["export PATH={bindir}:$PATH"]
  hf_home: null
  bind_host: 127.0.0.1
  advertise: loopback
  time: "00:30:00"
  cpus_per_task: 1
  mem: 200M
{extra}proxy:
  run: slurm
  partition: cpuspot
  host: 127.0.0.1
  port: null
"""


def make_profile(tmp_path: Path, base: str, name: str, extra: str = "") -> Path:
    p = tmp_path / f"{name}.yaml"
    body = TEST_OVERRIDES.format(workdir=tmp_path / "work", bindir=Path(sys.executable).parent, extra=extra)
    p.write_text(f"extends: {base}\nname: {name}\n{body}")
    return p


def as_mock(profile):
    return profile.model_copy(update={"servers": {k: s.model_copy(update={"engine": "mock"})
                                                  for k, s in profile.servers.items()}})


def wait_for(pred, timeout: float, what: str, poll: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


def test_t4x10_up_status_reconcile_down(slurm_cluster, tmp_path):
    ref = make_profile(tmp_path, "t4x10", "t4x10-test")
    profile = as_mock(load_profile(ref))
    slurm = Slurm(LocalRunner())
    events: list[str] = []
    with open_fleet(profile, backend="auto") as fleet:
        assert fleet.backend == "slurm"
        res = up(fleet, profile_ref=str(ref), timeout=120, on_event=events.append, poll=0.5)
        assert not res.timed_out, "\n".join(events)
        # one array job for the ten T4 nodes, one proxy job
        assert [(r.job, r.tasks, r.array) for r in res.submitted] == [("t4", list(range(10)), True)]
        st = res.status
        assert len(st.servers) == 11 and all(s.state == ServerState.READY for s in st.servers), "\n".join(events)
        # each array task really ran on its own T4 node
        nodes = {s.name: s.node for s in st.servers}
        assert len({nodes[n] for n in nodes if n != "embeddings"}) == 10
        assert nodes["backup"] == nodes["embeddings"]
        assert all(n.startswith("t4-") for n in nodes.values())
        # PENDING/RUNNING/STARTING/READY were reported along the way, per server
        assert any("coder-0: READY" in e for e in events)

        # the proxy job registered its address; requests go through it with the token
        assert st.proxy.state == ServerState.READY and st.proxy.job_id, st.proxy
        # its time limit is watched like the servers' (30 min limit, 30 min margin: announced)
        assert st.proxy.time_left and 0 < st.proxy.ends_in_s <= 1800 and st.proxy.ending_soon, st.proxy
        shown = CliRunner().invoke(app, ["status", "--profile", str(ref), "--backend", "slurm"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, shown.output
        assert f"the proxy job {st.proxy.job_id} ends in" in shown.output and "proxy.time" in shown.output
        token = Path(fleet.paths.token).read_text().strip()
        url = json.loads(Path(fleet.paths.proxy_record).read_text())["url"]
        auth = {"Authorization": f"Bearer {token}"}
        wait_for(lambda: httpx.get(f"{url}/health", headers=auth).status_code == 200, 20, "proxy health 200")
        r = httpx.post(f"{url}/v1/chat/completions", headers=auth,
                       json={"model": "auto", "task_type": "medical", "messages": [{"role": "user", "content": "BRCA1?"}]})
        assert r.status_code == 200 and r.headers["x-biofleet-route"].startswith("bio@")

        # another job with the same NAME (another fleet, another user's script...) must survive down
        other = tmp_path / "other.sbatch"
        other.write_text("#!/bin/bash\n#SBATCH --job-name=biofleet-t4x10-test-t4\n#SBATCH --partition=cpuspot\n"
                         "#SBATCH --mem=10M\n#SBATCH --output=/dev/null\nsleep 300\n")
        other_id = slurm.submit(str(other))

        # cancel one array task behind biofleet's back: status sees it, up resubmits just that task
        victim = next(s for s in st.servers if s.name == "math")
        slurm.cancel([victim.job_id])
        wait_for(lambda: next(s for s in collect_status(fleet).servers if s.name == "math").state in (ServerState.STOPPED, ServerState.GONE),
                 30, "math to stop")
        res2 = up(fleet, profile_ref=str(ref), timeout=120, poll=0.5)
        assert [(r.job, r.tasks) for r in res2.submitted] == [("t4", [4])]
        assert len(res2.kept) == 10 and "math" not in res2.kept
        assert all(s.state == ServerState.READY for s in res2.status.servers)
        assert next(s for s in res2.status.servers if s.name == "math").job_id.endswith("_4")

        d = down(fleet)
        assert sorted(d.cancelled) == sorted({*(r.job_id for r in res2.state.jobs), res.state.proxy.job_id})
        assert not [i for i in slurm.queue(d.cancelled).values() if not i.state.is_terminal]
        assert list(Path(fleet.paths.registry).glob("*.json")) == []
        # the same-named job is untouched
        survivor = slurm.queue([other_id])
        assert survivor and all(i.state.value in ("RUNNING", "PENDING") for i in survivor.values())
        slurm.cancel([other_id])
        assert not down(fleet).had_state  # twice is fine


def test_failed_server_shows_log_tail(slurm_cluster, tmp_path):
    """A server that dies at start makes its task FAILED, with the last lines of its log."""
    p2 = tmp_path / "broken2.yaml"
    p2.write_text(
        f"extends: cpu-demo\nname: broken2\ncluster:\n  workdir: {tmp_path}/work\n"
        f"  setup: ['export PATH={Path(sys.executable).parent}:$PATH']\n"
        "servers:\n  coder: {extra_args: [--no-such-flag]}\n"
    )
    with open_fleet(load_profile(p2), backend="slurm") as fleet:
        try:
            res = up(fleet, profile_ref=str(p2), timeout=60, proxy_mode="none", poll=0.5)
            coder = next(s for s in res.status.servers if s.name == "coder-0")
            # The job ends FAILED; the test cluster keeps accounting, so sacct still says so once it left squeue.
            assert coder.state == ServerState.FAILED, coder
            assert any("--no-such-flag" in line for line in coder.log_tail), coder.log_tail
            assert next(s for s in res.status.servers if s.name == "math").state == ServerState.READY
        finally:
            down(fleet)


@pytest.mark.ssh
def test_lifecycle_over_ssh(slurm_cluster, sshd_server, tmp_path):
    """up/status/down with every SLURM command, file and probe going through one SSH connection."""
    ssh = (f"  ssh: {{host: 127.0.0.1, port: {sshd_server.port}, user: {sshd_server.user}, "
           f"key_file: {sshd_server.key_file}, known_hosts: {sshd_server.known_hosts}}}\n"
           f"  slurm_conf: {slurm_cluster.env()['SLURM_CONF']}\n")
    ref = make_profile(tmp_path, "cpu-demo", "demo-ssh", extra="")
    text = ref.read_text().replace("  mem: 200M\n", "  mem: 200M\n" + ssh)
    ref.write_text(text)
    profile = load_profile(ref)
    with open_fleet(profile) as fleet:
        from biofleet.remote.ssh import SSHRunner

        assert isinstance(fleet.runner, SSHRunner) and fleet.backend == "slurm"
        res = up(fleet, profile_ref=str(ref), timeout=90, poll=0.5)
        assert all(s.state == ServerState.READY for s in res.status.servers), res.status
        assert res.status.proxy.state == ServerState.READY
        mode = fleet.runner.run(["stat", "-c", "%a", fleet.paths.token]).stdout.strip()
        assert mode == "600"
        d = down(fleet)
        assert len(d.cancelled) == 3
        st = collect_status(fleet)
        assert not st.submitted


@pytest.mark.ssh
def test_unknown_host_is_refused_with_a_fix(slurm_cluster, sshd_server, tmp_path):
    from biofleet.remote.base import UnknownHostError

    empty = tmp_path / "known_hosts"
    empty.write_text("")
    ref = tmp_path / "p.yaml"
    ref.write_text(
        "extends: cpu-demo\nname: x\ncluster:\n"
        f"  ssh: {{host: 127.0.0.1, port: {sshd_server.port}, key_file: {sshd_server.key_file}, known_hosts: {empty}}}\n"
    )
    with pytest.raises(UnknownHostError) as ei:
        open_fleet(load_profile(ref))
    assert "ssh-keyscan" in str(ei.value)


def test_renew_before_the_time_limit_without_a_gap(slurm_cluster, tmp_path):
    """A short time limit: status announces it, up --renew replaces every task with no failed request."""
    import threading

    p = tmp_path / "renew.yaml"
    p.write_text(
        f"extends: cpu-demo\nname: renew\nrenew: true\nrenew_margin: '00:30:00'\ncluster:\n  workdir: {tmp_path}/work\n"
        f"  time: '00:10:00'\n  setup: ['export PATH={Path(sys.executable).parent}:$PATH']\n"
    )
    profile = load_profile(p)
    with open_fleet(profile, backend="slurm") as fleet:
        try:
            res = up(fleet, profile_ref=str(p), timeout=60, poll=0.5)
            assert all(s.state == ServerState.READY for s in res.status.servers)
            assert all(s.ending_soon and 0 < s.ends_in_s <= 600 for s in res.status.servers), res.status.servers
            old_ids = {s.name: s.job_id for s in res.status.servers}
            token = Path(fleet.paths.token).read_text().strip()
            url = res.status.proxy.url
            auth = {"Authorization": f"Bearer {token}"}
            wait_for(lambda: httpx.get(f"{url}/health", headers=auth).status_code == 200, 20, "proxy health")

            failures, done, count = [], threading.Event(), [0]

            def load():
                # Every outcome is counted: a connection error is a failure, not the end of the thread.
                try:
                    with httpx.Client(timeout=10) as c:
                        while not done.is_set():
                            try:
                                r = c.post(f"{url}/v1/chat/completions", headers=auth,
                                           json={"model": "coder", "messages": [{"role": "user", "content": "x"}]})
                                if r.status_code != 200:
                                    failures.append(r.status_code)
                            except httpx.HTTPError as exc:
                                failures.append(repr(exc))
                            count[0] += 1
                            time.sleep(0.05)
                except BaseException as exc:
                    failures.append(f"load thread died: {exc!r}")

            t = threading.Thread(target=load)
            t.start()
            events: list[str] = []
            try:
                res2 = up(fleet, profile_ref=str(p), timeout=90, poll=0.5, renew=True, on_event=events.append)
                time.sleep(2)  # requests keep flowing after the old tasks were drained
            finally:
                done.set()
                t.join()
            assert sorted(r.job for r in res2.submitted) == ["coders", "misc"]
            new_ids = {s.name: s.job_id for s in res2.status.servers}
            assert all(new_ids[n] != old_ids[n] for n in old_ids), (old_ids, new_ids)
            assert any("drained" in e for e in events), events
            old_left = [i for i in Slurm(LocalRunner()).queue(list(old_ids.values())).values()
                        if not i.state.is_terminal]
            assert old_left == []
            assert count[0] > 20 and failures == [], (count, failures)
        finally:
            down(fleet)
