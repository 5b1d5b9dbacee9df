"""Errors biofleet raises on purpose.

The CLI turns each into a message and an exit code in one place
(``biofleet.cli.main``); library code never prints.

    BiofleetError                 exit 1 unless stated
    ├── ProfileError              exit 2: the profile itself is invalid (file:line field: message)
    ├── RenderError               exit 2: a value could not be rendered safely
    ├── FleetError                a lifecycle step failed (submission, state, missing fleet)
    └── (CommandError, UnknownHostError live in biofleet.remote.base and subclass BiofleetError)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class BiofleetError(Exception):
    exit_code = 1


def validation_message(err: Mapping[str, Any]) -> str:
    """One pydantic error's message as a user should read it: without the "Value error, " that pydantic puts
    before what a validator raised."""
    return str(err["msg"]).removeprefix("Value error, ")


@dataclass(frozen=True)
class ProfileIssue:
    file: str | None
    line: int | None
    path: str  # dotted field path, e.g. servers.coder.dtype
    message: str

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}" if self.line else self.file
            where += "  "
        field = f"{self.path}: " if self.path else ""
        return f"{where}{field}{self.message}"


class ProfileError(BiofleetError):
    exit_code = 2

    def __init__(self, issues: list[ProfileIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class RenderError(BiofleetError):
    exit_code = 2


class FleetError(BiofleetError):
    pass
