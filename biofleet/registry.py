"""The fleet registry: one JSON file per live server endpoint.

Jobs write their own record with :mod:`biofleet.clusterside.jobkit` (its source travels in
the job script) as ``<fleet dir>/registry/<server>.<job id>[_<task>].json`` via
write-temp-then-rename, so a reader never sees half a file. ``biofleet register`` writes
the same format through the same module for endpoints started outside biofleet
(``manual: true``). :class:`Endpoint` is the reader; a test checks both agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from biofleet.clusterside.jobkit import atomic_write_text, record_filename


class Endpoint(BaseModel):
    """One registered server."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    fleet: str
    server: str  # server name in the profile (unique within a fleet)
    url: str  # base URL, e.g. http://10.0.0.5:41234 (no trailing /v1)
    served_names: tuple[str, ...] = Field(min_length=1)
    kind: Literal["generate", "embed"] = "generate"
    engine: str = "vllm"
    job_id: str | None = None  # SLURM job id as squeue prints it (array: "123_4")
    array_task_id: int | None = None
    node: str | None = None
    host: str | None = None
    address: str | None = None
    port: int | None = None
    pid: int | None = None
    started_at: float | None = None
    manual: bool = False

    @property
    def key(self) -> str:
        """Stable identity of this endpoint inside the fleet."""
        return endpoint_key(self.server, self.job_id)


def endpoint_key(server: str, job_id: str | None) -> str:
    """``server@job id`` (the server alone for one registered by hand): how the proxy, status
    and renewal name one registered server (never its address)."""
    return f"{server}@{job_id}" if job_id else server


def write_record(registry_dir: Path, ep: Endpoint) -> Path:
    registry_dir.mkdir(parents=True, exist_ok=True)
    target = registry_dir / record_filename(ep.server, ep.job_id)
    atomic_write_text(str(target), ep.model_dump_json(exclude_none=True))
    return target


def read_records(registry_dir: Path) -> list[Endpoint]:
    """All well-formed records; temp files and unreadable records are skipped."""
    out: list[Endpoint] = []
    if not registry_dir.is_dir():
        return out
    for path in sorted(registry_dir.glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            out.append(Endpoint.model_validate(json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return out


def remove_records(registry_dir: Path, server: str) -> int:
    n = 0
    for path in list(registry_dir.glob(f"{server}.*json")):
        try:
            ep = Endpoint.model_validate(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
        if ep.server == server:
            path.unlink(missing_ok=True)
            n += 1
    return n
