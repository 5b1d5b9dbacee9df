"""``biofleet testcluster start|stop|status``: a throwaway SLURM cluster on this machine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from biofleet.cli.output import console, print_json

DEFAULT_DIR = Path(os.environ.get("BIOFLEET_TESTCLUSTER_DIR", "/tmp/biofleet-testcluster"))

app = typer.Typer(
    help=(
        "A real throwaway SLURM cluster on this machine (slurmctld + one slurmd per fake node, "
        "fake T4/H100 GPUs) for trying biofleet without a cluster. Needs root and "
        "scripts/install-test-deps.sh."
    ),
    no_args_is_help=True,
)

DirOption = Annotated[
    Path,
    typer.Option("--dir", help="Where the cluster keeps its config, state and logs (env BIOFLEET_TESTCLUSTER_DIR)."),
]


@app.command("start")
def start(
    base_dir: DirOption = DEFAULT_DIR,
    t4: Annotated[int, typer.Option("--t4", min=0, max=99, help="Nodes in partition t4flex (1 T4 each).")] = 10,
    h100: Annotated[int, typer.Option("--h100", min=0, max=99, help="Nodes in partition h100flex (4 H100 each).")] = 1,
    cpu: Annotated[int, typer.Option("--cpu", min=0, max=99, help="Nodes in partition cpuspot (no GPU).")] = 2,
    multi_gpu: Annotated[bool, typer.Option(
        "--multi-gpu/--no-multi-gpu", help="Also a 4x L4 node (l4flex) and a 4x T4 node (t4flex), for per-GPU "
        "placement.")] = True,
) -> None:
    """Start the cluster; the daemons keep running after this command exits.

    Example: biofleet testcluster start --t4 4 && export SLURM_CONF=/tmp/biofleet-testcluster/slurm.conf
    """
    import time

    from biofleet.devtools.testcluster import TestCluster

    if t4 + h100 + cpu == 0 and not multi_gpu:
        raise typer.BadParameter("the cluster needs at least one node")
    cluster = TestCluster(base_dir, t4_nodes=t4, h100_nodes=h100, cpu_nodes=cpu, multi_gpu_nodes=multi_gpu)
    t0 = time.monotonic()
    cluster.start()
    out = console(stderr=True)
    out.print(
        f"test cluster {cluster.cluster_name} up in {time.monotonic() - t0:.1f}s: "
        f"{len(cluster.nodes)} nodes, controller on 127.0.0.1:{cluster.ctld_port}, logs in {base_dir / 'log'}",
        soft_wrap=True,
    )
    out.print("Point SLURM's commands (and biofleet) at it with:")
    # The export line alone goes to stdout, so `eval "$(biofleet testcluster start)"` works.
    print(f"export SLURM_CONF={cluster.conf_path}")


@app.command("stop")
def stop(base_dir: DirOption = DEFAULT_DIR) -> None:
    """Stop the cluster's daemons (by the PIDs it recorded) and cancel its jobs.

    Example: biofleet testcluster stop
    """
    from biofleet.devtools.testcluster import load

    cluster = load(base_dir)
    was_up = cluster.is_up()
    cluster.stop()
    console(stderr=True).print("stopped" if was_up else f"no running test cluster in {base_dir}")


@app.command("status")
def status(
    base_dir: DirOption = DEFAULT_DIR,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Is the cluster up, and what state is each node in.

    Example: biofleet testcluster status
    """
    from biofleet.devtools.testcluster import load

    cluster = load(base_dir)
    up = cluster.is_up()
    nodes = cluster.node_states() if up else {}
    if json_out:
        print_json({"up": up, "dir": str(base_dir), "slurm_conf": str(cluster.conf_path) if up else None,
                    "nodes": nodes, "pids": cluster.pids() if up else {}})
    else:
        out = console()
        if not up:
            out.print(f"no running test cluster in {base_dir} (start one with: biofleet testcluster start)",
                      soft_wrap=True)
        else:
            out.print(f"up: SLURM_CONF={cluster.conf_path}")
            by_state: dict[str, list[str]] = {}
            for name, state in nodes.items():
                by_state.setdefault(state, []).append(name)
            for state, names in sorted(by_state.items()):
                out.print(f"  {state:10} {len(names):3}  {', '.join(names)}")
    if not up:
        raise typer.Exit(1)
