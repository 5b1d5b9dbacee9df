"""Commands and files on a login node over one paramiko SSH connection."""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import shlex
import socket
import ssl
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TypeVar

# Both imported only where SSH is used: this module is loaded when an SSHRunner is made
# (biofleet.fleet.context), never by the CLI's start-up or by LocalRunner users.
import httpcore
import httpx
import paramiko

from biofleet.remote.base import (
    MAX_READ_BYTES,
    SKIP_NOT_REGULAR,
    CommandError,
    CompletedCommand,
    ConnectionFailed,
    FileChunk,
    FileTooLarge,
    UnknownHostError,
    check_argv,
    check_env,
    clamp_range,
    expand_home,
    expand_user_vars,
    skip_beyond,
    skip_line,
    skip_too_large,
    whole_utf8,
)

# ---------------------------------------------------------------------------- SSH

log = logging.getLogger("biofleet.ssh")
_T = TypeVar("_T")

# Exit status our file commands use for "no such file or directory" / "not a directory" / "not a regular file".
_NO_SUCH_FILE, _NOT_A_DIR, _NOT_REGULAR = 66, 65, 64
_NO_SFTP_HINT = ("the login node has no SFTP subsystem; the admins can enable it with "
                 "`Subsystem sftp internal-sftp` in sshd_config")


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

    A lost connection is made again (same checks, same key) by the next call. A command that
    was running when the link dropped raises :class:`ConnectionFailed`: whether it ran is
    unknown, so it is neither retried nor reported as a result. On a login node without the
    SFTP subsystem, file operations run as small shell commands instead (content on stdin only).
    """

    is_local = False

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
        self.host = host
        self.port = int(port)
        self.user = user or _default_user()
        self.key_file = os.path.expanduser(str(key_file)) if key_file else None
        self.known_hosts = os.path.expanduser(str(known_hosts or "~/.ssh/known_hosts"))
        self.allow_unknown_host = allow_unknown_host
        self.connect_timeout = connect_timeout
        self.where = f"{self.user}@{self.host}:{self.port}"
        self._lock = threading.RLock()  # guards the client and SFTP session across reconnects
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_missing = False  # a property of the login node: found out once, said once
        self._home: str | None = None
        self._user_name: str | None = None
        self._closed = False
        self._client: paramiko.SSHClient | None = self._connect()

    def _connect(self) -> paramiko.SSHClient:
        host, port, timeout = self.host, self.port, self.connect_timeout
        key_note = f" with key {self.key_file}" if self.key_file else " (no key_file given: ssh-agent / default keys)"
        client = paramiko.SSHClient()
        if os.path.exists(self.known_hosts):
            try:
                client.load_host_keys(self.known_hosts)
            except (OSError, paramiko.SSHException) as exc:
                raise ConnectionFailed(f"cannot read known_hosts file {self.known_hosts}: {exc}") from None
        if self.allow_unknown_host:
            client.set_missing_host_key_policy(_TrustAndRecord(self.known_hosts))
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        t0 = time.monotonic()
        try:
            client.connect(
                hostname=host,
                port=port,
                username=self.user,
                key_filename=self.key_file,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                # With an explicit key, do not wander through the agent and ~/.ssh: the error stays about that key.
                allow_agent=self.key_file is None,
                look_for_keys=self.key_file is None,
            )
        except BaseException as exc:
            client.close()
            raise self._connect_error(exc, client, time.monotonic() - t0, key_note) from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(30)
        return client

    def _connect_error(self, exc: BaseException, client: paramiko.SSHClient, elapsed: float,
                       key_note: str) -> BaseException:
        host, port, timeout = self.host, self.port, self.connect_timeout
        if isinstance(exc, paramiko.BadHostKeyException):
            return UnknownHostError(
                f"host key for {host}:{port} does NOT match {self.known_hosts} "
                f"(got {exc.key.get_name()} {exc.key.fingerprint}). This may be an attack or a reinstalled "
                "login node; ask the admins before removing the old entry."
            )
        if isinstance(exc, paramiko.AuthenticationException):
            return ConnectionFailed(
                f"authentication failed for {self.where}{key_note}: {exc}. Check the key is in the user's "
                "~/.ssh/authorized_keys on the login node and that the user name is right."
            )
        if isinstance(exc, paramiko.SSHException):
            # RejectPolicy's message: "Server '[host]:port' not found in known_hosts".
            if "not found in known_hosts" in str(exc):
                return UnknownHostError(
                    f"refusing to connect to {host}:{port}: its host key is not in {self.known_hosts}.\n"
                    + _trust_hint(host, port)
                )
            transport = client.get_transport()
            if transport is None or not transport.remote_version:
                # TCP worked but no "SSH-2.0-..." line ever came (paramiko says "Error reading SSH
                # protocol banner" or, when its own wait ends first, "No existing session").
                if elapsed >= timeout * 0.9:
                    return ConnectionFailed(
                        f"{host}:{port} accepted the connection but sent no SSH greeting within {timeout:g}s: "
                        "is it the login node's SSH port, and is the node overloaded?"
                    )
                return ConnectionFailed(
                    f"{host}:{port} closed the connection without an SSH greeting: is it an SSH server "
                    "(right port), or does it refuse this client (sshd MaxStartups, fail2ban)?"
                )
            return ConnectionFailed(f"SSH to {self.where} failed{key_note}: {exc}")
        if isinstance(exc, FileNotFoundError):
            return ConnectionFailed(f"SSH key file not found: {exc.filename or self.key_file}")
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return ConnectionFailed(
                f"SSH to {host}:{port} timed out after {timeout:g}s with no answer to the TCP connection: "
                "is the host up and the address right (VPN, firewall)?"
            )
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            reasons = "; ".join(sorted({(e.strerror if isinstance(e, OSError) else None) or str(e)
                                        for e in exc.errors.values()}))
            return ConnectionFailed(f"cannot connect to {host}:{port}: {reasons}")
        if isinstance(exc, OSError):
            return ConnectionFailed(f"cannot connect to {host}:{port}: {exc.strerror or exc}")
        return exc

    def _transport(self) -> paramiko.Transport:
        """The live transport of the connection; connects again first when the link was lost."""
        with self._lock:
            if self._closed:
                raise CommandError((), None, reason=f"the SSH runner for {self.where} was closed")
            transport = self._client.get_transport() if self._client is not None else None
            if transport is not None and transport.is_active():
                return transport
            self._drop_connection()
            try:
                self._client = self._connect()
            except ConnectionFailed as exc:
                raise type(exc)(f"lost the SSH connection to {self.where} and could not connect again: {exc}") from None
            log.info("the SSH connection to %s was lost; connected again", self.where)
            transport = self._client.get_transport()
            if transport is None:  # SSHClient.connect sets it up, or raises
                raise ConnectionFailed(f"connected again to {self.where}, but the connection has no transport")
            return transport

    def _drop_connection(self) -> None:
        with self._lock:
            things: tuple[paramiko.SFTPClient | paramiko.SSHClient | None, ...] = (self._sftp, self._client)
            for thing in things:
                if thing is not None:
                    try:
                        thing.close()
                    except Exception:
                        pass
            self._sftp = None
            self._client = None

    def _session_refused(self, exc: paramiko.ChannelException) -> str:
        return (
            f"the login node {self.where} refused to open a session channel ({exc.text}): its sshd allows no "
            "(more) sessions on one connection (`MaxSessions` in sshd_config may be 0 or too low) or is out of "
            "resources; ask the admins"
        )

    def _open_session(self, argv: Sequence[str], timeout: float) -> paramiko.Channel:
        attempt = 1
        while True:
            transport = self._transport()
            try:
                return transport.open_session(timeout=timeout)
            except paramiko.ChannelException as exc:
                raise CommandError(argv, None, reason=self._session_refused(exc)) from None
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if attempt == 2 or not _link_lost(transport):
                    raise ConnectionFailed(
                        f"could not open an SSH channel to {self.where} for {shlex.join(argv)}: "
                        f"{_why(exc)}", argv=argv) from None
            # The link died before anything ran on it: connect again and try once more.
            attempt += 1

    # ----- commands
    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 30,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> CompletedCommand:
        return self._run(check_argv(argv), timeout=timeout, check=check, env=env)

    def _run(
        self,
        args: tuple[str, ...],
        *,
        timeout: float,
        check: bool,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
    ) -> CompletedCommand:
        extra = check_env(env)
        # The remote side always goes through the user's login shell: quote every word.
        # Extra env rides on `env K=V cmd` (visible in the remote ps: never pass secrets this way).
        words = (["env", *(f"{k}={v}" for k, v in extra.items())] if extra else []) + list(args)
        command = shlex.join(words)
        chan = self._open_session(args, timeout)
        transport = chan.get_transport()
        try:
            chan.settimeout(timeout)
            chan.exec_command(command)
            if stdin:
                try:
                    chan.sendall(stdin)
                except TimeoutError:
                    raise
                except OSError:
                    pass  # the command stopped reading (it failed, or the link dropped): the exit status says which
            chan.shutdown_write()
            out, err = _drain(chan, timeout)
        except TimeoutError:
            chan.close()
            raise CommandError(args, None, reason=f"timed out after {timeout:g}s on {self.host}") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            chan.close()
            if _link_lost(transport):
                raise self._dropped(args) from None
            raise CommandError(args, None, reason=f"{self.where} would not run it: {_why(exc)}") from None
        rc = chan.recv_exit_status()
        chan.close()
        if rc == -1:  # the channel ended without an exit status
            # A server ending a channel sends EOF first; a link that drops sends nothing more.
            if not chan.eof_received or _link_lost(transport):
                raise self._dropped(args)
            raise CommandError(args, None, out, err,
                               reason=f"ended on {self.host} with no exit status (killed by a signal?)")
        if rc == 127 and "not found" in err:
            raise CommandError(args, 127, out, err, reason=f"command not found on {self.host}: {args[0]}")
        result = CompletedCommand(args, rc, out, err)
        if check and rc != 0:
            raise CommandError(args, rc, out, err)
        return result

    def _dropped(self, args: Sequence[str]) -> ConnectionFailed:
        return ConnectionFailed(
            f"the SSH connection to {self.where} dropped while running {shlex.join(args)}: whether it finished "
            "on the login node is unknown, so it was not retried. Check its effect (e.g. with `biofleet status`) "
            "before running it again; the next command will reconnect.",
            argv=args,
        )

    # ----- files: SFTP, or shell commands on a login node without the SFTP subsystem
    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        self._file_op("writing", path, lambda files, p: files.write_text(p, text, mode))

    def read_text(self, path: str, max_bytes: int = MAX_READ_BYTES) -> str:
        return self._file_op("reading", path, lambda files, p: files.read_text(p, max_bytes))

    def read_range(self, path: str, start: int, max_bytes: int) -> FileChunk:
        return self._file_op("reading", path, lambda files, p: files.read_range(p, start, max_bytes))

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        self._file_op("creating directory", path, lambda files, p: files.mkdir(p, mode))

    def chmod(self, path: str, mode: int) -> None:
        self._file_op("changing the mode of", path, lambda files, p: files.chmod(p, mode))

    def exists(self, path: str) -> bool:
        return self._file_op("looking for", path, lambda files, p: files.exists(p))

    def listdir(self, path: str) -> list[str]:
        return self._file_op("listing", path, lambda files, p: sorted(files.listdir(p)))

    def remove(self, path: str) -> None:
        self._file_op("removing", path, lambda files, p: files.remove(p))

    def rmtree(self, path: str) -> None:
        self._file_op("removing", path, lambda files, p: files.rmtree(p))

    def _file_op(self, what: str, path: str, op: Callable[[_SFTPFiles | _ShellFiles, str], _T]) -> _T:
        path = expand_home(path, self._remote_home)
        files = self._files()
        if isinstance(files, _ShellFiles):
            return op(files, path)  # commands: _run already turns a lost link into ConnectionFailed
        chan = files.sftp.get_channel()
        if chan is None:  # an SFTPClient made on a channel keeps it
            raise ConnectionFailed(f"the SFTP session to {self.where} has no channel")
        transport = chan.get_transport()
        try:
            return op(files, path)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if getattr(exc, "errno", None) is None and _link_lost(transport):
                raise ConnectionFailed(
                    f"the SSH connection to {self.where} dropped while {what} {path} over SFTP "
                    f"({_why(exc)}); the next call will reconnect — run the command again"
                ) from None
            raise

    def _files(self) -> _SFTPFiles | _ShellFiles:
        with self._lock:
            if self._sftp_missing:
                return _ShellFiles(self)
            transport = self._transport()
            if self._sftp is None:
                self._sftp = self._open_sftp(transport)
                if self._sftp is None:
                    return _ShellFiles(self)
            return _SFTPFiles(self._sftp)

    def _open_sftp(self, transport: paramiko.Transport) -> paramiko.SFTPClient | None:
        try:
            chan = transport.open_session(timeout=self.connect_timeout)
        except paramiko.ChannelException as exc:
            raise CommandError(("sftp",), None, reason=self._session_refused(exc)) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise ConnectionFailed(f"could not open an SFTP session to {self.where}: {_why(exc)}") from None
        try:
            chan.invoke_subsystem("sftp")
            return paramiko.SFTPClient(chan)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            chan.close()
            if _link_lost(transport):
                raise ConnectionFailed(
                    f"the SSH connection to {self.where} dropped while opening SFTP: {_why(exc)}"
                ) from None
        # No subsystem (sshd refuses the request), or a broken one (it ends before speaking SFTP).
        self._sftp_missing = True
        log.warning("SFTP is not available on %s (%s); biofleet reads and writes files there with shell "
                    "commands instead (cat, mkdir, rm).", self.where, _NO_SFTP_HINT)
        return None

    def _remote_home(self) -> str:
        if self._home is None:
            home = self.run(["sh", "-c", 'printf "%s" "$HOME"']).stdout
            if not home.startswith("/"):
                raise CommandError(("sh", "-c", 'printf "%s" "$HOME"'), 0, home,
                                   reason=f"$HOME on {self.where} is not an absolute path: {home!r}")
            self._home = home
        return self._home

    def _remote_user(self) -> str:
        if self._user_name is None:
            self._user_name = self.run(["id", "-un"]).stdout.strip() or self.user
        return self._user_name

    def read_small_files(self, directory: str, suffix: str, max_bytes: int, max_files: int,
                         skipped: list[str] | None = None) -> list[str]:
        # One command for the whole directory; NUL-separated entries (no JSON text contains a NUL byte):
        # "T" + a file's text, "R" / "L" + the name of a file that is not regular / too large, "M" + the count
        # beyond max_files. The glob sorts as the local listing does and skips hidden files.
        script = ('n=0; m=0; for f in "$1"/*"$2"; do [ -e "$f" ] || [ -L "$f" ] || continue; '
                  'if [ "$n" -ge "$4" ]; then m=$((m + 1)); continue; fi; n=$((n + 1)); '
                  'if [ ! -f "$f" ] || [ -L "$f" ]; then printf "R%s\\0" "${f##*/}"; '
                  'elif [ "$(wc -c <"$f")" -gt "$3" ]; then printf "L%s\\0" "${f##*/}"; '
                  'else printf T; head -c "$3" "$f"; printf "\\0"; fi; done; printf "M%s\\0" "$m"')
        directory = expand_home(directory, self._remote_home)
        out = self.run(["sh", "-c", script, "sh", directory, suffix, str(max_bytes), str(max_files)], check=False)
        texts: list[str] = []
        why: list[str] = []
        for chunk in out.stdout.split("\0"):
            kind, body = chunk[:1], chunk[1:]
            if kind == "T":
                texts.append(body)
            elif kind == "R":
                why.append(skip_line(body, SKIP_NOT_REGULAR))
            elif kind == "L":
                why.append(skip_line(body, skip_too_large(max_bytes)))
            elif kind == "M" and body.isdigit() and int(body):
                why.append(skip_beyond(max_files, int(body)))
        if skipped is not None:
            skipped += why
        return texts

    def expand_path(self, path: str) -> str:
        return expand_user_vars(path, self._remote_home, self._remote_user)

    def which(self, cmd: str) -> bool:
        return self.run(["sh", "-c", 'command -v "$1" >/dev/null 2>&1', "sh", cmd], check=False).returncode == 0

    # ----- HTTP through the login node
    def http_transport(self) -> httpx.BaseTransport:
        """An httpx transport whose connections are SSH ``direct-tcpip`` channels from the login node.

        Compute nodes are usually reachable only from inside the cluster; this lets health
        probes and the status command reach them without a VPN or a manual ``ssh -L``.
        """
        return _TunnelTransport(self)

    def open_channel(self, host: str, port: int, timeout: float | None) -> paramiko.Channel:
        try:
            transport = self._transport()
        except CommandError as exc:
            raise httpx.ConnectError(f"via {self.where}: cannot reach {host}:{port}: {exc}") from None
        try:
            return transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
        except paramiko.ChannelException as exc:
            if exc.code == paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED:
                raise httpx.ConnectError(
                    f"via {self.where}: the login node refuses to forward connections to {host}:{port} "
                    f"({exc.text}); its sshd_config likely has `AllowTcpForwarding no`. Ask the admins to allow "
                    "it, or run biofleet where the compute nodes are reachable directly."
                ) from None
            raise httpx.ConnectError(f"via {self.where}: cannot reach {host}:{port}: {exc.text}") from None
        except Exception as exc:
            raise httpx.ConnectError(f"via {self.where}: cannot reach {host}:{port}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop_connection()

    def __enter__(self) -> SSHRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _link_lost(transport: paramiko.Transport, grace: float = 0.5) -> bool:
    """Has the SSH link under ``transport`` died? Called right after an error or a channel that ended oddly.

    Paramiko's transport thread closes the channels first and marks itself inactive just after,
    so give it a moment before saying the link is alive.
    """
    deadline = time.monotonic() + grace
    while transport.is_active():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__  # EOFError() and friends have no message


class _SFTPFiles:
    """File operations over one SFTP session."""

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self.sftp = sftp

    def write_text(self, path: str, text: str, mode: int) -> None:
        sftp = self.sftp
        parent = posixpath.dirname(path) or "."
        self.mkdir(parent, 0o755)
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

    def _open_regular(self, path: str) -> tuple[paramiko.SFTPFile, int]:
        # stat before open: the SFTP server would block opening a FIFO for reading (its size serves as the
        # file's; the reads past it check their own length)
        info = self.sftp.stat(path)
        if not stat.S_ISREG(info.st_mode or 0):
            raise OSError(f"{path} is not a regular file")
        return self.sftp.open(path, "r"), info.st_size or 0

    def read_text(self, path: str, max_bytes: int) -> str:
        fh, size = self._open_regular(path)
        with fh:
            if size > max_bytes:
                raise FileTooLarge(path, max_bytes)
            data = fh.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise FileTooLarge(path, max_bytes)
        return data.decode()

    def read_range(self, path: str, start: int, max_bytes: int) -> FileChunk:
        fh, size = self._open_regular(path)
        with fh:
            first, last = clamp_range(size, start, max_bytes)
            fh.seek(first)
            data = whole_utf8(fh.read(last - first)) if last > first else b""
        return FileChunk(data.decode(errors="replace"), first, first + len(data), size)

    def chmod(self, path: str, mode: int) -> None:
        self.sftp.chmod(path, mode)

    def mkdir(self, path: str, mode: int) -> None:
        parts = []
        p = path.rstrip("/")
        while p and not self.exists(p):
            parts.append(p)
            p = posixpath.dirname(p)
        for d in reversed(parts):
            try:
                self.sftp.mkdir(d, mode)
            except OSError:
                if not self.exists(d):
                    raise

    def exists(self, path: str) -> bool:
        try:
            self.sftp.stat(path)
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            if getattr(exc, "errno", None) == errno.ENOENT:
                return False
            raise

    def listdir(self, path: str) -> list[str]:
        return self.sftp.listdir(path)

    def remove(self, path: str) -> None:
        try:
            self.sftp.remove(path)
        except FileNotFoundError:
            pass

    def rmtree(self, path: str) -> None:
        if not self.exists(path):
            return
        for entry in self.sftp.listdir_attr(path):
            child = posixpath.join(path, entry.filename)
            if entry.st_mode is not None and stat.S_ISDIR(entry.st_mode):
                self.rmtree(child)
            else:
                self.sftp.remove(child)
        self.sftp.rmdir(path)


class _ShellFiles:
    """File operations as POSIX shell commands, for login nodes without the SFTP subsystem.

    Paths travel as quoted arguments; file content travels only on stdin, so a secret never
    appears in a command line (ps, audit logs). A new file is made by mktemp (mode 0600), given
    its final mode, and only then filled and renamed into place, like LocalRunner.write_text.
    """

    TIMEOUT = 300  # seconds; SFTP has no per-operation limit, a command needs one

    def __init__(self, runner: SSHRunner) -> None:
        self._runner = runner

    def _sh(self, script: str, *args: str, stdin: bytes | None = None, ok: tuple[int, ...] = (0,)) -> CompletedCommand:
        argv = ("sh", "-c", script, "sh", *args)
        result = self._runner._run(argv, timeout=self.TIMEOUT, check=False, stdin=stdin)
        if result.returncode not in ok:
            raise CommandError(argv, result.returncode, result.stdout, result.stderr,
                               reason=f"exited with {result.returncode} on {self._runner.where} ({_NO_SFTP_HINT})")
        return result

    def write_text(self, path: str, text: str, mode: int) -> None:
        self._sh(
            'd=$(dirname -- "$1") && mkdir -p -- "$d" && t=$(mktemp -- "$d/.biofleet-tmp-XXXXXXXXXX") || exit 1; '
            '{ chmod "$2" -- "$t" && cat > "$t" && mv -f -- "$t" "$1"; } || { rm -f -- "$t"; exit 1; }',
            path, f"{mode & 0o7777:o}", stdin=text.encode(),
        )

    def _regular(self, script: str, path: str, *args: str) -> CompletedCommand:
        """Run ``script`` on a path that must be a regular file (``$1``; the script's own arguments follow)."""
        r = self._sh(f'[ -e "$1" ] || exit {_NO_SUCH_FILE}; [ -f "$1" ] || exit {_NOT_REGULAR}; {script}',
                     path, *args, ok=(0, _NO_SUCH_FILE, _NOT_REGULAR))
        if r.returncode == _NO_SUCH_FILE:
            raise FileNotFoundError(errno.ENOENT, "No such file", path)
        if r.returncode == _NOT_REGULAR:
            raise OSError(f"{path} is not a regular file")
        return r

    def read_text(self, path: str, max_bytes: int) -> str:
        r = self._regular('exec head -c "$2" -- "$1"', path, str(max_bytes + 1))
        if len(r.stdout.encode()) > max_bytes:
            raise FileTooLarge(path, max_bytes)
        return r.stdout

    def read_range(self, path: str, start: int, max_bytes: int) -> FileChunk:
        # the size on the first line, then the span (tail -c +N counts from 1)
        r = self._regular('s=$(wc -c < "$1") || exit 1; echo $s; '
                          'f=$2; [ "$f" -lt 0 ] && f=$((s + f)); [ "$f" -lt 0 ] && f=0; [ "$f" -gt "$s" ] && f=$s; '
                          'echo $f; tail -c +$((f + 1)) -- "$1" | head -c "$3"', path, str(start), str(max_bytes))
        size_line, first_line, data = r.stdout.split("\n", 2)
        size, first = int(size_line), int(first_line)
        # the bytes head wrote (the text was decoded with replacement: a character cut at the end is lost)
        return FileChunk(data, first, first + min(max_bytes, size - first), size)

    def mkdir(self, path: str, mode: int) -> None:
        self._sh('umask "$1" && mkdir -p -- "$2"', f"{0o777 & ~mode:03o}", path)

    def chmod(self, path: str, mode: int) -> None:
        self._sh('chmod "$1" -- "$2"', f"{mode:o}", path)

    def exists(self, path: str) -> bool:
        return self._sh('[ -e "$1" ]', path, ok=(0, 1)).returncode == 0

    def listdir(self, path: str) -> list[str]:
        r = self._sh(
            f'[ -d "$1" ] || {{ [ -e "$1" ] && exit {_NOT_A_DIR}; exit {_NO_SUCH_FILE}; }}; cd -- "$1" || exit 1; '
            'for f in .* *; do case $f in .|..) continue;; esac; '
            'if [ -e "$f" ] || [ -L "$f" ]; then printf "%s\\0" "$f"; fi; done',
            path, ok=(0, _NOT_A_DIR, _NO_SUCH_FILE),
        )
        if r.returncode == _NO_SUCH_FILE:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if r.returncode == _NOT_A_DIR:
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
        return [name for name in r.stdout.split("\0") if name]

    def remove(self, path: str) -> None:
        self._sh('rm -f -- "$1"', path)

    def rmtree(self, path: str) -> None:
        self._sh('rm -rf -- "$1"', path)


def _default_user() -> str:
    import getpass

    return getpass.getuser()


def _drain(chan: paramiko.Channel, timeout: float) -> tuple[str, str]:
    """Read stdout and stderr until the channel closes (both streams, so neither pipe fills up).

    The exit status is not the end: sshd sends it when the command exits, while the last of its
    output (or that of a child still holding the pipes) may still be on the way. The server
    closes the channel only after all of it, as `ssh host cmd` waits for it too.
    """
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
        # Paramiko marks the channel closed on the server's CLOSE (or a dead link), after
        # buffering everything that came before it.
        if chan.closed and not chan.recv_ready() and not chan.recv_stderr_ready():
            break
        if time.monotonic() > deadline:
            raise TimeoutError
        if not got:
            if chan.status_event.is_set():  # set once the status is in: waiting on it returns at once
                time.sleep(0.005)
            else:
                chan.status_event.wait(0.02)
    return out.decode(errors="replace"), err.decode(errors="replace")


class _TrustAndRecord(paramiko.MissingHostKeyPolicy):
    """Missing-host-key policy for an explicit opt-in: accept the key and append it to known_hosts."""

    def __init__(self, known_hosts: str) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        os.makedirs(os.path.dirname(self.known_hosts) or ".", mode=0o700, exist_ok=True)
        with open(self.known_hosts, "a") as fh:
            fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


# ---------------------------------------------------------------------------- tunnel transport


class _ChannelStream(httpcore.NetworkStream):
    """httpcore network stream over one paramiko channel."""

    def __init__(self, chan: paramiko.Channel) -> None:
        self._chan = chan

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._chan.settimeout(timeout)
        try:
            return self._chan.recv(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout(f"read timed out after {timeout}s") from None
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from None

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._chan.settimeout(timeout)
        try:
            self._chan.sendall(buffer)
        except TimeoutError:
            raise httpcore.WriteTimeout(f"write timed out after {timeout}s") from None
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from None

    def close(self) -> None:
        self._chan.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("HTTPS through the SSH tunnel is not supported (backends speak plain HTTP)")

    def get_extra_info(self, info: str) -> bool | None:
        if info == "is_readable":
            # httpcore asks this of an idle pooled connection: readable means the far end closed it
            # (or the SSH link under it died), so the pool opens a new channel instead of reusing it.
            return bool(self._chan.closed or self._chan.eof_received or self._chan.recv_ready())
        return None


class _ChannelBackend(httpcore.NetworkBackend):
    """httpcore network backend: every TCP connection is a direct-tcpip channel from the login node."""

    def __init__(self, runner: SSHRunner) -> None:
        self._runner = runner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None) -> httpcore.NetworkStream:
        try:
            return _ChannelStream(self._runner.open_channel(host, port, timeout))
        except httpx.ConnectError as exc:
            raise httpcore.ConnectError(str(exc)) from None

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not supported through the SSH tunnel")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _map_httpcore_errors():
            yield from self._stream

    def close(self) -> None:
        if hasattr(self._stream, "close"):
            self._stream.close()


class _map_httpcore_errors:
    """Turn httpcore's exceptions into httpx's, as httpx's own transport does."""

    def __enter__(self) -> _map_httpcore_errors:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            return
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


class _TunnelTransport(httpx.BaseTransport):
    """httpx transport that sends plain-HTTP requests through SSH direct-tcpip channels."""

    def __init__(self, runner: SSHRunner, max_connections: int = 20) -> None:
        self._pool = httpcore.ConnectionPool(network_backend=_ChannelBackend(runner), max_connections=max_connections)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
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
        if not isinstance(resp.stream, Iterable):  # the sync pool answers with a sync stream
            raise TypeError(f"httpcore's ConnectionPool returned a {type(resp.stream).__name__} body")
        return httpx.Response(
            status_code=resp.status,
            headers=resp.headers,
            stream=_ResponseStream(resp.stream),
            extensions=resp.extensions,
        )

    def close(self) -> None:
        self._pool.close()
