"""Runners against the real thing: SSHRunner through a real sshd on loopback, LocalRunner alongside."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from biofleet.backends.base import JobState
from biofleet.backends.slurm import Slurm
from biofleet.remote.base import CommandError, ConnectionFailed, FileTooLarge, Runner, UnknownHostError
from biofleet.remote.local import LocalRunner
from biofleet.remote.ssh import SSHRunner

pytestmark = pytest.mark.ssh


def connect(server) -> SSHRunner:
    return SSHRunner(server.host, user=server.user, port=server.port, key_file=server.key_file,
                     known_hosts=server.known_hosts)


@pytest.fixture(scope="module")
def ssh(sshd_server):
    with connect(sshd_server) as runner:
        yield runner


@pytest.fixture(scope="module")
def ssh_no_sftp(sshd_no_sftp):
    with connect(sshd_no_sftp) as runner:
        yield runner


@pytest.fixture(params=["local", "ssh", "ssh-no-sftp"])
def any_runner(request):
    """The same contract three ways: here, over SSH with SFTP, over SSH where files go through commands."""
    if request.param == "local":
        return LocalRunner()
    return request.getfixturevalue("ssh" if request.param == "ssh" else "ssh_no_sftp")


# ---------------------------------------------------------------------------- both runners, one contract


def test_protocol(any_runner):
    assert isinstance(any_runner, Runner)


def test_argv_is_quoted_not_shell_parsed(any_runner, tmp_path):
    marker = tmp_path / "pwned"
    nasty = f"a b; touch {marker}; $(touch {marker}) `x` 'q' \"dq\""
    result = any_runner.run(["printf", "%s\\n", nasty])
    assert result.stdout == nasty + "\n"
    assert result.returncode == 0
    assert not marker.exists()


def test_failure_carries_context(any_runner):
    with pytest.raises(CommandError) as err:
        any_runner.run(["sh", "-c", "echo out; echo line1 >&2; echo boom >&2; exit 3"])
    e = err.value
    assert (e.returncode, e.stdout, e.stderr) == (3, "out\n", "line1\nboom\n")
    assert e.argv[0] == "sh"
    assert "exited with 3" in str(e) and str(e).rstrip().endswith("boom")
    # check=False hands the result back instead.
    r = any_runner.run(["sh", "-c", "exit 4"], check=False)
    assert r.returncode == 4


def test_output_after_the_exit_status_is_kept(any_runner):
    # The command exits at once; a child still holding its stdout/stderr writes 0.3 s later.
    # Over SSH the exit status arrives first: the runner must read on until the channel closes.
    r = any_runner.run(["sh", "-c", "(sleep 0.3; echo late >&2; echo tail) & echo first; exit 3"], check=False)
    assert (r.returncode, r.stdout, r.stderr) == (3, "first\ntail\n", "late\n")


def test_timeout(any_runner):
    t0 = time.monotonic()
    with pytest.raises(CommandError, match=r"timed out after 0\.5s"):
        any_runner.run(["sleep", "5"], timeout=0.5)
    assert time.monotonic() - t0 < 4


def test_env_is_passed(any_runner):
    r = any_runner.run(["sh", "-c", 'echo "$BF_A|$BF_B"'], env={"BF_A": "x y", "BF_B": "$(nope)"})
    assert r.stdout == "x y|$(nope)\n"
    with pytest.raises(ValueError):
        any_runner.run(["true"], env={"BAD NAME": "1"})


def test_command_not_found(any_runner):
    with pytest.raises(CommandError) as err:
        any_runner.run(["biofleet-no-such-command"])
    assert err.value.returncode == 127


def test_files(any_runner, tmp_path):
    base = str(tmp_path / "fleet" / "deep")
    any_runner.mkdir(base)
    secret = f"{base}/secrets/token"
    any_runner.write_text(secret, "s3cret\n", mode=0o600)
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert any_runner.read_text(secret) == "s3cret\n"
    any_runner.write_text(f"{base}/a.txt", "one")
    any_runner.write_text(f"{base}/a.txt", "two")  # atomic replace of an existing file
    assert any_runner.read_text(f"{base}/a.txt") == "two"
    assert stat.S_IMODE(os.stat(f"{base}/a.txt").st_mode) == 0o644
    # No temp files are left behind by the atomic writes.
    assert any_runner.listdir(base) == ["a.txt", "secrets"]
    assert any_runner.exists(f"{base}/a.txt")
    any_runner.remove(f"{base}/a.txt")
    any_runner.remove(f"{base}/a.txt")  # already gone: fine
    assert not any_runner.exists(f"{base}/a.txt")
    any_runner.rmtree(str(tmp_path / "fleet"))
    assert not any_runner.exists(str(tmp_path / "fleet"))
    assert any_runner.which("sh") and not any_runner.which("biofleet-no-such-command")


def test_read_text_is_bounded_and_never_blocks(any_runner, tmp_path):
    path = tmp_path / "state.json"
    path.write_bytes(b"x" * 1000)
    assert any_runner.read_text(str(path), 1000) == "x" * 1000
    with pytest.raises(FileTooLarge, match=r"state\.json is larger than 999 bytes"):
        any_runner.read_text(str(path), 999)
    with pytest.raises(FileNotFoundError):
        any_runner.read_text(str(tmp_path / "missing"))
    # A FIFO someone left where a file is expected: refused at once, not a hang waiting for a writer.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(OSError, match="not a regular file"):
        any_runner.read_text(str(fifo))
    with pytest.raises(OSError, match="not a regular file"):
        any_runner.read_range(str(fifo), 0, 10)
    assert time.monotonic() - t0 < 10


def test_read_range(any_runner, tmp_path, request):
    path = str(tmp_path / "server.log")
    (tmp_path / "server.log").write_bytes(b"0123456789")
    got = [(c.text, c.start, c.end, c.size) for c in (
        any_runner.read_range(path, -4, 4), any_runner.read_range(path, 3, 2),
        any_runner.read_range(path, -50, 5), any_runner.read_range(path, 20, 5), any_runner.read_range(path, 4, 0))]
    assert got == [("6789", 6, 10, 10), ("34", 3, 5, 10), ("01234", 0, 5, 10), ("", 10, 10, 10), ("", 4, 4, 10)]
    if request.node.callspec.params["any_runner"] != "ssh-no-sftp":  # commands decode with replacement
        (tmp_path / "server.log").write_bytes("ab\u00e9".encode())  # é is two bytes: cut by a 3-byte span
        first = any_runner.read_range(path, 0, 3)
        assert (first.text, first.end) == ("ab", 2)  # the cut character waits for the next read
        second = any_runner.read_range(path, first.end, 10)
        assert (second.text, second.end) == ("\u00e9", 4)


@pytest.mark.parametrize("which", ["ssh", "ssh_no_sftp"])
def test_ssh_sets_mode_before_content(which, request, tmp_path):
    # Watch the file while the SSH runner writes a big secret: it must never be group/world readable
    # (over SFTP, and with the shell commands used where the login node has no SFTP).
    ssh = request.getfixturevalue(which)
    path = str(tmp_path / "big.key")
    seen = []
    started, stop = threading.Event(), threading.Event()

    def watch():
        while True:
            for name in os.listdir(tmp_path):
                try:
                    seen.append(stat.S_IMODE(os.stat(tmp_path / name).st_mode))
                except FileNotFoundError:
                    pass
            started.set()
            if stop.is_set():  # one last look after the write, so the final file is always seen
                return

    t = threading.Thread(target=watch)
    t.start()
    started.wait(5)
    try:
        ssh.write_text(path, "k" * 2_000_000, mode=0o600)
    finally:
        stop.set()
        t.join()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert seen and all(m & 0o077 == 0 for m in seen)


# ---------------------------------------------------------------------------- SSH: host keys and auth


def test_unknown_host_is_refused_with_instructions(sshd_server, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(UnknownHostError) as err:
        SSHRunner(sshd_server.host, user=sshd_server.user, port=sshd_server.port,
                  key_file=sshd_server.key_file, known_hosts=str(empty))
    msg = str(err.value)
    assert f"ssh-keyscan -p {sshd_server.port} {sshd_server.host} >> ~/.ssh/known_hosts" in msg
    assert "known_hosts:" in msg and "--trust-new-host" in msg
    assert empty.read_text() == ""


def test_trust_new_host_records_key(sshd_server, tmp_path):
    kh = tmp_path / "kh"
    with SSHRunner(sshd_server.host, user=sshd_server.user, port=sshd_server.port,
                   key_file=sshd_server.key_file, known_hosts=str(kh), allow_unknown_host=True) as r:
        assert r.run(["echo", "hi"]).stdout == "hi\n"
    assert sshd_server.host_public_key.split()[1] in kh.read_text()
    # Next time the host is known: no opt-in needed.
    with SSHRunner(sshd_server.host, user=sshd_server.user, port=sshd_server.port,
                   key_file=sshd_server.key_file, known_hosts=str(kh)) as r:
        assert r.run(["true"]).returncode == 0


def test_changed_host_key_is_refused(sshd_server, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    pub = (tmp_path / "other.pub").read_text().split()
    kh = tmp_path / "kh"
    kh.write_text(f"[{sshd_server.host}]:{sshd_server.port} {pub[0]} {pub[1]}\n")
    with pytest.raises(UnknownHostError, match="does NOT match"):
        SSHRunner(sshd_server.host, user=sshd_server.user, port=sshd_server.port,
                  key_file=sshd_server.key_file, known_hosts=str(kh))


def test_bad_key_is_a_clear_error(sshd_server, tmp_path):
    bad = tmp_path / "bad_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(bad)], check=True)
    with pytest.raises(ConnectionFailed) as err:
        SSHRunner(sshd_server.host, user=sshd_server.user, port=sshd_server.port,
                  key_file=str(bad), known_hosts=sshd_server.known_hosts)
    msg = str(err.value)
    assert "authentication failed" in msg
    assert f"{sshd_server.host}:{sshd_server.port}" in msg and str(bad) in msg


def test_missing_key_file(sshd_server, tmp_path):
    with pytest.raises(ConnectionFailed, match="key file not found"):
        SSHRunner(sshd_server.host, user=sshd_server.user, port=sshd_server.port,
                  key_file=str(tmp_path / "nope"), known_hosts=sshd_server.known_hosts)


def test_connection_refused(sshd_server):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionFailed, match=f"127.0.0.1:{port}"):
        SSHRunner("127.0.0.1", port=port, key_file=sshd_server.key_file, known_hosts=sshd_server.known_hosts)


# ---------------------------------------------------------------------------- SSH: HTTP tunnel


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for i in range(3):
                self.wfile.write(f"data: {i}\n\n".encode())
                self.wfile.flush()
            return
        body = f"hello {self.path}".encode()
        self.send_response(200 if self.path != "/health" else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextmanager
def serve_http(handler=_Handler):
    """A real HTTP server on a loopback port (yielded) for the tunnel to reach."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_server():
    with serve_http() as port:
        yield port


def test_http_transport_through_tunnel(ssh, http_server):
    assert LocalRunner().http_transport() is None
    with httpx.Client(transport=ssh.http_transport(), timeout=5) as client:
        for _ in range(3):  # connections are reused through the pool
            r = client.get(f"http://127.0.0.1:{http_server}/v1/models")
            assert (r.status_code, r.text) == (200, "hello /v1/models")
        assert client.get(f"http://127.0.0.1:{http_server}/health").status_code == 503
        assert client.post(f"http://127.0.0.1:{http_server}/echo", content=b"x" * 100_000).content == b"x" * 100_000
        with client.stream("GET", f"http://127.0.0.1:{http_server}/stream") as resp:
            assert "".join(resp.iter_text()) == "data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_http_transport_unreachable(ssh):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (httpx.Client(transport=ssh.http_transport(), timeout=5) as client,
          pytest.raises(httpx.ConnectError, match=f"127.0.0.1:{port}")):
        client.get(f"http://127.0.0.1:{port}/health")


# ---------------------------------------------------------------------------- SSH + SLURM


@pytest.mark.slurm
def test_slurm_over_ssh(ssh, slurm_cluster, tmp_path):
    env = slurm_cluster.env()  # the remote shell does not inherit our environment: pass SLURM_CONF
    r = ssh.run(["squeue", "--noheader"], env=env)
    assert r.returncode == 0
    slurm = Slurm(ssh, env=env)
    path = str(tmp_path / "remote.sh")
    ssh.write_text(path, "#!/bin/bash\nsleep 300\n", mode=0o755)
    job = slurm.submit(path, extra_args=["-p", "cpuspot", "-J", "via ssh", "-o", "/dev/null"])
    try:
        deadline = time.monotonic() + 20
        while True:
            info = slurm.queue([job]).get(job)
            if info and info.state is JobState.RUNNING:
                break
            assert time.monotonic() < deadline, f"job {job} not running: {info}"
            time.sleep(0.2)
        assert info.name == "via ssh" and info.nodes and info.nodes.startswith("cpu-")
    finally:
        slurm.cancel([job])
    slurm.wait_gone([job], timeout=20)
