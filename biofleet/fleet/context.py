"""A profile bound to where it runs: the runner, the scheduler and the fleet directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from biofleet.backends import make_scheduler
from biofleet.backends.base import Scheduler
from biofleet.errors import FleetError
from biofleet.fleet.state import load_state
from biofleet.paths import FleetPaths
from biofleet.profile import Profile, SSHSettings
from biofleet.remote.base import Runner


@dataclass
class Fleet:
    """A profile bound to where it runs: runner (local/SSH), scheduler (SLURM/local), fleet dir."""

    profile: Profile
    runner: Runner
    scheduler: Scheduler
    paths: FleetPaths

    @property
    def backend(self) -> str:
        return self.scheduler.name

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_ssh_target(target: str) -> SSHSettings:
    """``user@host[:port]`` -> SSHSettings, checked as a profile's are: a bad part is an error that names it
    (the user part is never echoed: a ``user:password@host`` would otherwise print the password)."""
    from pydantic import ValidationError

    from biofleet.errors import ProfileError, ProfileIssue, validation_message
    from biofleet.names import shown

    user, _, hostport = target.rpartition("@")
    host, _, port = hostport.partition(":")
    out: dict[str, Any] = {"host": host}
    if user:
        out["user"] = user
    if port:
        if not port.isdigit():
            raise FleetError(f"--ssh {shown(hostport)}: the port must be a number (user@host:port)")
        out["port"] = int(port)
    try:
        return SSHSettings(**out)
    except ValidationError as exc:
        issues = []
        for e in exc.errors():
            part = str(e["loc"][0]) if e["loc"] else "target"
            why = "not a valid user name (letters, digits, '.', '_', '-')" if part == "user" else \
                validation_message(e)
            issues.append(ProfileIssue(None, None, "--ssh", f"{part}: {why}; give user@host[:port]"))
        raise ProfileError(issues) from None


def open_fleet(
    profile: Profile,
    *,
    backend: str = "auto",
    ssh: str | None = None,
    trust_new_host: bool = False,
) -> Fleet:
    """Connect to where the fleet runs and decide the scheduler.

    ``backend``: ``slurm``, ``local`` or ``auto`` (an existing fleet keeps the backend
    it was started with; a new one uses SLURM when ``sbatch`` is there, else local).
    """
    runner = _connect(profile, ssh, trust_new_host)
    try:
        paths = FleetPaths(runner.expand_path(profile.cluster.workdir).rstrip("/") + "/" + profile.name)
        chosen = backend
        if chosen == "auto":
            state = load_state(runner, paths)
            if state is not None:
                chosen = state.backend
            else:
                chosen = "slurm" if runner.which("sbatch") else "local"
        env = {"SLURM_CONF": profile.cluster.slurm_conf} if profile.cluster.slurm_conf else None
        scheduler = make_scheduler(chosen, runner, state_dir=paths.root + "/local-jobs", env=env)
    except BaseException:
        runner.close()
        raise
    return Fleet(profile, runner, scheduler, paths)


def _connect(profile: Profile, ssh: str | None, trust_new_host: bool) -> Runner:
    settings: SSHSettings | None = parse_ssh_target(ssh) if ssh else profile.cluster.ssh
    if settings is None:
        from biofleet.remote.local import LocalRunner

        return LocalRunner()
    from biofleet.remote.ssh import SSHRunner

    return SSHRunner(
        settings.host, user=settings.user, port=settings.port,
        key_file=_expand_local(settings.key_file), known_hosts=_expand_local(settings.known_hosts),
        allow_unknown_host=trust_new_host or settings.trust_new_host,
    )


def _expand_local(path: str | None) -> str | None:
    return os.path.expandvars(os.path.expanduser(path)) if path else None
