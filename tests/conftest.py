"""Shared fixtures: a real throwaway SLURM cluster and a real sshd, both on loopback.

Both are session-scoped (booted once) and end their processes by PID at teardown.
When SLURM/munge/sshd are not installed, tests that need them FAIL with a message
pointing at scripts/install-test-deps.sh; set BIOFLEET_ALLOW_SKIP_SLURM=1 to skip instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ALLOW_SKIP_ENV = "BIOFLEET_ALLOW_SKIP_SLURM"
SSHD = "/usr/sbin/sshd"


def _missing(what: str) -> None:
    msg = f"{what} not installed: run `sudo bash scripts/install-test-deps.sh` (or set {ALLOW_SKIP_ENV}=1 to skip)"
    if os.environ.get(ALLOW_SKIP_ENV) == "1":
        pytest.skip(msg)
    pytest.fail(msg, pytrace=False)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running TestCluster (10 T4 nodes, 1 H100 node, 2 CPU nodes); SLURM_CONF points at it."""
    from biofleet.testcluster import TestCluster, missing_programs

    missing = missing_programs()
    if missing:
        _missing("SLURM/munge (" + ", ".join(missing) + ")")
    # Short base path: slurmd puts unix sockets under its spool dir, and those paths max out at 108 bytes.
    base = tmp_path_factory.mktemp("slurm")
    cluster = TestCluster(base)
    t0 = time.monotonic()
    cluster.start()
    cluster.boot_seconds = time.monotonic() - t0
    old = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env())
    try:
        yield cluster
    finally:
        cluster.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


@dataclass(frozen=True)
class SSHServer:
    host: str
    port: int
    user: str
    key_file: str
    known_hosts: str
    host_public_key: str
    pid: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory):
    """A real OpenSSH server on a free loopback port that accepts one generated key for the current user."""
    if not Path(SSHD).exists() or shutil.which("ssh-keygen") is None:
        _missing("openssh-server (sshd, ssh-keygen)")
    d = tmp_path_factory.mktemp("sshd")
    os.chmod(d, 0o700)
    user = os.environ.get("USER") or __import__("getpass").getuser()
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"biofleet-test-{name}",
                        "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    # sshd's privilege-separation directory; Debian creates it from the service unit, which never ran here.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    config = d / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress 127.0.0.1:{port}",
                f"HostKey {d / 'host_key'}",
                f"PidFile {d / 'sshd.pid'}",
                # Keys live in this temp dir, not in the user's ~/.ssh, so the test never touches a real account.
                f"AuthorizedKeysFile {d / 'authorized_keys'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                # pytest's temp dirs are not laid out the way StrictModes wants (owner/permissions of parents).
                "StrictModes no",
                "UsePAM no",
                "Subsystem sftp internal-sftp",
                "AllowTcpForwarding yes",
                "LogLevel ERROR",
            ]
        )
        + "\n"
    )
    log = open(d / "sshd.log", "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited with {proc.returncode}: {(d / 'sshd.log').read_text()}", pytrace=False)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("sshd did not start listening within 10 s", pytrace=False)
            time.sleep(0.05)
    host_pub = (d / "host_key.pub").read_text().split()
    known_hosts = d / "known_hosts"
    # Non-default ports are recorded as [host]:port in known_hosts, which is what paramiko looks up.
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    try:
        yield SSHServer("127.0.0.1", port, user, str(d / "user_key"), str(known_hosts), " ".join(host_pub[:2]), proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
