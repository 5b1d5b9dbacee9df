"""Commands and files on this machine."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from biofleet.clusterside.jobkit import atomic_write_text
from biofleet.remote.base import (
    MAX_READ_BYTES,
    CommandError,
    CompletedCommand,
    FileChunk,
    check_argv,
    check_env,
    decode_output,
    expand_home,
    expand_user_vars,
    read_local_range,
    read_local_text,
    read_small_files,
)

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
        args = check_argv(argv)
        full_env = {**os.environ, **check_env(env)} if env else None
        try:
            proc = subprocess.run(
                args, capture_output=True, text=True, timeout=timeout, env=full_env,
                stdin=subprocess.DEVNULL, errors="replace",
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandError(
                args, None, decode_output(exc.stdout), decode_output(exc.stderr),
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
        target = Path(_local(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(str(target), text, mode)

    def read_text(self, path: str, max_bytes: int = MAX_READ_BYTES) -> str:
        return read_local_text(_local(path), max_bytes)

    def read_range(self, path: str, start: int, max_bytes: int) -> FileChunk:
        return read_local_range(_local(path), start, max_bytes)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(_local(path), mode)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        Path(_local(path)).mkdir(mode=mode, parents=True, exist_ok=True)

    def exists(self, path: str) -> bool:
        return Path(_local(path)).exists()

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(_local(path)))

    def remove(self, path: str) -> None:
        Path(_local(path)).unlink(missing_ok=True)

    def rmtree(self, path: str) -> None:
        path = _local(path)
        if Path(path).exists():
            shutil.rmtree(path)

    def which(self, cmd: str) -> bool:
        return shutil.which(cmd) is not None

    def read_small_files(self, directory: str, suffix: str, max_bytes: int, max_files: int,
                         skipped: list[str] | None = None) -> list[str]:
        return read_small_files(directory, suffix, max_bytes, max_files, skipped)

    def expand_path(self, path: str) -> str:
        return os.path.abspath(expand_user_vars(path, lambda: os.path.expanduser("~"), getpass.getuser))

    def http_transport(self) -> httpx.BaseTransport | None:
        return None  # compute nodes are reachable directly (or not at all) from here

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _local(path: str) -> str:
    """~ and $HOME in a path, the same way SSHRunner reads them on the login node."""
    return expand_home(str(path), lambda: os.path.expanduser("~"))
