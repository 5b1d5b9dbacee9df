"""The fleet registry: one JSON file per live server endpoint.

Jobs write their own record (plain shell + python3, see templates/) as
``<fleet dir>/registry/<server>.<job id>[_<task>].json`` via write-temp-then-rename,
so a reader never sees half a file. ``biofleet register`` writes the same format
for endpoints started outside biofleet (``manual: true``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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
        return f"{self.server}@{self.job_id}" if self.job_id else self.server


def record_filename(server: str, job_id: str | None) -> str:
    return f"{server}.{job_id}.json" if job_id else f"{server}.json"


def write_record(registry_dir: Path, ep: Endpoint) -> Path:
    registry_dir.mkdir(parents=True, exist_ok=True)
    target = registry_dir / record_filename(ep.server, ep.job_id)
    fd, tmp = tempfile.mkstemp(dir=registry_dir, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(ep.model_dump_json(exclude_none=True))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
