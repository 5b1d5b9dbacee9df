"""Where commands run: this machine (:class:`LocalRunner`) or a login node over SSH (:class:`SSHRunner`).

This is the one seam between biofleet and the machine SLURM lives on. The
scheduler and the fleet code only see the :class:`Runner` protocol, so they do
not know (or care) which one they were given.

Errors::

    BiofleetError
    └── CommandError            a command failed, timed out, or could not be started
        └── (SSH) ConnectionFailed   the login node could not be reached or refused us
            └── UnknownHostError     the host key is not in known_hosts (refused on purpose)
"""

from __future__ import annotations

import os
import posixpath
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import httpx

from biofleet.errors import BiofleetError

# ---------------------------------------------------------------------------- results and errors


@dataclass(frozen=True)
class CompletedCommand:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandError(BiofleetError):
    """A command failed. Carries everything needed to understand why."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stdout: str = "",
        stderr: str = "",
        *,
        reason: str | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.reason = reason
        super().__init__(self._message())

    def _message(self) -> str:
        cmd = shlex.join(self.argv) if self.argv else "(no command)"
        if self.reason:
            head = f"{cmd}: {self.reason}"
        else:
            head = f"{cmd} exited with {self.returncode}"
        tail = [ln for ln in self.stderr.strip().splitlines() if ln.strip()][-5:]
        if not tail:
            tail = [ln for ln in self.stdout.strip().splitlines() if ln.strip()][-3:]
            label = "stdout"
        else:
            label = "stderr"
        if tail:
            return head + f"\n{label}:\n  " + "\n  ".join(tail)
        return head


class ConnectionFailed(CommandError):
    """The SSH connection could not be made (refused, auth failure, DNS, ...)."""

    def __init__(self, message: str) -> None:
        super().__init__((), None, reason=message)

    def _message(self) -> str:
        return self.reason or "connection failed"


class UnknownHostError(ConnectionFailed):
    """The login node's host key is not known; refused unless the user trusts it explicitly."""


# ---------------------------------------------------------------------------- the protocol


@runtime_checkable
class Runner(Protocol):
    """Runs argv lists and touches files on the machine where SLURM's commands work."""

    #: True when commands and files are on this machine (a process started here can reach them).
    is_local: bool

    @property
    def where(self) -> str:
        """Where commands run, for messages ("this machine", "alice@login1:22")."""
        ...

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 30,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> CompletedCommand: ...

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None: ...

    def read_text(self, path: str) -> str: ...

    def mkdir(self, path: str, mode: int = 0o755) -> None: ...

    def exists(self, path: str) -> bool: ...

    def listdir(self, path: str) -> list[str]: ...

    def remove(self, path: str) -> None: ...

    def rmtree(self, path: str) -> None: ...

    def which(self, cmd: str) -> bool: ...

    def http_transport(self) -> httpx.BaseTransport | None: ...

    def close(self) -> None: ...


def _check_argv(argv: Sequence[str]) -> tuple[str, ...]:
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a list of strings, not one string (no shell is used)")
    args = tuple(str(a) for a in argv)
    if not args:
        raise ValueError("argv is empty")
    return args


def _check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    out = {}
    for k, v in (env or {}).items():
        if not k or "=" in k or not (k[0].isalpha() or k[0] == "_") or not all(c.isalnum() or c == "_" for c in k):
            raise ValueError(f"invalid environment variable name {k!r}")
        out[k] = str(v)
    return out


# ---------------------------------------------------------------------------- local


class LocalRunner:
    """Runs commands with subprocess on this machine."""

    is_local = True
    where = "this machine"

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 30,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> CompletedCommand:
        args = _check_argv(argv)
        full_env = {**os.environ, **_check_env(env)} if env else None
        try:
            proc = subprocess.run(
                args, capture_output=True, text=True, timeout=timeout, env=full_env,
                stdin=subprocess.DEVNULL, errors="replace",
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandError(
                args, None, _decode(exc.stdout), _decode(exc.stderr),
                reason=f"timed out after {timeout:g}s",
            ) from None
        except FileNotFoundError:
            raise CommandError(args, 127, reason=f"command not found: {args[0]}") from None
        except PermissionError as exc:
            raise CommandError(args, 126, reason=f"cannot execute: {exc}") from None
        result = CompletedCommand(args, proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise CommandError(args, proc.returncode, proc.stdout, proc.stderr)
        return result

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp creates the file 0600, so a secret is never readable by others, not even for a moment;
        # the final mode is set before any byte is written.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read_text(self, path: str) -> str:
        return Path(path).read_text()

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        Path(path).mkdir(mode=mode, parents=True, exist_ok=True)

    def exists(self, path: str) -> bool:
        return Path(path).exists()

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def remove(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)

    def rmtree(self, path: str) -> None:
        if Path(path).exists():
            shutil.rmtree(path)

    def which(self, cmd: str) -> bool:
        return shutil.which(cmd) is not None

    def http_transport(self) -> httpx.BaseTransport | None:
        return None  # compute nodes are reachable directly (or not at all) from here

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


# ---------------------------------------------------------------------------- SSH


def _trust_hint(host: str, port: int) -> str:
    target = f"-p {port} {host}"
    return (
        "If you trust this host, add its key with:\n"
        f"  ssh-keyscan {target} >> ~/.ssh/known_hosts\n"
        "(check the fingerprint with the cluster admins), or point the profile's "
        "`known_hosts:` at a file that has it, or pass --trust-new-host once."
    )


class SSHRunner:
    """Runs commands on a login node over ONE paramiko connection (plus SFTP for files).

    The host key must be in ``known_hosts`` (default ``~/.ssh/known_hosts``); an unknown
    host raises :class:`UnknownHostError` unless ``allow_unknown_host=True``, in which case
    the key is accepted and appended to the known_hosts file.
    """

    is_local = False

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def __init__(
        self,
        host: str,
        user: str | None = None,
        port: int = 22,
        key_file: str | os.PathLike | None = None,
        known_hosts: str | os.PathLike | None = None,
        allow_unknown_host: bool = False,
        *,
        connect_timeout: float = 15,
    ) -> None:
        import paramiko  # imported here: LocalRunner users never pay for it

        self.host = host
        self.port = int(port)
        self.user = user or _default_user()
        self.key_file = os.path.expanduser(str(key_file)) if key_file else None
        self.known_hosts = os.path.expanduser(str(known_hosts or "~/.ssh/known_hosts"))
        self._lock = threading.Lock()
        self._sftp = None
        where = f"{self.user}@{self.host}:{self.port}"
        key_note = f" with key {self.key_file}" if self.key_file else " (no key_file given: ssh-agent / default keys)"

        client = paramiko.SSHClient()
        if os.path.exists(self.known_hosts):
            try:
                client.load_host_keys(self.known_hosts)
            except (OSError, paramiko.SSHException) as exc:
                raise ConnectionFailed(f"cannot read known_hosts file {self.known_hosts}: {exc}") from None
        if allow_unknown_host:
            client.set_missing_host_key_policy(_TrustAndRecord(self.known_hosts))
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                hostname=host,
                port=self.port,
                username=self.user,
                key_filename=self.key_file,
                timeout=connect_timeout,
                banner_timeout=connect_timeout,
                auth_timeout=connect_timeout,
                # With an explicit key, do not wander through the agent and ~/.ssh: the error stays about that key.
                allow_agent=self.key_file is None,
                look_for_keys=self.key_file is None,
            )
        except paramiko.BadHostKeyException as exc:
            raise UnknownHostError(
                f"host key for {host}:{self.port} does NOT match {self.known_hosts} "
                f"(got {exc.key.get_name()} {exc.key.fingerprint}). This may be an attack or a reinstalled "
                "login node; ask the admins before removing the old entry."
            ) from None
        except paramiko.SSHException as exc:
            # RejectPolicy's message: "Server '[host]:port' not found in known_hosts".
            if "not found in known_hosts" in str(exc):
                raise UnknownHostError(
                    f"refusing to connect to {host}:{self.port}: its host key is not in {self.known_hosts}.\n"
                    + _trust_hint(host, self.port)
                ) from None
            if isinstance(exc, paramiko.AuthenticationException):
                raise ConnectionFailed(
                    f"authentication failed for {where}{key_note}: {exc}. Check the key is in the user's "
                    "~/.ssh/authorized_keys on the login node and that the user name is right."
                ) from None
            raise ConnectionFailed(f"SSH to {where} failed{key_note}: {exc}") from None
        except FileNotFoundError as exc:
            raise ConnectionFailed(f"SSH key file not found: {exc.filename or self.key_file}") from None
        except (socket.timeout, TimeoutError):
            raise ConnectionFailed(f"SSH to {host}:{self.port} timed out after {connect_timeout:g}s") from None
        except OSError as exc:
            raise ConnectionFailed(f"cannot connect to {host}:{self.port}: {exc.strerror or exc}") from None
        self._client = client
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(30)

    # ----- commands
    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 30,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> CompletedCommand:
        args = _check_argv(argv)
        extra = _check_env(env)
        # The remote side always goes through the user's login shell: quote every word.
        # Extra env rides on `env K=V cmd` (visible in the remote ps: never pass secrets this way).
        words = (["env", *(f"{k}={v}" for k, v in extra.items())] if extra else []) + list(args)
        command = shlex.join(words)
        transport = self._transport()
        try:
            chan = transport.open_session(timeout=timeout)
        except Exception as exc:  # paramiko raises SSHException / EOFError on a dead link
            raise CommandError(args, None, reason=f"could not open an SSH channel to {self.host}:{self.port}: {exc}") from None
        try:
            chan.settimeout(timeout)
            chan.exec_command(command)
            chan.shutdown_write()
            out, err = _drain(chan, timeout)
        except (socket.timeout, TimeoutError):
            chan.close()
            raise CommandError(args, None, reason=f"timed out after {timeout:g}s on {self.host}") from None
        rc = chan.recv_exit_status()
        chan.close()
        if rc == 127 and "not found" in err:
            raise CommandError(args, 127, out, err, reason=f"command not found on {self.host}: {args[0]}")
        result = CompletedCommand(args, rc, out, err)
        if check and rc != 0:
            raise CommandError(args, rc, out, err)
        return result

    # ----- files (SFTP)
    def _sftp_client(self):
        with self._lock:
            if self._sftp is None:
                self._sftp = self._client.open_sftp()
            return self._sftp

    def _remote_path(self, path: str) -> str:
        # SFTP does not expand ~ ; resolve it against the remote home once.
        if path == "~" or path.startswith("~/"):
            home = self._sftp_client().normalize(".")
            return posixpath.join(home, path[2:]) if len(path) > 1 else home
        return path

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        sftp = self._sftp_client()
        path = self._remote_path(path)
        parent = posixpath.dirname(path) or "."
        self.mkdir(parent)
        # SFTP's open() cannot pass a mode, so a new file is briefly created with the server's
        # default (0644). Create it inside a private 0700 directory, set the mode, write, and
        # only then rename it into place: nobody else can open it at any moment.
        private = posixpath.join(parent, f".biofleet-tmp-{uuid.uuid4().hex[:12]}")
        sftp.mkdir(private, 0o700)
        tmp = posixpath.join(private, posixpath.basename(path))
        try:
            with sftp.open(tmp, "w") as fh:
                sftp.chmod(tmp, mode)
                fh.set_pipelined(True)
                fh.write(text.encode())
            try:
                sftp.posix_rename(tmp, path)
            except OSError:
                # Servers without the posix-rename extension: plain rename fails if the target exists.
                if self.exists(path):
                    sftp.remove(path)
                sftp.rename(tmp, path)
        finally:
            try:
                sftp.remove(tmp)
            except OSError:
                pass
            try:
                sftp.rmdir(private)
            except OSError:
                pass

    def read_text(self, path: str) -> str:
        with self._sftp_client().open(self._remote_path(path), "r") as fh:
            return fh.read().decode()

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        sftp = self._sftp_client()
        path = self._remote_path(path)
        parts = []
        p = path.rstrip("/")
        while p and not self.exists(p):
            parts.append(p)
            p = posixpath.dirname(p)
        for d in reversed(parts):
            try:
                sftp.mkdir(d, mode)
            except OSError:
                if not self.exists(d):
                    raise

    def exists(self, path: str) -> bool:
        try:
            self._sftp_client().stat(self._remote_path(path))
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            if getattr(exc, "errno", None) == 2:
                return False
            raise

    def listdir(self, path: str) -> list[str]:
        return sorted(self._sftp_client().listdir(self._remote_path(path)))

    def remove(self, path: str) -> None:
        try:
            self._sftp_client().remove(self._remote_path(path))
        except FileNotFoundError:
            pass

    def rmtree(self, path: str) -> None:
        sftp = self._sftp_client()
        path = self._remote_path(path)
        if not self.exists(path):
            return
        for entry in sftp.listdir_attr(path):
            child = posixpath.join(path, entry.filename)
            if entry.st_mode is not None and stat.S_ISDIR(entry.st_mode):
                self.rmtree(child)
            else:
                sftp.remove(child)
        sftp.rmdir(path)

    def which(self, cmd: str) -> bool:
        return self.run(["sh", "-c", 'command -v "$1" >/dev/null 2>&1', "sh", cmd], check=False).returncode == 0

    # ----- HTTP through the login node
    def http_transport(self) -> httpx.BaseTransport:
        """An httpx transport whose connections are SSH ``direct-tcpip`` channels from the login node.

        Compute nodes are usually reachable only from inside the cluster; this lets health
        probes and the status command reach them without a VPN or a manual ``ssh -L``.
        """
        return _TunnelTransport(self)

    def open_channel(self, host: str, port: int, timeout: float | None):
        transport = self._transport()
        try:
            return transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
        except Exception as exc:
            raise httpx.ConnectError(f"via {self.host}: cannot reach {host}:{port}: {exc}") from None

    def _transport(self):
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise CommandError((), None, reason=f"the SSH connection to {self.host}:{self.port} is closed")
        return transport

    def close(self) -> None:
        with self._lock:
            if self._sftp is not None:
                try:
                    self._sftp.close()
                except Exception:
                    pass
                self._sftp = None
        self._client.close()

    def __enter__(self) -> SSHRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _default_user() -> str:
    import getpass

    return getpass.getuser()


def _drain(chan, timeout: float) -> tuple[str, str]:
    """Read stdout and stderr until the command ends (both streams, so neither pipe fills up)."""
    import time

    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + timeout
    while True:
        got = False
        while chan.recv_ready():
            out += chan.recv(65536)
            got = True
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
            got = True
        # The server sends all output before the exit status and paramiko buffers in order,
        # so once the status is in and the buffers are empty, everything has been read.
        if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
            break
        if time.monotonic() > deadline:
            raise TimeoutError
        if not got:
            chan.status_event.wait(0.02)
    return out.decode(errors="replace"), err.decode(errors="replace")


class _TrustAndRecord:
    """Missing-host-key policy for an explicit opt-in: accept the key and append it to known_hosts."""

    def __init__(self, known_hosts: str) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname: str, key) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        os.makedirs(os.path.dirname(self.known_hosts) or ".", mode=0o700, exist_ok=True)
        with open(self.known_hosts, "a") as fh:
            fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


# ---------------------------------------------------------------------------- tunnel transport


class _ChannelStream:
    """httpcore network stream over one paramiko channel."""

    def __init__(self, chan) -> None:
        self._chan = chan

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        import httpcore

        self._chan.settimeout(timeout)
        try:
            return self._chan.recv(max_bytes)
        except (socket.timeout, TimeoutError):
            raise httpcore.ReadTimeout(f"read timed out after {timeout}s") from None
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from None

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        import httpcore

        self._chan.settimeout(timeout)
        try:
            self._chan.sendall(buffer)
        except (socket.timeout, TimeoutError):
            raise httpcore.WriteTimeout(f"write timed out after {timeout}s") from None
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from None

    def close(self) -> None:
        self._chan.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        import httpcore

        raise httpcore.ConnectError("HTTPS through the SSH tunnel is not supported (backends speak plain HTTP)")

    def get_extra_info(self, info: str):
        return None


class _ChannelBackend:
    """httpcore network backend: every TCP connection is a direct-tcpip channel from the login node."""

    def __init__(self, runner: SSHRunner) -> None:
        self._runner = runner

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        import httpcore

        try:
            return _ChannelStream(self._runner.open_channel(host, port, timeout))
        except httpx.ConnectError as exc:
            raise httpcore.ConnectError(str(exc)) from None

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        import httpcore

        raise httpcore.ConnectError("unix sockets are not supported through the SSH tunnel")

    def sleep(self, seconds: float) -> None:
        import time

        time.sleep(seconds)


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream) -> None:
        self._stream = stream

    def __iter__(self):
        with _map_httpcore_errors():
            yield from self._stream

    def close(self) -> None:
        if hasattr(self._stream, "close"):
            self._stream.close()


class _map_httpcore_errors:
    """Turn httpcore's exceptions into httpx's, as httpx's own transport does."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        import httpcore

        if exc is None:
            return False
        table = [
            (httpcore.ConnectTimeout, httpx.ConnectTimeout),
            (httpcore.ReadTimeout, httpx.ReadTimeout),
            (httpcore.WriteTimeout, httpx.WriteTimeout),
            (httpcore.PoolTimeout, httpx.PoolTimeout),
            (httpcore.ConnectError, httpx.ConnectError),
            (httpcore.ReadError, httpx.ReadError),
            (httpcore.WriteError, httpx.WriteError),
            (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
            (httpcore.LocalProtocolError, httpx.LocalProtocolError),
            (httpcore.ProtocolError, httpx.ProtocolError),
            (httpcore.TimeoutException, httpx.TimeoutException),
            (httpcore.NetworkError, httpx.NetworkError),
        ]
        for core_exc, httpx_exc in table:
            if isinstance(exc, core_exc):
                raise httpx_exc(str(exc)) from exc
        return False


class _TunnelTransport(httpx.BaseTransport):
    """httpx transport that sends plain-HTTP requests through SSH direct-tcpip channels."""

    def __init__(self, runner: SSHRunner, max_connections: int = 20) -> None:
        import httpcore

        self._pool = httpcore.ConnectionPool(network_backend=_ChannelBackend(runner), max_connections=max_connections)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        import httpcore

        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol("only http:// URLs can be reached through the SSH tunnel")
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _map_httpcore_errors():
            resp = self._pool.handle_request(core_request)
        return httpx.Response(
            status_code=resp.status,
            headers=resp.headers,
            stream=_ResponseStream(resp.stream),
            extensions=resp.extensions,
        )

    def close(self) -> None:
        self._pool.close()
