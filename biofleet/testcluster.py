"""A real, throwaway SLURM cluster on one machine, for tests and demos.

One ``slurmctld`` and one ``slurmd -N <name>`` per node run on this host, all
on loopback with their own free ports, with every state, spool, log and pid
file under ``base_dir``. Fake GPUs are declared through ``gres.conf`` entries
that point at plain files, so jobs asking for ``--gres=gpu:t4:1`` get
scheduled and see ``CUDA_VISIBLE_DEVICES`` exactly as on a GPU node.

Point SLURM's client commands at it with ``SLURM_CONF=<base_dir>/slurm.conf``
(see :meth:`TestCluster.env`); nothing in ``/etc/slurm`` is read or written.

Authentication uses the machine's munged (``/run/munge``): it is reused when
already running and started as the ``munge`` user otherwise. munged is shared
machine infrastructure (another cluster may use it), so :meth:`stop` leaves it
running; the SLURM daemons are ended by their own PIDs.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from biofleet.errors import BiofleetError
from biofleet.procs import pid_alive, pid_cmdline

MUNGE_DIR = Path("/run/munge")
MUNGE_SOCKET = MUNGE_DIR / "munge.socket.2"
MUNGE_KEY = Path("/etc/munge/munge.key")
REQUIRED_PROGRAMS = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "munged", "munge")
INSTALL_HINT = "run: sudo bash scripts/install-test-deps.sh"


class TestClusterError(BiofleetError):
    """The test cluster could not be started or stopped."""

    __test__ = False  # not a pytest test class despite the name


@dataclass(frozen=True)
class NodeSpec:
    name: str
    partition: str
    port: int
    cpus: int
    memory_mb: int
    gpu_type: str | None = None
    gpu_count: int = 0
    weight: int = 1  # SLURM allocates the lowest-weight nodes that fit first


def missing_programs() -> list[str]:
    """Programs the test cluster needs that are not installed (sbin dirs included)."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin:/usr/local/sbin"
    return [p for p in REQUIRED_PROGRAMS if shutil.which(p, path=path) is None]


def _program(name: str) -> str:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin:/usr/local/sbin"
    found = shutil.which(name, path=path)
    if found is None:
        raise TestClusterError(f"{name} is not installed; {INSTALL_HINT}")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel considers free right now (tiny race until the daemon binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list[int]:
    # Hold all sockets open while choosing so the kernel never hands out the same port twice.
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def munge_works(timeout: float = 5) -> bool:
    """True when a munged answers on the default socket (encode + decode round trip)."""
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=timeout)
        if cred.returncode != 0:
            return False
        check = subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=timeout)
        return check.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_munged(timeout: float = 10) -> bool:
    """Make sure munged runs; return True when this call started it.

    Reuses a running munged. Otherwise prepares what Debian's service unit would
    (a /run/munge owned by munge, a key) and starts munged as the munge user.
    """
    if munge_works():
        return False
    if os.geteuid() != 0:
        raise TestClusterError("munged is not running and starting it needs root; " + INSTALL_HINT)
    try:
        munge_user = pwd.getpwnam("munge")
    except KeyError:
        raise TestClusterError(f"there is no 'munge' user; {INSTALL_HINT}") from None
    uid, gid = munge_user.pw_uid, munge_user.pw_gid
    # /run is a tmpfs: /run/munge vanishes on every boot of a fresh container, and munged refuses
    # to start unless its socket dir, log dir, state dir and key dir are owned by the munge user.
    for d, mode in ((MUNGE_DIR, 0o755), (Path("/var/log/munge"), 0o700),
                    (Path("/var/lib/munge"), 0o711), (Path("/etc/munge"), 0o700)):
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, uid, gid)
        os.chmod(d, mode)
    if not MUNGE_KEY.exists():
        mungekey = shutil.which("mungekey", path="/usr/sbin:/usr/bin:/sbin")
        if mungekey:
            subprocess.run([mungekey, "--create", f"--keyfile={MUNGE_KEY}"], check=True, capture_output=True)
        else:
            MUNGE_KEY.write_bytes(os.urandom(1024))
    os.chown(MUNGE_KEY, uid, gid)
    os.chmod(MUNGE_KEY, 0o600)
    stale_socket = MUNGE_SOCKET.exists()
    # munged forks into the background itself; --force lets it replace a stale socket left by a
    # munged that died (otherwise it refuses "socket already exists").
    argv = ["runuser", "-u", "munge", "--", _program("munged")]
    if stale_socket:
        argv.append("--force")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise TestClusterError(f"munged failed to start (exit {proc.returncode}): {proc.stderr.strip()}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if munge_works():
            return True
        time.sleep(0.1)
    raise TestClusterError("munged started but does not answer on /run/munge/munge.socket.2")


class TestCluster:
    """slurmctld + one slurmd per node on this host; everything lives under ``base_dir``.

    ``with TestCluster(tmp) as c: subprocess.run(["sbatch", ...], env={**os.environ, **c.env()})``
    """

    __test__ = False  # keep pytest from collecting this class

    def __init__(
        self,
        base_dir: Path | str,
        *,
        t4_nodes: int = 10,
        h100_nodes: int = 1,
        cpu_nodes: int = 2,
        multi_gpu_nodes: bool = True,
        ctld_port: int | None = None,
        boot_timeout: float = 60,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.t4_nodes = t4_nodes
        self.h100_nodes = h100_nodes
        self.cpu_nodes = cpu_nodes
        self.multi_gpu_nodes = multi_gpu_nodes
        self.ctld_port = ctld_port
        self.boot_timeout = boot_timeout
        # A name per instance: SLURM keys state by cluster name, and two clusters on one host must not share it.
        self.cluster_name = f"bft{os.getpid() % 100000}x{int(time.time() * 1000) % 100000}"
        self.nodes: list[NodeSpec] = []
        self._procs: dict[str, subprocess.Popen] = {}
        self.started_munged = False

    # ----- paths
    @property
    def conf_path(self) -> Path:
        return self.base_dir / "slurm.conf"

    @property
    def state_file(self) -> Path:
        return self.base_dir / "cluster.json"

    def env(self) -> dict[str, str]:
        """Environment that points SLURM's client commands (and biofleet) at this cluster."""
        return {"SLURM_CONF": str(self.conf_path)}

    def _run_env(self) -> dict[str, str]:
        return {**os.environ, **self.env()}

    # ----- lifecycle
    def __enter__(self) -> TestCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Write the config, start the daemons and wait until every node is idle."""
        missing = missing_programs()
        if missing:
            raise TestClusterError(f"not installed: {', '.join(missing)}; {INSTALL_HINT}")
        if self.is_up():
            raise TestClusterError(f"a test cluster already runs from {self.base_dir}; stop it first")
        self.started_munged = ensure_munged()
        t0 = time.monotonic()
        self._write_config()
        try:
            self._start_daemons()
            self._wait_idle(t0 + self.boot_timeout)
        except BaseException:
            self.stop()
            raise

    def _plan_nodes(self) -> None:
        n = self.t4_nodes + self.h100_nodes + self.cpu_nodes + (2 if self.multi_gpu_nodes else 0)
        ports = _free_ports(n + (0 if self.ctld_port else 1))
        if not self.ctld_port:
            self.ctld_port = ports.pop()
        nodes = []
        for i in range(self.t4_nodes):
            nodes.append(NodeSpec(f"t4-{i + 1:02d}", "t4flex", ports.pop(), 8, 30000, "t4", 1))
        for i in range(self.h100_nodes):
            nodes.append(NodeSpec(f"h100-{i + 1:02d}", "h100flex", ports.pop(), 32, 500000, "h100", 4))
        if self.multi_gpu_nodes:
            # Multi-GPU nodes for per-GPU placement (Path B: a 4x L4 node and a 4x T4 node). The
            # 4x T4 node weighs more, so single-T4 jobs fill the single-T4 nodes first.
            nodes.append(NodeSpec("l4x4-01", "l4flex", ports.pop(), 32, 250000, "l4", 4))
            nodes.append(NodeSpec("t4x4-01", "t4flex", ports.pop(), 32, 250000, "t4", 4, weight=100))
        for i in range(self.cpu_nodes):
            nodes.append(NodeSpec(f"cpu-{i + 1:02d}", "cpuspot", ports.pop(), 16, 60000))
        self.nodes = nodes

    def _write_config(self) -> None:
        self._plan_nodes()
        b = self.base_dir
        for sub in ("state", "spool", "log", "run", "dev"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname().split(".")[0]
        lines = [
            "# Generated by biofleet.testcluster: a throwaway cluster on one host. Do not use in production.",
            f"ClusterName={self.cluster_name}",
            # slurmctld refuses to start unless SlurmctldHost names this machine; the address keeps it on loopback.
            f"SlurmctldHost={host}(127.0.0.1)",
            # Non-default ports so a real cluster's daemons (6817/6818) are never touched.
            f"SlurmctldPort={self.ctld_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # Jobs and daemons run as root in a test container; there is no slurm user to switch to.
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={b / 'state'}",
            # %n: every slurmd on this host needs its own spool dir, log and pid file.
            f"SlurmdSpoolDir={b / 'spool' / '%n'}",
            f"SlurmctldPidFile={b / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={b / 'run' / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={b / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={b / 'log' / 'slurmd-%n.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # Containers have no writable cgroup hierarchy: track job processes through /proc and
            # bind no tasks, so no cgroup plugin is ever loaded.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            # Accounting off, as on many small clusters: sacct then fails with
            # "Slurm accounting storage is disabled", a path biofleet must handle.
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            # cons_tres: several jobs share a node by CPU, and GPUs are a typed GRES (gpu:t4:1).
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "GresTypes=gpu",
            # The fake nodes declare more CPUs/memory than this host has; use the config values
            # instead of draining nodes for "Low socket*core*thread count".
            "SlurmdParameters=config_overrides",
            # A node that re-registers after a slurmd restart becomes usable again without an admin.
            "ReturnToService=2",
            # Finished jobs leave squeue after a few seconds instead of 5 minutes, so tests see them go.
            "MinJobAge=5",
            "SchedulerType=sched/backfill",
            # batch_sched_delay defaults to 3 s: every batch job would wait for a 3 s scheduling tick.
            "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            "InactiveLimit=0",
            "KillWait=2",
            "Waittime=0",
            # Dead nodes are noticed late on purpose: a loaded CI host may stall a slurmd for a while.
            "HealthCheckInterval=0",
        ]
        gres = [
            # No NVML/hardware probing: every GPU is declared by hand below.
            "AutoDetect=off",
        ]
        for node in self.nodes:
            # slurmd expands %n in SlurmdSpoolDir but does not create the directory itself.
            (b / "spool" / node.name).mkdir(parents=True, exist_ok=True)
            gres_attr = f" Gres=gpu:{node.gpu_type}:{node.gpu_count}" if node.gpu_type else ""
            # One NodeName line per node: each slurmd listens on its own Port on 127.0.0.1.
            # NodeHostname=localhost so nothing needs /etc/hosts entries for t4-01 and friends.
            lines.append(
                f"NodeName={node.name} NodeAddr=127.0.0.1 NodeHostname=localhost Port={node.port} "
                f"CPUs={node.cpus} RealMemory={node.memory_mb}{gres_attr} Weight={node.weight} State=UNKNOWN"
            )
            if node.gpu_type:
                # Symlinks to /dev/null stand in for /dev/nvidiaN: slurmd insists on a character
                # device (a plain file is rejected and the job then gets no CUDA_VISIBLE_DEVICES),
                # and the trailing digit of the name becomes the index in CUDA_VISIBLE_DEVICES.
                dev_dir = b / "dev" / node.name
                dev_dir.mkdir(parents=True, exist_ok=True)
                for k in range(node.gpu_count):
                    link = dev_dir / f"nvidia{k}"
                    if not link.is_symlink():
                        link.symlink_to("/dev/null")
                files = f"{dev_dir}/nvidia[0-{node.gpu_count - 1}]" if node.gpu_count > 1 else f"{dev_dir}/nvidia0"
                gres.append(f"NodeName={node.name} Name=gpu Type={node.gpu_type} File={files}")
        partitions: dict[str, list[str]] = {}
        for node in self.nodes:
            partitions.setdefault(node.partition, []).append(node.name)
        for i, (part, names) in enumerate(partitions.items()):
            default = "YES" if i == 0 else "NO"
            lines.append(
                f"PartitionName={part} Nodes={','.join(names)} Default={default} MaxTime=INFINITE State=UP"
            )
        self.conf_path.write_text("\n".join(lines) + "\n")
        (b / "gres.conf").write_text("\n".join(gres) + "\n")

    def _spawn(self, key: str, argv: list[str]) -> None:
        log = open(self.base_dir / "log" / f"{key}.stdout", "ab")
        try:
            # -D keeps each daemon in the foreground so the PID we hold is the daemon itself;
            # a new session detaches it from the terminal of `biofleet testcluster start`.
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self._run_env(), start_new_session=True, close_fds=True,
            )
        finally:
            log.close()
        self._procs[key] = proc
        self._save_state()

    def _start_daemons(self) -> None:
        conf = str(self.conf_path)
        # -i: ignore saved state (a fresh cluster every time), -c: clear old jobs.
        self._spawn("slurmctld", [_program("slurmctld"), "-D", "-i", "-f", conf])
        self._wait_ctld()
        for node in self.nodes:
            self._spawn(f"slurmd-{node.name}", [_program("slurmd"), "-D", "-N", node.name, "-f", conf])

    def _save_state(self) -> None:
        data = {
            "cluster_name": self.cluster_name,
            "conf": str(self.conf_path),
            "ctld_port": self.ctld_port,
            "pids": {k: p.pid for k, p in self._procs.items()},
            "nodes": [n.name for n in self.nodes],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.state_file)

    def _check_alive(self) -> None:
        for key, proc in self._procs.items():
            if proc.poll() is not None:
                raise TestClusterError(
                    f"{key} exited with {proc.returncode} during start; last log lines:\n{self._log_tail(key)}"
                )

    def _log_tail(self, key: str, n: int = 15) -> str:
        name = "slurmctld.log" if key == "slurmctld" else f"{key}.log"
        out = []
        for f in (self.base_dir / "log" / name, self.base_dir / "log" / f"{key}.stdout"):
            if f.exists():
                out += f.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(out) or "(no log)"

    def _wait_ctld(self) -> None:
        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            self._check_alive()
            r = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, env=self._run_env(), timeout=10)
            if "UP" in r.stdout:
                return
            time.sleep(0.2)
        raise TestClusterError(f"slurmctld did not answer within {self.boot_timeout}s:\n{self._log_tail('slurmctld')}")

    def node_states(self) -> dict[str, str]:
        """{node name: sinfo state} for every node, e.g. {"t4-01": "idle"}."""
        r = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%N %T"],
            capture_output=True, text=True, env=self._run_env(), timeout=10,
        )
        if r.returncode != 0:
            return {}
        states = {}
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                states[parts[0]] = parts[1]
        return states

    def _wait_idle(self, deadline: float) -> None:
        want = {n.name for n in self.nodes}
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            self._check_alive()
            states = self.node_states()
            if want <= states.keys() and all(states[n] == "idle" for n in want):
                return
            time.sleep(0.25)
        bad = {n: states.get(n, "?") for n in sorted(want) if states.get(n) != "idle"}
        first = next(iter(bad), None)
        tail = self._log_tail(f"slurmd-{first}") if first else ""
        raise TestClusterError(f"nodes not idle after {self.boot_timeout}s: {bad}\n{tail}")

    def is_up(self) -> bool:
        """True when this base_dir's slurmctld answers."""
        if not self.conf_path.exists() or not self.state_file.exists():
            return False
        pid = self._recorded_pids().get("slurmctld")
        if not pid or not self._owned(pid):
            return False
        r = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, env=self._run_env(), timeout=10)
        return "UP" in r.stdout

    def _recorded_pids(self) -> dict[str, int]:
        try:
            return {k: int(v) for k, v in json.loads(self.state_file.read_text())["pids"].items()}
        except (OSError, ValueError, KeyError):
            return {}

    def _owned(self, pid: int) -> bool:
        # Guards against PID reuse: only a process started with this cluster's slurm.conf is ours.
        return pid_alive(pid) and str(self.conf_path) in pid_cmdline(pid)

    def stop(self, timeout: float = 15) -> None:
        """End this cluster's daemons by PID (SIGTERM, then SIGKILL). Safe to call twice."""
        pids = self._recorded_pids()
        pids.update({k: p.pid for k, p in self._procs.items()})
        if pids.get("slurmctld") and self._owned(pids["slurmctld"]):
            self._cancel_all_jobs()
        # slurmds first, controller last, so nodes do not log a lost controller on the way down.
        order = sorted(pids, key=lambda k: k == "slurmctld")
        ours = [pids[k] for k in order if self._owned(pids[k])]
        for pid in ours:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        for pid in ours:
            while pid_alive(pid) and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.05)
            if pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._reap(block=True)
        # Job steps (slurmstepd) and job scripts outlive a stopped slurmd. They inherited
        # SLURM_CONF=<this cluster's slurm.conf>, which is how we find exactly ours.
        self._end_leftovers(deadline)
        self._procs.clear()
        self.state_file.unlink(missing_ok=True)

    def _cancel_all_jobs(self) -> None:
        r = subprocess.run(["squeue", "--noheader", "--format=%A"], capture_output=True, text=True,
                           env=self._run_env(), timeout=10)
        ids = sorted({ln.strip() for ln in r.stdout.splitlines() if ln.strip().isdigit()})
        if not ids:
            return
        subprocess.run(["scancel", *ids], capture_output=True, env=self._run_env(), timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            r = subprocess.run(["squeue", "--noheader", "--format=%A", "--states=RUNNING,COMPLETING"],
                               capture_output=True, text=True, env=self._run_env(), timeout=10)
            if not r.stdout.strip():
                return
            time.sleep(0.2)

    def _end_leftovers(self, deadline: float) -> None:
        """SIGKILL this cluster's surviving slurmstepd processes and everything below them.

        Only a slurmstepd whose environment has SLURM_CONF=<this slurm.conf> counts (slurmd passed
        it on), and then only its descendants (the job scripts): a user's shell that merely
        exported SLURM_CONF is never touched.
        """
        marker = f"SLURM_CONF={self.conf_path}".encode()
        parents: dict[int, int] = {}
        roots = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    parents[pid] = int(fh.read().rsplit(")", 1)[1].split()[1])
                if pid_cmdline(pid).startswith("slurmstepd"):
                    with open(f"/proc/{pid}/environ", "rb") as fh:
                        if marker in fh.read().split(b"\0"):
                            roots.append(pid)
            except (OSError, ValueError, IndexError):
                continue
        doomed = set(roots)
        grew = True
        while grew:
            grew = False
            for pid, ppid in parents.items():
                if ppid in doomed and pid not in doomed:
                    doomed.add(pid)
                    grew = True
        doomed.discard(os.getpid())
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _reap(self, block: bool = False) -> None:
        for proc in self._procs.values():
            try:
                proc.wait(timeout=5 if block else 0)
            except subprocess.TimeoutExpired:
                pass

    def pids(self) -> dict[str, int]:
        """{daemon name: pid} of the daemons this cluster started (recorded in cluster.json)."""
        return self._recorded_pids()


def load(base_dir: Path | str) -> TestCluster:
    """A handle on a cluster started earlier from ``base_dir`` (e.g. by another process), to stop or inspect it."""
    cluster = TestCluster(base_dir)
    try:
        data = json.loads(cluster.state_file.read_text())
        cluster.cluster_name = data.get("cluster_name", cluster.cluster_name)
        cluster.ctld_port = data.get("ctld_port")
    except (OSError, ValueError):
        pass
    return cluster
