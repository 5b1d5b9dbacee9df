"""What a running job writes for biofleet: one definition, used on both sides.

The rendered job script carries this file's source and runs it with the node's
``python3`` (standard library only; Python 3.6+ syntax, since compute nodes and
containers may be old)::

    python3 jobkit.py register REGISTRY FLEET JOB_KEY TASK IS_ARRAY NODE ADDRESS NAME KIND ENGINE SERVED PORT PID
    python3 jobkit.py state SERVERS_DIR NAME JOB_KEY STATE REASON RESTARTS MAX_RESTARTS LAST_EXIT PID DEVICES
    python3 jobkit.py proxy-record PATH ADDRESS PORT JOB_KEY
    python3 jobkit.py pick-port BIND_HOST
    python3 jobkit.py probe HOST PORT      (exit 0 when GET /health answers 200 within 2 s)

biofleet reads the records back with :class:`biofleet.registry.Endpoint` and
:class:`biofleet.fleet.state.Supervision`; a test checks that what this module writes
is exactly what those models read. Every record is written atomically (a temp file
in the same directory, then a rename), so a reader never sees half of one.
"""

import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

REGISTRY_SUFFIX = ".json"


def atomic_write_text(path: str, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` via a temp file in the same directory and a rename.

    The temp file is created 0600 and gets its final ``mode`` before any byte is written, so a
    secret is never readable by others, not even for a moment; a reader sees the old file or the
    whole new one (hidden ``.tmp-`` names are skipped by every reader).
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def record_filename(server: str, job_key: Optional[str]) -> str:
    """``<server>.<job key>.json`` (``<server>.json`` for an endpoint registered by hand)."""
    return "%s.%s%s" % (server, job_key, REGISTRY_SUFFIX) if job_key else server + REGISTRY_SUFFIX


def endpoint_url(address: str, port: int) -> str:
    netloc = "[%s]" % address if ":" in address else address
    return "http://%s:%s" % (netloc, port)


def endpoint_record(fleet: str, server: str, url: str, served_names: Sequence[str], kind: str, engine: str,
                    job_id: Optional[str], array_task_id: Optional[int], node: Optional[str], host: Optional[str],
                    address: Optional[str], port: Optional[int], pid: Optional[int],
                    started_at: Optional[float]) -> Dict[str, Any]:
    """The registry record of one running server (the fields of biofleet.registry.Endpoint)."""
    return {
        "fleet": fleet, "server": server, "url": url, "served_names": list(served_names),
        "kind": kind, "engine": engine, "job_id": job_id, "array_task_id": array_task_id,
        "node": node, "host": host, "address": address, "port": port, "pid": pid,
        "started_at": started_at,
    }


def supervision_record(server: str, job_id: str, state: str, reason: Optional[str], restarts: int,
                       max_restarts: int, last_exit: Optional[int], pid: Optional[int],
                       devices: Optional[str]) -> Dict[str, Any]:
    """What the job's watcher says of one server (the fields of biofleet.fleet.state.Supervision)."""
    return {
        "server": server, "job_id": job_id, "state": state, "reason": reason or None,
        "restarts": restarts, "max_restarts": max_restarts, "last_exit": last_exit,
        "pid": pid, "devices": devices or None, "updated_at": time.time(),
    }


def pick_port(bind_host: str) -> int:
    """A port the kernel has free on the bind address (shared nodes make fixed ports collide)."""
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.bind((bind_host, 0))
        port: int = s.getsockname()[1]
        return port
    finally:
        s.close()


def probe_health(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """Whether the server on ``host:port`` answers ``GET /health`` with 200 (vLLM's readiness)."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(endpoint_url(host, port) + "/health", timeout=timeout_s) as r:
            return r.status == 200
    except (OSError, ValueError, urllib.error.URLError):
        return False


def _int_or_none(text: str) -> Optional[int]:
    return int(text) if text else None


def main(argv: List[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "register":
        (registry, fleet, job_key, task, is_array, node, address, name, kind, engine, served, port,
         pid) = args
        host = socket.gethostname()
        rec = endpoint_record(
            fleet, name, endpoint_url(address, int(port)), [s for s in served.split(",") if s], kind, engine,
            job_key, int(task) if is_array == "1" else None, node or host, host, address, int(port), int(pid),
            time.time(),
        )
        atomic_write_text(os.path.join(registry, record_filename(name, job_key)), json.dumps(rec))
    elif cmd == "state":
        servers_dir, name, job_key, state, reason, restarts, max_restarts, last_exit, pid, devices = args
        rec = supervision_record(name, job_key, state, reason, int(restarts), int(max_restarts),
                                 _int_or_none(last_exit), _int_or_none(pid), devices)
        atomic_write_text(os.path.join(servers_dir, record_filename(name, job_key)), json.dumps(rec))
    elif cmd == "proxy-record":
        path, address, port, job_key = args
        rec = {"url": endpoint_url(address, int(port)), "job_id": job_key or None, "host": socket.gethostname()}
        atomic_write_text(path, json.dumps(rec))
    elif cmd == "pick-port":
        print(pick_port(args[0]))
    elif cmd == "probe":
        return 0 if probe_health(args[0], int(args[1])) else 1
    else:
        sys.stderr.write("jobkit: unknown command %r\n" % cmd)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
