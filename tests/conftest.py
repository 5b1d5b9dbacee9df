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
from proxy_helpers import stack  # noqa: F401 - the proxy tests' fixture, shared from here

ALLOW_SKIP_ENV = "BIOFLEET_ALLOW_SKIP_SLURM"
SSHD = "/usr/sbin/sshd"


def _missing(what: str) -> None:
    msg = f"{what} not installed: run `sudo bash scripts/install-test-deps.sh` (or set {ALLOW_SKIP_ENV}=1 to skip)"
    if os.environ.get(ALLOW_SKIP_ENV) == "1":
        pytest.skip(msg)
    pytest.fail(msg, pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _own_state_home(tmp_path_factory):
    """`biofleet up` records the last profile under $XDG_STATE_HOME, where status, logs and down find it without
    --profile. The suite's fleets must not become the user's: every test (and every CLI it starts) gets its own."""
    old = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("xdg-state"))
    yield
    if old is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = old


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running TestCluster (10 T4 nodes, 1 H100 node, 2 CPU nodes); SLURM_CONF points at it."""
    from biofleet.devtools.testcluster import TestCluster, missing_programs

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


def _sshd_keys(d: Path) -> str:
    """Host and user keys in d (a 0700 temp dir); returns the user name they are for."""
    os.chmod(d, 0o700)
    user = os.environ.get("USER") or __import__("getpass").getuser()
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"biofleet-test-{name}",
                        "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    return user


def _sshd_config(d: Path, port: int, *, sftp: bool = True, extra: tuple[str, ...] = ()) -> Path:
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
                *(["Subsystem sftp internal-sftp"] if sftp else []),
                *extra,
                # After `extra`: sshd keeps the first value it reads for a keyword, so extra lines win.
                "AllowTcpForwarding yes",
                "LogLevel ERROR",
            ]
        )
        + "\n"
    )
    return config


def _launch_sshd(d: Path, config: Path, port: int) -> subprocess.Popen:
    # sshd's privilege-separation directory; Debian creates it from the service unit, which never ran here.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = open(d / "sshd.log", "ab")  # noqa: SIM115 - handed to sshd
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
    return proc


def _sshd_known_hosts(d: Path, port: int) -> tuple[Path, str]:
    host_pub = (d / "host_key.pub").read_text().split()
    known_hosts = d / "known_hosts"
    # Non-default ports are recorded as [host]:port in known_hosts, which is what paramiko looks up.
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    return known_hosts, " ".join(host_pub[:2])


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory):
    """A real OpenSSH server on a free loopback port that accepts one generated key for the current user."""
    if not Path(SSHD).exists() or shutil.which("ssh-keygen") is None:
        _missing("openssh-server (sshd, ssh-keygen)")
    d = tmp_path_factory.mktemp("sshd")
    user = _sshd_keys(d)
    port = _free_port()
    proc = _launch_sshd(d, _sshd_config(d, port), port)
    known_hosts, host_public_key = _sshd_known_hosts(d, port)
    try:
        yield SSHServer("127.0.0.1", port, user, str(d / "user_key"), str(known_hosts), host_public_key, proc.pid)
    finally:
        _stop(proc)


def _descendants(pid: int) -> list[int]:
    """PIDs below pid (children first found, then theirs), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat_line = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat_line.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class OwnSSHD:
    """An sshd of one test's own, so the test may kill its sessions or the whole server and start it again."""

    def __init__(self, d: Path, *, sftp: bool = True, extra: tuple[str, ...] = (), record_commands: bool = False) -> None:
        self.dir = d
        self.user = _sshd_keys(d)
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.command_log = str(d / "commands.log")
        if record_commands:
            # Every command a client asks for is appended to command_log, then run as usual.
            recorder = d / "record-and-run"
            recorder.write_text(f'#!/bin/sh\nprintf "%s\\n" "$SSH_ORIGINAL_COMMAND" >> {self.command_log}\n'
                                'exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"\n')
            recorder.chmod(0o755)
            extra = (*extra, f"ForceCommand {recorder}")
        self.config = _sshd_config(d, self.port, sftp=sftp, extra=extra)
        self.key_file = str(d / "user_key")
        self.known_hosts = str(_sshd_known_hosts(d, self.port)[0])
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = _launch_sshd(self.dir, self.config, self.port)

    def session_pids(self) -> list[int]:
        """The sshd processes serving connections (not the listener, not the users' commands)."""
        assert self.proc is not None
        out = []
        for pid in _descendants(self.proc.pid):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip().startswith("sshd"):
                    out.append(pid)
            except OSError:
                pass
        return out

    def kill_sessions(self) -> list[int]:
        """SIGKILL every sshd process serving a connection, all at once.

        The TCP links drop with no SSH goodbye (no exit status, no channel close): what a crashed
        login node or a cut link looks like. The users' commands are left alone to end by
        themselves: killing a login shell half-way through its startup files can leave their
        locks behind (pyenv's rehash lock stalls every later root login by a minute).
        """
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def stop(self) -> None:
        """Kill the sessions and the listener; the port refuses connections until start()."""
        if self.proc is None:
            return
        self.kill_sessions()
        _stop(self.proc)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()


@pytest.fixture
def own_sshd(tmp_path_factory):
    """A factory: own_sshd(sftp=False, extra=("MaxSessions 0",)) starts a private sshd, stopped at teardown."""
    if not Path(SSHD).exists() or shutil.which("ssh-keygen") is None:
        _missing("openssh-server (sshd, ssh-keygen)")
    servers: list[OwnSSHD] = []

    def start(*, sftp: bool = True, extra: tuple[str, ...] = ()) -> OwnSSHD:
        server = OwnSSHD(tmp_path_factory.mktemp("own-sshd"), sftp=sftp, extra=extra)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.cleanup()


@pytest.fixture(scope="session")
def sshd_no_sftp(tmp_path_factory):
    """A login node without the SFTP subsystem that records every command it runs (in .command_log)."""
    if not Path(SSHD).exists() or shutil.which("ssh-keygen") is None:
        _missing("openssh-server (sshd, ssh-keygen)")
    server = OwnSSHD(tmp_path_factory.mktemp("sshd-no-sftp"), sftp=False, record_commands=True)
    try:
        yield server
    finally:
        server.cleanup()
