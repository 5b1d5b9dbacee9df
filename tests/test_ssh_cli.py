"""`biofleet up/status/down --ssh user@host:port` end to end: the real CLI in a subprocess, a real
sshd, the real test SLURM cluster, and a profile with no `ssh:` section.

--ssh takes no key or known_hosts file, so it uses the user's defaults: HOME points at a
temporary directory whose .ssh/ holds the test key as id_ed25519 and the sshd's host key in
known_hosts (the real ~/.ssh knows neither, so nothing else could have let the CLI in).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_fleet_slurm import make_profile

from biofleet.backends.base import JobState
from biofleet.backends.slurm import Slurm
from biofleet.remote.local import LocalRunner

pytestmark = [pytest.mark.slurm, pytest.mark.ssh]

WORKTREE = Path(__file__).resolve().parent.parent


def test_up_status_down_with_ssh_flag(slurm_cluster, sshd_server, tmp_path):
    home = tmp_path / "home"
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True, mode=0o700)
    shutil.copy(sshd_server.key_file, ssh_dir / "id_ed25519")
    os.chmod(ssh_dir / "id_ed25519", 0o600)
    shutil.copy(sshd_server.key_file + ".pub", ssh_dir / "id_ed25519.pub")
    shutil.copy(sshd_server.known_hosts, ssh_dir / "known_hosts")

    # slurm_conf only points SLURM's commands on the login node at the test cluster.
    ref = make_profile(tmp_path, "cpu-demo", "demo-ssh-cli", extra=f"  slurm_conf: {slurm_cluster.env()['SLURM_CONF']}\n")
    assert "ssh:" not in ref.read_text()
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "SLURM_CONF", "BIOFLEET_PROFILE")}
    env.update(HOME=str(home), XDG_STATE_HOME=str(tmp_path / "state"), PYTHONPATH=str(WORKTREE), COLUMNS="200")
    target = f"{sshd_server.user}@127.0.0.1:{sshd_server.port}"

    def biofleet(*args: str, timeout: float) -> dict:
        cmd = [sys.executable, "-m", "biofleet.cli.main", *args, "--profile", str(ref), "--ssh", target, "--json"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{args[0]} exited with {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return json.loads(proc.stdout)

    up = biofleet("up", "--timeout", "120", timeout=240)
    try:
        assert up["backend"] == "slurm" and not up["timed_out"], up
        st = up["status"]
        assert st["servers"] and all(s["state"] == "READY" for s in st["servers"]), st["servers"]
        assert st["proxy"]["state"] == "READY", st["proxy"]
        job_ids = {r["job_id"] for r in up["submitted"]} | {st["proxy"]["job_id"]}
        assert len(job_ids) == 3  # the coders array, the misc job, the proxy job

        # The jobs really ran on the test cluster's nodes, as SLURM (asked directly) says.
        slurm = Slurm(LocalRunner(), env=slurm_cluster.env())
        queue = slurm.queue(sorted(job_ids))
        assert queue and all(info.state is JobState.RUNNING for info in queue.values()), queue

        status = biofleet("status", timeout=120)
        assert status["ready"] == status["total"] == len(st["servers"]), status
        # Servers show their array task ("12_0"); up recorded the array job ("12").
        shown = {s["job_id"].split("_")[0] for s in status["servers"]} | {status["proxy"]["job_id"]}
        assert shown == job_ids
    finally:
        down = biofleet("down", timeout=240)
    assert set(down["cancelled"]) == job_ids, down
    left = slurm.queue(sorted(job_ids))
    assert all(info.state is JobState.CANCELLED for info in left.values()), left
    after = biofleet("status", timeout=120)
    assert not after["submitted"]
