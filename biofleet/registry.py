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
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from biofleet.clusterside.jobkit import atomic_write_text, record_filename
from biofleet.names import check_endpoint_url, check_name, check_served_name, redact_userinfo, shown
from biofleet.remote.base import read_small_files

MAX_RECORD_BYTES = 64 * 1024  # a registry record larger than this is skipped
MAX_RECORDS = 10_000  # records read per poll

Name = Annotated[str, AfterValidator(check_name)]
ServedName = Annotated[str, AfterValidator(check_served_name)]
Url = Annotated[str, AfterValidator(check_endpoint_url)]
# Free-text fields a job writes (host names, ids): bounded and on one line.
Word = Annotated[str, Field(max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")]
JobId = Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9_.\[\]%-]+$")]  # as the scheduler prints it


class Endpoint(BaseModel):
    """One registered server. Everything in it is validated: anyone who can write the registry
    directory could put anything there, and a bad record must cost only itself."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    fleet: Word
    server: Name  # server name in the profile (unique within a fleet)
    url: Url  # base URL, e.g. http://10.0.0.5:41234 (no trailing /v1)
    served_names: tuple[ServedName, ...] = Field(min_length=1, max_length=64)
    kind: Literal["generate", "embed"] = "generate"
    engine: Word = "vllm"
    job_id: JobId | None = None  # "123", or "123_4" for an array task
    array_task_id: int | None = None
    node: Word | None = None
    host: Word | None = None
    address: Word | None = None
    port: int | None = Field(None, ge=1, le=65535)
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


def parse_records(texts: list[str], problems: list[str] | None = None) -> tuple[list[Endpoint], int]:
    """Well-formed records from record texts, and how many were not. ``problems``, when given,
    gets one short line per bad record (what is wrong, untrusted values clipped and escaped)."""
    out: list[Endpoint] = []
    bad = 0
    for text in texts:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested absurdly deep
            bad += 1
            if problems is not None:
                problems.append(f"not JSON ({getattr(exc, 'msg', 'nested too deeply')})")
            continue
        try:
            out.append(Endpoint.model_validate(data))
        except ValidationError as exc:
            bad += 1
            if problems is not None:
                problems.append(_problem(data, exc))
    return out, bad


def _problem(data: object, exc: ValidationError) -> str:
    server = data.get("server") if isinstance(data, dict) else None
    who = f"server {shown(server, 40)}" if isinstance(server, str) else "a record"
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "record"
    return f"{who}: {where}: {redact_userinfo(err['msg'][:200])}"




def problems_line(problems: list[str], most: int = 5) -> str:
    """The first ``most`` problems of :func:`read_records`, and how many more: how the proxy's log and
    ``status`` name them."""
    more = f"; and {len(problems) - most} more" if len(problems) > most else ""
    return "; ".join(problems[:most]) + more


def read_records(registry_dir: Path, problems: list[str] | None = None) -> list[Endpoint]:
    """All well-formed records (bounded: regular files only, size and count capped, never blocking);
    ``problems`` as in :func:`parse_records`."""
    texts = read_small_files(str(registry_dir), ".json", MAX_RECORD_BYTES, MAX_RECORDS, problems)
    return parse_records(texts, problems)[0]
