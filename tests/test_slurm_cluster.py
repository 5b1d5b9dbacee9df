"""The scheduler layer against a real SLURM (the throwaway test cluster from conftest)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from biofleet.backends.base import JobState
from biofleet.backends.slurm import ACCOUNTING_DISABLED, Slurm
from biofleet.devtools.testcluster import TestCluster, TestClusterError
from biofleet.procs import pid_alive, pid_cmdline
from biofleet.remote.base import CompletedCommand
from biofleet.remote.local import LocalRunner

pytestmark = pytest.mark.slurm


class CountingRunner(LocalRunner):
    """LocalRunner that records every argv, to check how many SLURM calls a method makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv, **kw) -> CompletedCommand:
        self.calls.append(tuple(argv))
        return super().run(argv, **kw)


@pytest.fixture
def slurm(slurm_cluster):
    return Slurm(LocalRunner())


@pytest.fixture
def jobdir(tmp_path):
    return tmp_path


def script(d: Path, name: str, body: str) -> str:
    p = d / f"{name}.sh"
    p.write_text("#!/bin/bash\n" + body + "\n")
    return str(p)


def wait_for(pred, timeout: float = 20, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def test_cluster_is_up(slurm_cluster):
    assert slurm_cluster.is_up()
    states = slurm_cluster.node_states()
    assert len(states) == 15
    assert {"t4-01", "t4-10", "h100-01", "l4x4-01", "t4x4-01", "cpu-01", "cpu-02"} <= states.keys()


def test_gpu_job_runs_with_cuda_visible_devices(slurm, jobdir):
    out = jobdir / "gpu.out"
    path = script(jobdir, "gpu", 'echo "node=$SLURMD_NODENAME cuda=${CUDA_VISIBLE_DEVICES:-unset}"\nsleep 300')
    job = slurm.submit(path, extra_args=["-p", "t4flex", "--gres=gpu:t4:1", "-J", "bf-gpu", f"--output={out}"])
    assert job.isdigit()
    try:
        info = wait_for(lambda: (i := slurm.queue([job]).get(job)) and i.state is JobState.RUNNING and i,
                        what="RUNNING")
        assert info.nodes and info.nodes.startswith("t4-")
        assert info.partition == "t4flex" and info.name == "bf-gpu"
        assert info.start_time and info.time_used
        text = wait_for(lambda: out.exists() and out.read_text(), what="job output")
        assert f"node={info.nodes}" in text
        assert "cuda=0" in text
    finally:
        slurm.cancel([job])
    final = slurm.wait_gone([job], timeout=20)
    assert job not in final or final[job].state is JobState.CANCELLED


def test_h100_job_gets_four_gpus(slurm, jobdir):
    out = jobdir / "h100.out"
    path = script(jobdir, "h100", 'echo "cuda=$CUDA_VISIBLE_DEVICES"')
    job = slurm.submit(path, extra_args=["-p", "h100flex", "--gres=gpu:h100:4", f"--output={out}"])
    slurm.wait_gone([job], timeout=20)
    assert wait_for(lambda: out.exists() and out.read_text(), what="output").strip() == "cuda=0,1,2,3"


def test_array_job_and_batched_queue(slurm_cluster, jobdir):
    runner = CountingRunner()
    slurm = Slurm(runner)
    path = script(jobdir, "arr", "sleep 300")
    arr = slurm.submit(path, extra_args=["-p", "t4flex", "--gres=gpu:t4:1", "--array=0-5%2", "-o", "/dev/null"])
    single = slurm.submit(path, extra_args=["-p", "cpuspot", "-o", "/dev/null"])
    try:
        def two_running():
            jobs = slurm.queue([arr, single])
            running = [k for k, v in jobs.items() if v.array_job_id == arr and v.state is JobState.RUNNING]
            return jobs if len(running) == 2 and single in jobs else None

        runner.calls.clear()
        jobs = wait_for(two_running, what="two array tasks running")
        # Every poll is exactly one squeue call, whatever the number of jobs.
        assert all(c[0] == "squeue" for c in runner.calls)
        assert all(any(a == f"--jobs={arr},{single}" for a in c) for c in runner.calls)
        tasks = {k: v for k, v in jobs.items() if v.array_job_id == arr}
        assert sorted(tasks) == [f"{arr}_{t}" for t in range(6)]
        assert sorted(v.array_task_id for v in tasks.values()) == list(range(6))
        pending = [v for v in tasks.values() if v.state is JobState.PENDING]
        assert len(pending) == 4 and all(v.reason == "JobArrayTaskLimit" for v in pending)
        # A single task can be asked for by its own id, even while it is pending in a range.
        one = slurm.queue([f"{arr}_5"])
        assert list(one) == [f"{arr}_5"]
    finally:
        slurm.cancel([arr, single])
    slurm.wait_gone([arr, single], timeout=20)


def test_cancel_by_id_spares_same_named_job(slurm, jobdir):
    path = script(jobdir, "twin", "sleep 300")
    args = ["-p", "cpuspot", "-J", "same-name", "-o", "/dev/null"]
    a = slurm.submit(path, extra_args=args)
    b = slurm.submit(path, extra_args=args)
    try:
        wait_for(lambda: all(i.state is JobState.RUNNING for i in slurm.queue([a, b]).values())
                 and len(slurm.queue([a, b])) == 2, what="both running")
        slurm.cancel([a])
        slurm.wait_gone([a], timeout=20)
        time.sleep(0.5)
        survivor = slurm.queue([b])[b]
        assert survivor.state is JobState.RUNNING and survivor.name == "same-name"
        # Cancelling a job that already ended is not an error.
        slurm.cancel([a])
    finally:
        slurm.cancel([a, b])
    slurm.wait_gone([a, b], timeout=20)


def test_unknown_job_is_absent(slurm):
    assert slurm.queue(["999999"]) == {}
    assert slurm.states(["999999"]) == {}
    slurm.cancel(["999999"])  # not an error


@pytest.fixture(scope="module")
def plain_cluster(slurm_cluster, tmp_path_factory):
    """A second, one-node cluster without accounting, running beside the session's cluster (which has it)."""
    cluster = TestCluster(tmp_path_factory.mktemp("plain"), t4_nodes=0, h100_nodes=0, cpu_nodes=1, accounting=False)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def test_accounting_disabled_returns_empty(plain_cluster, jobdir):
    slurm = Slurm(LocalRunner(), env=plain_cluster.env())
    job = slurm.submit(script(jobdir, "quick", "exit 3"), extra_args=["-p", "cpuspot", "-o", "/dev/null"])
    slurm.wait_gone([job], timeout=20)
    # The real sacct fails on a cluster with AccountingStorageType=accounting_storage/none ...
    raw = LocalRunner().run(["sacct", "-j", job], env=plain_cluster.env(), timeout=10, check=False)
    assert raw.returncode != 0 and ACCOUNTING_DISABLED in raw.stderr.lower()
    # ... which is an empty answer, not an error.
    assert slurm.accounting([job]) == {}
    # Once the job left the queue, nobody knows it: states() leaves it out (the fleet shows it as gone).
    wait_for(lambda: slurm.queue([job]) == {}, timeout=60, what="the job to leave the queue")
    assert slurm.states([job]) == {}


def test_restart_from_the_same_dir(slurm_cluster, tmp_path):
    # A stopped cluster's saved state carries its ClusterName; a new cluster from the same dir must start anyway.
    first = TestCluster(tmp_path, t4_nodes=0, h100_nodes=0, cpu_nodes=1, accounting=False)
    first.start()
    first.stop()
    again = TestCluster(tmp_path, t4_nodes=0, h100_nodes=0, cpu_nodes=1, accounting=False)
    try:
        again.start()
        assert again.is_up() and again.cluster_name != first.cluster_name
    finally:
        again.stop()


def test_too_long_base_dir_is_refused_before_anything_starts(slurm_cluster, tmp_path):
    base = tmp_path / ("d" * 100)
    with pytest.raises(TestClusterError, match="unix socket path"):
        TestCluster(base, t4_nodes=0, h100_nodes=0, cpu_nodes=1).start()
    assert not base.exists()


def test_sacct_reports_jobs_that_left_the_queue(slurm_cluster, jobdir):
    """With accounting, states() falls back to sacct: final state and exit code survive the queue."""
    runner = CountingRunner()
    slurm = Slurm(runner)
    failed = slurm.submit(script(jobdir, "f", "exit 3"),
                          extra_args=["-p", "cpuspot", "-J", "acct-fail", "-o", "/dev/null"])
    cancelled = slurm.submit(script(jobdir, "c", "sleep 300"), extra_args=["-p", "cpuspot", "-o", "/dev/null"])
    arr_body = 'case "$SLURM_ARRAY_TASK_ID" in 0) exit 0;; 1) exit 3;; *) sleep 300;; esac'
    arr = slurm.submit(script(jobdir, "a", arr_body),
                       extra_args=["-p", "t4flex", "--gres=gpu:t4:1", "--array=0-2", "-o", "/dev/null"])
    ids = [failed, cancelled, arr]
    try:
        wait_for(lambda: (q := slurm.queue([cancelled, f"{arr}_2"])) and all(
            i.state is JobState.RUNNING for i in q.values()) and len(q) == 2, what="both sleepers running")
        slurm.cancel([cancelled, f"{arr}_2"])
        # MinJobAge=5 s: the controller forgets ended jobs within seconds; then only sacct knows them.
        wait_for(lambda: slurm.queue(ids) == {}, timeout=60, what="all jobs to leave the queue")
        runner.calls.clear()
        found = slurm.states(ids)
        calls = list(runner.calls)
    finally:
        slurm.cancel(ids)
    # One squeue for all, then one sacct for the ids squeue did not know.
    assert [c[0] for c in calls] == ["squeue", "sacct"]
    assert f"{failed},{cancelled},{arr}" in calls[1]
    assert sorted(found) == sorted([failed, cancelled, f"{arr}_0", f"{arr}_1", f"{arr}_2"])
    assert all(i.source == "sacct" and i.is_terminal for i in found.values())
    # What the fleet status shows for a job that left the queue: state, exit code and node.
    f = found[failed]
    assert (f.state, f.exit_code, f.name) == (JobState.FAILED, "3:0", "acct-fail")
    assert f.nodes and f.nodes.startswith("cpu-")
    assert found[cancelled].state is JobState.CANCELLED
    assert found[cancelled].raw_state.startswith("CANCELLED by ")
    tasks = {k: (v.state, v.exit_code, v.array_job_id) for k, v in found.items() if k.startswith(f"{arr}_")}
    assert tasks == {f"{arr}_0": (JobState.COMPLETED, "0:0", arr), f"{arr}_1": (JobState.FAILED, "3:0", arr),
                     f"{arr}_2": (JobState.CANCELLED, "0:0", arr)}
    # One array task asked for by its own id.
    one = slurm.states([f"{arr}_1"])
    assert list(one) == [f"{arr}_1"] and one[f"{arr}_1"].state is JobState.FAILED
    assert one[f"{arr}_1"].array_task_id == 1 and one[f"{arr}_1"].nodes.startswith("t4-")


def test_two_accounting_clusters_stay_apart(slurm_cluster, tmp_path, jobdir):
    """A second cluster with accounting (a second test session) shares no port, socket, name or
    database with the first, and stopping it leaves nothing running and the first one working."""
    other = TestCluster(tmp_path / "c", t4_nodes=0, h100_nodes=0, cpu_nodes=1)
    pids: dict[str, int] = {}
    other.start()
    try:
        a, b = slurm_cluster, other
        assert a.accounting and b.accounting
        assert a.cluster_name != b.cluster_name
        assert len({a.ctld_port, a.dbd_port, a.db_port, b.ctld_port, b.dbd_port, b.db_port}) == 6
        assert a.db_socket != b.db_socket and a.db_dir != b.db_dir
        # slurmdbd.conf holds the database password: readable by its owner (SlurmUser) only,
        # and the password is on no command line and not in cluster.json.
        st = b.dbd_conf_path.stat()
        assert (st.st_mode & 0o777, st.st_uid) == (0o600, os.geteuid())
        password = next(ln.split("=", 1)[1] for ln in b.dbd_conf_path.read_text().splitlines()
                        if ln.startswith("StoragePass="))
        assert password and password not in b.state_file.read_text()
        pids = b.pids()
        assert {"mariadbd", "slurmdbd", "slurmctld", "slurmd-cpu-01"} <= pids.keys()
        assert all(password not in pid_cmdline(p) for p in pids.values())
        # Job ids restart at 1 in the new cluster; each sacct answers from its own database.
        sb = Slurm(LocalRunner(), env=b.env())
        job = sb.submit(script(jobdir, "b", "exit 3"), extra_args=["-J", "only-in-b", "-o", "/dev/null"])
        sb.wait_gone([job], timeout=20)
        # A job that ends within seconds is first recorded as "allocation" (often still PENDING): the
        # controller sends its full start record on its next 5 s database cycle.
        mine = wait_for(lambda: (i := sb.accounting([job]).get(job)) and i.name == "only-in-b" and i,
                        what="the job's full record in b's accounting")
        assert (mine.state, mine.exit_code) == (JobState.FAILED, "3:0")
        theirs = Slurm(LocalRunner()).accounting([job]).get(job)
        assert theirs is None or theirs.name != "only-in-b"
    finally:
        other.stop()
    assert not any(pid_alive(p) for p in pids.values())
    assert not other.db_dir.exists()
    assert not any(str(other.base_dir) in pid_cmdline(int(p)) for p in os.listdir("/proc") if p.isdigit())
    # The first cluster's accounting still records and answers.
    sa = Slurm(LocalRunner())
    job_a = sa.submit(script(jobdir, "a", "true"), extra_args=["-p", "cpuspot", "-J", "still-a", "-o", "/dev/null"])
    sa.wait_gone([job_a], timeout=20)
    wait_for(lambda: (i := sa.accounting([job_a]).get(job_a)) and i.name == "still-a", what="a's accounting")


def test_failing_job_is_failed_or_gone(slurm, jobdir):
    job = slurm.submit(script(jobdir, "fail", "echo bye; exit 1"), extra_args=["-p", "cpuspot", "-o", "/dev/null"])
    final = slurm.wait_gone([job], timeout=20)
    if job in final:
        assert final[job].state is JobState.FAILED
        assert final[job].reason == "NonZeroExitCode"
    states = slurm.states([job])
    assert job not in states or states[job].state is JobState.FAILED


def test_wait_gone_times_out_on_running_job(slurm, jobdir):
    job = slurm.submit(script(jobdir, "long", "sleep 300"), extra_args=["-p", "cpuspot", "-o", "/dev/null"])
    try:
        with pytest.raises(TimeoutError, match=job):
            slurm.wait_gone([job], timeout=0.5)
    finally:
        slurm.cancel([job])
    slurm.wait_gone([job], timeout=20)


def test_bad_submission_raises_command_error(slurm, jobdir):
    from biofleet.remote.base import CommandError

    with pytest.raises(CommandError) as err:
        slurm.submit(script(jobdir, "x", "true"), extra_args=["-p", "no-such-partition"])
    assert err.value.returncode == 1
    assert "invalid partition" in str(err.value).lower()
    assert "sbatch" in err.value.argv


def test_scancel_refuses_non_ids(slurm):
    with pytest.raises(ValueError):
        slurm.cancel(["--name=same-name"])
