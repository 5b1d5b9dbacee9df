"""Where commands run: the :class:`Runner` protocol, its results and its errors.

This is the one seam between biofleet and the machine SLURM lives on: this machine
(:class:`biofleet.remote.local.LocalRunner`) or a login node over SSH
(:class:`biofleet.remote.ssh.SSHRunner`). The scheduler and the fleet code only see the
protocol; where they need to know more, they ask its capabilities (``is_local``, ``where``),
never its class.

Errors::

    BiofleetError
    └── CommandError            a command failed, timed out, or could not be started
        └── (SSH) ConnectionFailed   the login node could not be reached, refused us, or the link dropped
            └── UnknownHostError     the host key is not in known_hosts (refused on purpose)
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from biofleet.errors import BiofleetError
from biofleet.names import shown

if TYPE_CHECKING:  # the CLI's import path (profile -> proxy config -> here) stays without httpx
    import httpx

# ---------------------------------------------------------------------------- results and errors

MAX_READ_BYTES = 16 * 1024 * 1024
"""The most :meth:`Runner.read_text` reads unless told otherwise: fleet state and plans are a few kB."""
MAX_SECRET_BYTES = 64 * 1024
"""The most a token or key file is read to (a generated one is 43 characters)."""


class FileTooLarge(ValueError):
    """A file that is read whole is larger than its bound (a ValueError, as a malformed file is)."""

    def __init__(self, path: str, max_bytes: int) -> None:
        super().__init__(f"{path} is larger than {max_bytes} bytes; not read")
        self.path = path
        self.max_bytes = max_bytes


@dataclass(frozen=True)
class FileChunk:
    """Part of a file: its text, the byte offsets it spans and the file's size when it was read."""

    text: str
    start: int
    end: int
    size: int


def whole_utf8(data: bytes) -> bytes:
    """``data`` less a UTF-8 sequence cut at its end (the next read starts with it)."""
    for back in range(1, min(4, len(data)) + 1):
        lead = data[-back]
        if lead & 0xC0 == 0x80:  # a continuation byte: look further back
            continue
        need = 2 if lead & 0xE0 == 0xC0 else 3 if lead & 0xF0 == 0xE0 else 4 if lead & 0xF8 == 0xF0 else 1
        return data[:-back] if need > back else data
    return data


def clamp_range(size: int, start: int, max_bytes: int) -> tuple[int, int]:
    """The byte span ``[first, last)`` that :meth:`Runner.read_range` reads from a file of ``size``."""
    first = max(0, size + start) if start < 0 else min(start, size)
    return first, min(size, first + max(0, max_bytes))


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
    """The SSH connection could not be made (refused, auth failure, DNS, ...) or dropped mid-command."""

    def __init__(self, message: str, *, argv: Sequence[str] = ()) -> None:
        super().__init__(argv, None, reason=message)

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

    def read_text(self, path: str, max_bytes: int = MAX_READ_BYTES) -> str:
        """The whole of a regular file as UTF-8 text. A file larger than ``max_bytes`` raises
        :class:`FileTooLarge` (a ValueError) without being read past the bound; a FIFO, device or
        directory raises OSError instead of blocking."""
        ...

    def read_range(self, path: str, start: int, max_bytes: int) -> FileChunk:
        """At most ``max_bytes`` of a regular file from byte ``start`` (a negative start counts back
        from the end; both are clamped to the file), decoded with replacement: how logs are tailed
        and followed without reading them whole."""
        ...

    def mkdir(self, path: str, mode: int = 0o755) -> None: ...

    def chmod(self, path: str, mode: int) -> None:
        """Set a path's permission bits (e.g. force a directory of secrets back to 0700)."""
        ...

    def exists(self, path: str) -> bool: ...

    def listdir(self, path: str) -> list[str]: ...

    def remove(self, path: str) -> None: ...

    def rmtree(self, path: str) -> None: ...

    def which(self, cmd: str) -> bool: ...

    def expand_path(self, path: str) -> str:
        """``~``, ``$HOME`` and ``$USER`` in a path as the machine the runner reaches sees them."""
        ...

    def read_small_files(self, directory: str, suffix: str, max_bytes: int, max_files: int,
                         skipped: list[str] | None = None) -> list[str]:
        """The text of the regular files named ``*suffix`` in ``directory`` (records written by jobs),
        in one round trip: hidden, non-regular (FIFO, device, symlink) and larger files are skipped,
        and at most ``max_files`` are read. A missing directory gives []. ``skipped``, when given,
        gets one line per file passed over (``NAME: why``; hidden files are not counted)."""
        ...

    def http_transport(self) -> httpx.BaseTransport | None: ...

    def close(self) -> None: ...


def check_argv(argv: Sequence[str]) -> tuple[str, ...]:
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a list of strings, not one string (no shell is used)")
    args = tuple(str(a) for a in argv)
    if not args:
        raise ValueError("argv is empty")
    return args


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    out = {}
    for k, v in (env or {}).items():
        if not k or "=" in k or not (k[0].isalpha() or k[0] == "_") or not all(c.isalnum() or c == "_" for c in k):
            raise ValueError(f"invalid environment variable name {k!r}")
        out[k] = str(v)
    return out


def expand_home(path: str, home: Callable[[], str]) -> str:
    """``~``, ``~/x``, ``$HOME/x`` and ``${HOME}/x`` -> under the home directory (asked for only when needed)."""
    for prefix in ("~", "$HOME", "${HOME}"):
        if path == prefix or path.startswith(prefix + "/"):
            return (home().rstrip("/") + path[len(prefix):]) or "/"
    if path.startswith("~"):
        raise ValueError(f"{path!r}: ~user paths are not supported; use ~/..., $HOME/... or an absolute path")
    return path


def decode_output(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def expand_user_vars(path: str, home: Callable[[], str], user: Callable[[], str]) -> str:
    """``~``/``$HOME`` (see :func:`expand_home`) and ``$USER``/``${USER}`` anywhere in ``path``."""
    path = expand_home(path, home)
    for var in ("${HOME}", "$HOME"):
        if var in path:
            path = path.replace(var, home())
    for var in ("${USER}", "$USER"):
        if var in path:
            path = path.replace(var, user())
    return path


def _open_regular(path: str, *, follow: bool = True) -> tuple[int, os.stat_result]:
    """A read-only descriptor of a regular file and its stat; a FIFO (opened non-blocking), device or
    directory raises OSError, and so does a symlink when ``follow`` is false."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _read_fd(fd: int, count: int) -> bytes:
    parts: list[bytes] = []
    while count > 0:
        data = os.read(fd, min(count, 1 << 20))
        if not data:
            break
        parts.append(data)
        count -= len(data)
    return b"".join(parts)


def read_local_text(path: str, max_bytes: int = MAX_READ_BYTES) -> str:
    """:meth:`Runner.read_text` on this machine's filesystem."""
    fd, info = _open_regular(path)
    try:
        if info.st_size > max_bytes:
            raise FileTooLarge(path, max_bytes)
        data = _read_fd(fd, max_bytes + 1)  # the file may have grown since fstat
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise FileTooLarge(path, max_bytes)
    return data.decode()


def read_local_range(path: str, start: int, max_bytes: int) -> FileChunk:
    """:meth:`Runner.read_range` on this machine's filesystem."""
    fd, info = _open_regular(path)
    try:
        first, last = clamp_range(info.st_size, start, max_bytes)
        os.lseek(fd, first, os.SEEK_SET)
        data = whole_utf8(_read_fd(fd, last - first))
    finally:
        os.close(fd)
    return FileChunk(data.decode(errors="replace"), first, first + len(data), info.st_size)


def last_lines(runner: Runner, path: str, n: int, most: int, first: int = 64 * 1024) -> tuple[list[str], int]:
    """The lines (ends kept) at the end of a file that hold its last ``n``, read back from its end: a span of
    ``first`` bytes growing x4 until it holds more than ``n`` lines, the whole file or ``most`` bytes. A line the
    span cuts is left out. Also the offset after them (where following the file goes on)."""
    span = min(first, most)
    while True:
        chunk = runner.read_range(path, -span, span)
        lines = chunk.text.splitlines(keepends=True)
        if chunk.start == 0 or len(lines) > n or span >= most:
            return (lines[1:] if chunk.start > 0 else lines), chunk.end
        span = min(span * 4, most)


SKIP_NOT_REGULAR = "not a regular file"


def skip_line(name: str, why: str) -> str:
    """One ``skipped`` line: the file's name as untrusted input (escaped, clipped) and why."""
    return f"{shown(name, 60)}: {why}"


def skip_too_large(max_bytes: int) -> str:
    return f"larger than {max_bytes} bytes"


def skip_beyond(max_files: int, count: int) -> str:
    return f"{count} more file(s) beyond the first {max_files}"


def read_small_files(directory: str, suffix: str, max_bytes: int, max_files: int,
                     skipped: list[str] | None = None) -> list[str]:
    """:meth:`Runner.read_small_files` on this machine's filesystem. Never blocks: a FIFO is opened
    non-blocking and skipped, a symlink is not followed, a file is read only up to ``max_bytes``."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(suffix) and not n.startswith("."))
    except OSError:
        return []
    why: list[str] = []
    out: list[str] = []
    for name in names[:max_files]:
        path = os.path.join(directory, name)
        try:
            fd, info = _open_regular(path, follow=False)
        except OSError:  # a symlink, FIFO, device or directory; or gone since the listing
            why.append(skip_line(name, SKIP_NOT_REGULAR) if os.path.lexists(path) else "")
            continue
        try:
            data = _read_fd(fd, max_bytes + 1) if info.st_size <= max_bytes else b""
        except OSError:
            continue
        finally:
            os.close(fd)
        if info.st_size <= max_bytes and len(data) <= max_bytes:
            out.append(data.decode("utf-8", errors="replace"))
        else:
            why.append(skip_line(name, skip_too_large(max_bytes)))
    if len(names) > max_files:
        why.append(skip_beyond(max_files, len(names) - max_files))
    if skipped is not None:
        skipped += [w for w in why if w]
    return out
