"""``biofleet render``: write the sbatch scripts without submitting them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from biofleet.cli.output import console, print_json


def render(
    profile: Annotated[str, typer.Option("--profile", "-p", help="Shipped profile name or YAML path.")],
    out: Annotated[Path, typer.Option(
        help="Directory to write the scripts into (created if missing).")] = Path("scripts"),
    fleet_dir: Annotated[str | None, typer.Option(
        help="Fleet directory on the cluster (default: cluster.workdir/<name>, expanded here).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output only.")] = False,
) -> None:
    """Render one sbatch script per job of the profile, for review; nothing is submitted.

    An elastic server (replicas: {min, max}) has a single-node job of its own; its script is what
    one replica runs, submitted once per replica by the controller in the proxy.

    Example: biofleet render --profile t4x10 --out ./scripts
    """
    from biofleet.profile import load_profile
    from biofleet.render import render_fleet, write_scripts

    p = load_profile(profile)
    paths = write_scripts(render_fleet(p, fleet_dir), out)
    if json_out:
        print_json({"profile": p.name, "scripts": [str(x) for x in paths]})
        return
    c = console()
    for path in paths:
        c.print(f"wrote {path}")
    for key, job in p.elastic_servers().items():
        rng = p.servers[key].elastic
        assert rng is not None
        c.print(f"{job.name}.sbatch is what ONE replica of elastic server {key} runs: up submits none of it; "
                f"the proxy's controller submits it {rng.min} to {rng.max} times, with the load")
    c.print(f"review them, then: sbatch {paths[0]}  (or let biofleet up --profile {profile} submit and track them)")
