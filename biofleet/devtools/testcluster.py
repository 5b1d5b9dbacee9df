"""A real, throwaway SLURM cluster on one machine, for tests and demos.

One ``slurmctld`` and one ``slurmd -N <name>`` per node run on this host, all
on loopback with their own free ports, with every state, spool, log and pid
file under ``base_dir``. Fake GPUs are declared through ``gres.conf`` entries
that point at plain files, so jobs asking for ``--gres=gpu:t4:1`` get
scheduled and see ``CUDA_VISIBLE_DEVICES`` exactly as on a GPU node.

Point SLURM's client commands at it with ``SLURM_CONF=<base_dir>/slurm.conf``
(see :meth:`TestCluster.env`); nothing in ``/etc/slurm`` is read or written.

With ``accounting=True`` (the default) the cluster also keeps real job accounting,
so ``sacct`` answers as on a production cluster: a private ``mariadbd`` (its own
datadir, unix socket and loopback port under ``base_dir``, copied from a datadir
template that ``mariadb-install-db`` makes once per MariaDB version into
``~/.cache/biofleet``) and a ``slurmdbd`` in front of it, with the cluster
registered through ``sacctmgr``. ``accounting=False`` gives the other real case,
a cluster where ``sacct`` fails with "Slurm accounting storage is disabled".

Authentication uses the machine's munged (``/run/munge``): it is reused when
already running and started as the ``munge`` user otherwise. munged is shared
machine infrastructure (another cluster may use it), so :meth:`stop` leaves it
running; the SLURM daemons (and the cluster's own mariadbd) are ended by their own PIDs.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from biofleet.errors import BiofleetError
from biofleet.procs import pid_alive, pid_cmdline

MUNGE_DIR = Path("/run/munge")
MUNGE_SOCKET = MUNGE_DIR / "munge.socket.2"
MUNGE_KEY = Path("/etc/munge/munge.key")
REQUIRED_PROGRAMS = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "munged", "munge")
ACCOUNTING_PROGRAMS = ("slurmdbd", "sacctmgr", "sacct", "mariadbd", "mariadb-install-db")
# The accounting database starts from a copy of this datadir (mariadb-install-db takes ~0.7 s, a copy ~0.05 s).
MARIADB_TEMPLATE_DIR = Path("~/.cache/biofleet/mariadb-templates")
# Used by both mariadb-install-db and mariadbd: a small InnoDB (the default redo log alone is 96 MB per
# cluster). slurmdbd logs "Database settings not recommended values" for these; that is expected here.
MARIADB_SIZE_OPTS = ("--innodb-log-file-size=4M", "--innodb-buffer-pool-size=16M")
# sun_path in struct sockaddr_un holds 108 bytes, the terminating NUL included.
UNIX_SOCKET_PATH_MAX = 107
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


def missing_programs(accounting: bool = True) -> list[str]:
    """Programs the test cluster needs that are not installed (sbin dirs included)."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin:/usr/local/sbin"
    wanted = REQUIRED_PROGRAMS + (ACCOUNTING_PROGRAMS if accounting else ())
    return [p for p in wanted if shutil.which(p, path=path) is None]


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


def _free_ports(n: int, exclude: frozenset[int] = frozenset()) -> list[int]:
    # Hold all sockets open while choosing so the kernel never hands out the same port twice;
    # ``exclude``: ports an earlier call chose that are not bound yet.
    socks = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)  # held even when skipped, so the next bind gets another port
            if s.getsockname()[1] not in exclude:
                ports.append(s.getsockname()[1])
        return ports
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


def _user_name() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def mariadb_template(cache_dir: Path | str = MARIADB_TEMPLATE_DIR, timeout: float = 120) -> Path:
    """An initialised MariaDB datadir to copy, made by mariadb-install-db on first use and kept.

    One per MariaDB version, OS user and size options, under ``cache_dir``. It is built in a
    temporary directory and renamed into place, so two test sessions starting at once never
    see (or copy) a half-written template: the loser of the rename just discards its own.
    """
    version = subprocess.run([_program("mariadbd"), "--version"], capture_output=True, text=True,
                             timeout=timeout).stdout.strip()
    user = _user_name()
    key = hashlib.sha256("\0".join((version, user, *MARIADB_SIZE_OPTS)).encode()).hexdigest()[:16]
    root = Path(cache_dir).expanduser()
    template = root / f"datadir-{key}"
    if (template / "mysql").is_dir():
        return template
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        data = work / "data"
        # --no-defaults: never read /etc/mysql (the system instance's datadir, socket and port).
        # Root logs in over the unix socket only (unix_socket auth); slurmdbd gets its own user per cluster.
        argv = [_program("mariadb-install-db"), "--no-defaults", f"--datadir={data}", f"--user={user}",
                "--auth-root-authentication-method=socket", "--skip-test-db", *MARIADB_SIZE_OPTS]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0 or not (data / "mysql").is_dir():
            tail = "\n".join((r.stdout + r.stderr).splitlines()[-15:])
            raise TestClusterError(f"mariadb-install-db failed (exit {r.returncode}):\n{tail}")
        try:
            os.rename(data, template)
        except OSError:
            if not (template / "mysql").is_dir():  # lost the race to a finished template: fine; else fail
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return template


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
        accounting: bool = True,
        boot_timeout: float = 60,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.t4_nodes = t4_nodes
        self.h100_nodes = h100_nodes
        self.cpu_nodes = cpu_nodes
        self.multi_gpu_nodes = multi_gpu_nodes
        self.ctld_port = ctld_port
        self.boot_timeout = boot_timeout
        # slurmdbd + a private MariaDB, so sacct reports finished jobs; False: "accounting storage is disabled".
        self.accounting = accounting
        self.dbd_port: int | None = None
        self.db_port: int | None = None
        self._db_password = ""  # made per start; only slurmdbd.conf (mode 0600) keeps it
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

    @property
    def dbd_conf_path(self) -> Path:
        # slurmdbd has no option for its config file: it reads slurmdbd.conf next to $SLURM_CONF.
        return self.base_dir / "slurmdbd.conf"

    @property
    def db_dir(self) -> Path:
        return self.base_dir / "db"

    @property
    def db_socket(self) -> Path:
        return self.base_dir / "run" / "mariadb.sock"

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
        missing = missing_programs(self.accounting)
        if missing:
            raise TestClusterError(f"not installed: {', '.join(missing)}; {INSTALL_HINT}")
        if self.is_up():
            raise TestClusterError(f"a test cluster already runs from {self.base_dir}; stop it first")
        self.started_munged = ensure_munged()
        t0 = time.monotonic()
        self._write_config()
        try:
            if self.accounting:
                self._start_accounting(t0 + self.boot_timeout)
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
        self._plan_accounting()
        b = self.base_dir
        # A fresh cluster every time: slurmctld refuses a StateSaveLocation that an earlier cluster
        # (another ClusterName) wrote, so a second start from the same base_dir would fail.
        shutil.rmtree(b / "state", ignore_errors=True)
        for sub in ("state", "spool", "log", "run", "dev"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname().split(".")[0]
        lines = [
            "# Generated by biofleet.devtools.testcluster: a throwaway cluster on one host. Do not use in production.",
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
            *self._accounting_conf_lines(),
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
        if self.accounting:
            self._write_dbd_config(host)

    # ----- accounting: slurmdbd in front of a private MariaDB
    def _plan_accounting(self) -> None:
        if not self.accounting:
            return
        taken = frozenset({self.ctld_port or 0, *(n.port for n in self.nodes)})
        self.dbd_port, self.db_port = _free_ports(2, exclude=taken)
        if len(str(self.db_socket)) > UNIX_SOCKET_PATH_MAX:
            raise TestClusterError(
                f"the MariaDB socket path {self.db_socket} is {len(str(self.db_socket))} bytes, over the "
                f"{UNIX_SOCKET_PATH_MAX}-byte limit of a unix socket path; use a shorter base_dir"
            )
        self._db_password = secrets.token_urlsafe(24)  # [A-Za-z0-9_-]: safe inside SQL quotes and the conf

    def _accounting_conf_lines(self) -> list[str]:
        if not self.accounting:
            # Accounting off, as on many small clusters: sacct then fails with
            # "Slurm accounting storage is disabled", a path biofleet must handle.
            return ["AccountingStorageType=accounting_storage/none"]
        return [
            # Every job's final state and exit code go to this cluster's own slurmdbd, so sacct
            # still knows a job after it left squeue (MinJobAge below).
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={self.dbd_port}",
        ]

    def _write_dbd_config(self, host: str) -> None:
        b = self.base_dir
        lines = [
            "# Generated by biofleet.devtools.testcluster: the accounting daemon of a throwaway cluster.",
            "AuthType=auth/munge",
            # slurmdbd refuses to start unless DbdHost names this machine; DbdAddr keeps it on loopback.
            f"DbdHost={host}",
            "DbdAddr=127.0.0.1",
            f"DbdPort={self.dbd_port}",
            "SlurmUser=root",
            "DebugLevel=info",
            f"LogFile={b / 'log' / 'slurmdbd.log'}",
            f"PidFile={b / 'run' / 'slurmdbd.pid'}",
            "StorageType=accounting_storage/mysql",
            # TCP to the cluster's own mariadbd: slurmdbd cannot be given a socket path, and
            # "localhost" would mean the system MariaDB's default socket.
            "StorageHost=127.0.0.1",
            f"StoragePort={self.db_port}",
            "StorageUser=slurm",
            f"StoragePass={self._db_password}",
            "StorageLoc=slurm_acct_db",
        ]
        # slurmdbd refuses a slurmdbd.conf that is readable by anyone but SlurmUser (it holds the password).
        fd = os.open(self.dbd_conf_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fd, 0o600)  # also when the file was already there with other modes
            fh.write("\n".join(lines) + "\n")

    def _start_accounting(self, deadline: float) -> None:
        """mariadbd (from the cached template), then slurmdbd, then register the cluster."""
        template = mariadb_template()
        shutil.rmtree(self.db_dir, ignore_errors=True)
        shutil.copytree(template, self.db_dir, symlinks=True)
        # Read by mariadbd once at startup, deleted once it serves: the password is never on a command line.
        init = self.base_dir / "run" / "mariadb-init.sql"
        fd = os.open(init, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{self._db_password}';\n"
                     "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';\n")
        run = self.base_dir / "run"
        try:
            self._spawn("mariadbd", [
                # --no-defaults first: nothing from /etc/mysql, so never the system instance's datadir,
                # socket (/run/mysqld) or port 3306.
                _program("mariadbd"), "--no-defaults", f"--datadir={self.db_dir}", f"--socket={self.db_socket}",
                "--bind-address=127.0.0.1", f"--port={self.db_port}", f"--pid-file={run / 'mariadbd.pid'}",
                f"--log-error={self.base_dir / 'log' / 'mariadbd.log'}", f"--user={_user_name()}",
                f"--init-file={init}", "--skip-name-resolve", "--skip-log-bin",
                # Throwaway data: no fsync, no doublewrite buffer, and a stop that skips the final flush
                # and buffer pool dump (the datadir is deleted right after).
                "--innodb-flush-log-at-trx-commit=0", "--skip-innodb-doublewrite", "--innodb-flush-method=nosync",
                "--innodb-fast-shutdown=3", "--skip-innodb-buffer-pool-dump-at-shutdown",
                "--skip-innodb-buffer-pool-load-at-startup", *MARIADB_SIZE_OPTS,
            ])
            # The port listens before the init file has run; the server greeting comes only after it.
            self._wait_port("mariadbd", self.db_port, deadline, greeting=True)
        finally:
            init.unlink(missing_ok=True)
        # No argument names this cluster: slurmdbd reads slurmdbd.conf from $SLURM_CONF's directory.
        self._spawn("slurmdbd", [_program("slurmdbd"), "-D"])
        self._wait_port("slurmdbd", self.dbd_port, deadline)
        # A cluster gets a "root" account with root's association; another user running the
        # cluster needs one too, or its jobs are recorded without an association.
        self._sacctmgr("add", "cluster", self.cluster_name)
        user = _user_name()
        if user != "root":
            self._sacctmgr("add", "user", user, "account=root", f"cluster={self.cluster_name}")

    def _sacctmgr(self, *args: str) -> None:
        # -i: commit without asking.
        r = subprocess.run(["sacctmgr", "-i", *args], capture_output=True, text=True, env=self._run_env(), timeout=30)
        if r.returncode != 0:
            raise TestClusterError(f"sacctmgr {' '.join(args)} failed (exit {r.returncode}): "
                                   f"{(r.stderr or r.stdout).strip()}\n{self._log_tail('slurmdbd')}")

    def _wait_port(self, key: str, port: int | None, deadline: float, *, greeting: bool = False) -> None:
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with socket.create_connection(("127.0.0.1", port or 0), timeout=1) as s:
                    if not greeting or s.recv(1):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TestClusterError(f"{key} did not answer on 127.0.0.1:{port} within {self.boot_timeout}s:\n"
                               f"{self._log_tail(key)}")

    def _spawn(self, key: str, argv: list[str]) -> None:
        log = open(self.base_dir / "log" / f"{key}.stdout", "ab")  # noqa: SIM115 - handed to the daemon
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
            "accounting": self.accounting,
            "dbd_port": self.dbd_port,
            "db_port": self.db_port,
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
        if not pid or not self._owned("slurmctld", pid):
            return False
        r = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, env=self._run_env(), timeout=10)
        return "UP" in r.stdout

    def _recorded_pids(self) -> dict[str, int]:
        try:
            return {k: int(v) for k, v in json.loads(self.state_file.read_text())["pids"].items()}
        except (OSError, ValueError, KeyError):
            return {}

    def _owned(self, key: str, pid: int) -> bool:
        """Is ``pid`` the daemon ``key`` of this cluster? Guards against PID reuse."""
        if not pid_alive(pid):
            return False
        cmdline = pid_cmdline(pid)
        if key == "mariadbd":
            return f"--datadir={self.db_dir}" in cmdline
        if key == "slurmdbd":
            # Started without arguments: it is ours when it found its config through our SLURM_CONF.
            return os.path.basename(cmdline.split(" ", 1)[0]) == "slurmdbd" and self._has_our_slurm_conf(pid)
        return str(self.conf_path) in cmdline

    def _has_our_slurm_conf(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                return f"SLURM_CONF={self.conf_path}".encode() in fh.read().split(b"\0")
        except OSError:
            return False

    def stop(self, timeout: float = 15) -> None:
        """End this cluster's daemons by PID (SIGTERM, then SIGKILL). Safe to call twice."""
        pids = self._recorded_pids()
        pids.update({k: p.pid for k, p in self._procs.items()})
        if pids.get("slurmctld") and self._owned("slurmctld", pids["slurmctld"]):
            self._cancel_all_jobs()
        deadline = time.monotonic() + timeout
        # slurmds first, controller last, so nodes do not log a lost controller on the way down;
        # then slurmdbd (the controller hands it its last job records while stopping), then its database.
        slurm = sorted((k for k in pids if k not in ("slurmdbd", "mariadbd")), key=lambda k: k == "slurmctld")
        for phase in (slurm, ["slurmdbd"], ["mariadbd"]):
            self._terminate([pids[k] for k in phase if k in pids and self._owned(k, pids[k])], deadline)
        self._reap(block=True)
        # Job steps (slurmstepd) and job scripts outlive a stopped slurmd. They inherited
        # SLURM_CONF=<this cluster's slurm.conf>, which is how we find exactly ours.
        self._end_leftovers(deadline)
        if not pid_alive(pids.get("mariadbd")):
            shutil.rmtree(self.db_dir, ignore_errors=True)  # ~25 MB of throwaway tables; logs stay
        self._procs.clear()
        self.state_file.unlink(missing_ok=True)

    def _terminate(self, pids: list[int], deadline: float) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in pids:
            while pid_alive(pid) and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.05)
            if pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

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
        parents: dict[int, int] = {}
        roots = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    parents[pid] = int(fh.read().rsplit(")", 1)[1].split()[1])
                if pid_cmdline(pid).startswith("slurmstepd") and self._has_our_slurm_conf(pid):
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
        cluster.accounting = bool(data.get("accounting", False))
        cluster.dbd_port, cluster.db_port = data.get("dbd_port"), data.get("db_port")
    except (OSError, ValueError):
        pass
    return cluster
