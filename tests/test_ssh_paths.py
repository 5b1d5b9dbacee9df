"""SSH failure paths against real sshd processes on loopback: links that drop, channels that
are refused, hosts that never answer, `~`/`$HOME` in remote paths, login nodes without SFTP."""

from __future__ import annotations

import logging
import os
import pwd
import socket
import stat
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from test_runner_ssh import _Handler, connect, serve_http

from biofleet.remote.base import CommandError, ConnectionFailed
from biofleet.remote.local import LocalRunner
from biofleet.remote.ssh import SSHRunner

pytestmark = pytest.mark.ssh


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def run_in_thread(fn):
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


# ---------------------------------------------------------------------------- the link drops


@pytest.mark.parametrize("check", [True, False])
def test_link_dropping_mid_command_is_an_error_then_the_runner_reconnects(own_sshd, tmp_path, check, http_port):
    server = own_sshd()
    runner = connect(server)
    tunnel = httpx.Client(transport=runner.http_transport(), timeout=5)
    try:
        # An SFTP session and a pooled tunnel connection are open on the link too.
        runner.write_text(str(tmp_path / "before"), "x")
        assert tunnel.get(f"http://127.0.0.1:{http_port}/").text == "hello /"
        started = tmp_path / "started"
        # The command runs past the moment the link drops (and then ends by itself).
        t, box = run_in_thread(lambda: runner.run(["sh", "-c", 'touch "$1"; sleep 8; echo done', "sh", str(started)],
                                                  timeout=60, check=check))
        wait_for(started.exists, 30, "the remote command to start")
        assert server.kill_sessions()
        t.join(10)
        assert not t.is_alive(), "run() hung after the SSH link dropped"
        # Never reported as a result, not even with check=False: nobody knows whether it finished.
        assert "result" not in box, box
        err = box["error"]
        assert isinstance(err, ConnectionFailed), repr(err)
        msg = str(err)
        assert f"127.0.0.1:{server.port}" in msg and "sleep 8" in msg and "dropped" in msg
        assert "unknown" in msg and "reconnect" in msg
        # Same runner object: files, commands and the tunnel work again over a new connection.
        assert runner.read_text(str(tmp_path / "before")) == "x"
        assert runner.run(["echo", "again"]).stdout == "again\n"
        runner.write_text(str(tmp_path / "after"), "y")
        assert runner.read_text(str(tmp_path / "after")) == "y"
        assert tunnel.get(f"http://127.0.0.1:{http_port}/").text == "hello /"
    finally:
        tunnel.close()
        runner.close()


def test_login_node_down_then_back(own_sshd, tmp_path):
    server = own_sshd()
    runner = connect(server)
    try:
        (tmp_path / "f").write_text("hello")
        assert runner.read_text(str(tmp_path / "f")) == "hello"
        server.stop()
        for op in (lambda: runner.run(["true"]), lambda: runner.exists(str(tmp_path / "f")),
                   lambda: runner.read_text(str(tmp_path / "f"))):
            t0 = time.monotonic()
            with pytest.raises(ConnectionFailed) as err:
                op()
            assert time.monotonic() - t0 < 10
            msg = str(err.value)
            assert f"127.0.0.1:{server.port}" in msg and "lost" in msg and "refused" in msg, msg
        with (httpx.Client(transport=runner.http_transport(), timeout=5) as client,
              pytest.raises(httpx.ConnectError, match=f"127.0.0.1:{server.port}")):
            client.get("http://127.0.0.1:9/health")
        server.start()
        assert runner.run(["echo", "back"]).stdout == "back\n"
        assert runner.read_text(str(tmp_path / "f")) == "hello"
    finally:
        runner.close()


def test_command_killed_on_the_login_node_is_not_a_result(own_sshd):
    # The link stays up but the remote command dies of a signal: sshd sends no exit status.
    server = own_sshd()
    with connect(server) as runner:
        for check in (True, False):
            with pytest.raises(CommandError) as err:
                runner.run(["sh", "-c", "kill -9 $$"], check=check)
            assert not isinstance(err.value, ConnectionFailed)
            assert "no exit status" in str(err.value) and "signal" in str(err.value)
        assert runner.run(["true"]).returncode == 0


# ---------------------------------------------------------------------------- channels refused


def test_no_sessions_allowed_is_a_clear_error(own_sshd, tmp_path):
    server = own_sshd(extra=("MaxSessions 0",))
    with connect(server) as runner:
        for op in (lambda: runner.run(["true"]), lambda: runner.exists(str(tmp_path)),
                   lambda: runner.write_text(str(tmp_path / "x"), "x")):
            with pytest.raises(CommandError) as err:
                op()
            msg = str(err.value)
            assert f"127.0.0.1:{server.port}" in msg and "refused to open a session" in msg, msg
            assert "MaxSessions" in msg and "admins" in msg
        assert not (tmp_path / "x").exists()


class _KeepAliveHandler(_Handler):
    protocol_version = "HTTP/1.1"  # keep-alive: the tunnel's pool keeps the connection open


@pytest.fixture
def http_port():
    with serve_http(_KeepAliveHandler) as port:
        yield port


def test_tunnel_refused_by_the_login_node(own_sshd, http_port):
    server = own_sshd(extra=("AllowTcpForwarding no",))
    with connect(server) as runner:
        assert runner.run(["echo", "commands work"]).stdout == "commands work\n"
        with (httpx.Client(transport=runner.http_transport(), timeout=5) as client,
              pytest.raises(httpx.ConnectError) as err):
            client.get(f"http://127.0.0.1:{http_port}/health")
        msg = str(err.value)
        assert f"127.0.0.1:{http_port}" in msg and f"127.0.0.1:{server.port}" in msg
        assert "AllowTcpForwarding" in msg and "admins" in msg


# ---------------------------------------------------------------------------- connect timeouts


def test_port_that_never_speaks_ssh(sshd_server):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the TCP handshake; nobody ever sends a byte
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(ConnectionFailed) as err:
            SSHRunner("127.0.0.1", port=port, key_file=sshd_server.key_file,
                      known_hosts=sshd_server.known_hosts, connect_timeout=1)
        assert time.monotonic() - t0 < 10
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "within 1s" in msg and "SSH" in msg, msg


def test_port_that_never_accepts(sshd_server):
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        # Fill the accept queue: Linux then drops further SYNs, so a connect() waits for its timeout.
        fillers = []
        try:
            for _ in range(4):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                fillers.append(s)
            time.sleep(0.2)
            t0 = time.monotonic()
            with pytest.raises(ConnectionFailed) as err:
                SSHRunner("127.0.0.1", port=port, key_file=sshd_server.key_file,
                          known_hosts=sshd_server.known_hosts, connect_timeout=1)
            assert time.monotonic() - t0 < 10
        finally:
            for s in fillers:
                s.close()
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "timed out after 1s" in msg, msg


# ---------------------------------------------------------------------------- ~ and $HOME


@pytest.fixture(params=["local", "sftp", "shell"])
def runner_and_home(request, sshd_server, tmp_path, monkeypatch):
    """A runner and the home directory its `~` must mean (the remote user's home for SSH)."""
    if request.param == "local":
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        (tmp_path / "home").mkdir()
        yield LocalRunner(), str(tmp_path / "home")
        return
    server = sshd_server if request.param == "sftp" else request.getfixturevalue("sshd_no_sftp")
    with connect(server) as runner:
        # sshd runs our user's sessions in the real home from the password database.
        yield runner, pwd.getpwuid(os.getuid()).pw_dir


@pytest.mark.parametrize("prefix", ["~", "$HOME", "${HOME}"])
def test_home_in_paths_means_the_remote_home(runner_and_home, prefix):
    runner, home = runner_and_home
    name = f".biofleet-test-{uuid.uuid4().hex[:10]}"  # never touches anything but this directory
    real = Path(home) / name
    try:
        runner.mkdir(f"{prefix}/{name}/d")
        runner.write_text(f"{prefix}/{name}/d/f", "hi", mode=0o600)
        assert (real / "d" / "f").read_text() == "hi"
        assert stat.S_IMODE((real / "d" / "f").stat().st_mode) == 0o600
        assert runner.read_text(f"{prefix}/{name}/d/f") == "hi"
        assert runner.exists(f"{prefix}/{name}/d/f")
        assert runner.listdir(f"{prefix}/{name}/d") == ["f"]
        runner.remove(f"{prefix}/{name}/d/f")
        assert not (real / "d" / "f").exists()
        runner.rmtree(f"{prefix}/{name}")
        assert not real.exists()
        # No literal "~" or "$HOME" directory appeared anywhere.
        for where in (Path(home), Path.cwd()):
            assert not (where / "~").exists() and not (where / "$HOME").exists() and not (where / "${HOME}").exists()
    finally:
        if real.exists():
            import shutil

            shutil.rmtree(real)


def test_other_users_home_is_refused(runner_and_home):
    runner, _ = runner_and_home
    with pytest.raises(ValueError, match="~someone"):
        runner.exists("~someone/x")


# ---------------------------------------------------------------------------- no SFTP on the login node


def test_without_sftp_files_go_through_commands_and_it_is_said_once(sshd_no_sftp, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="biofleet")
    with connect(sshd_no_sftp) as runner:
        base = str(tmp_path / "fleet")
        runner.mkdir(base, mode=0o700)
        assert stat.S_IMODE(os.stat(base).st_mode) == 0o700
        runner.write_text(f"{base}/a", "one\n")
        runner.write_text(f"{base}/a", "two\n")
        assert runner.read_text(f"{base}/a") == "two\n"
        with pytest.raises(FileNotFoundError):
            runner.read_text(f"{base}/missing")
        with pytest.raises(FileNotFoundError):
            runner.listdir(f"{base}/missing")
        odd = "sp ace;$(x)\n'q'"
        runner.write_text(f"{base}/{odd}", "odd")
        assert runner.listdir(base) == sorted(["a", odd])
        assert runner.read_text(f"{base}/{odd}") == "odd"
        runner.remove(f"{base}/{odd}")
        runner.remove(f"{base}/{odd}")
        assert not runner.exists(f"{base}/{odd}")
        runner.rmtree(base)
        assert not os.path.exists(base)
    said = [r.getMessage() for r in caplog.records if "SFTP" in r.getMessage()]
    assert len(said) == 1, said
    assert f"127.0.0.1:{sshd_no_sftp.port}" in said[0] and "Subsystem sftp" in said[0] and "admins" in said[0]


def test_without_sftp_secrets_never_reach_a_command_line(sshd_no_sftp, tmp_path):
    # The no-SFTP sshd records every command it is asked to run (its ForceCommand logs
    # SSH_ORIGINAL_COMMAND before running it): a secret must travel on stdin only.
    # (That the file is never readable by others while written: test_ssh_sets_mode_before_content.)
    secret = f"s3cret-{uuid.uuid4().hex}"
    path = str(tmp_path / "secrets" / "token")
    with connect(sshd_no_sftp) as runner:
        runner.write_text(path, secret, mode=0o600)
        assert runner.read_text(path) == secret
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    commands = Path(sshd_no_sftp.command_log).read_bytes()
    assert path.encode() in commands  # the log really records what ran
    assert secret.encode() not in commands
