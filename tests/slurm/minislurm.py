"""A real single-node Slurm for the tests: munged, slurmctld and slurmd from Debian's packages.

``MiniSlurm.start()`` writes a minimal ``slurm.conf`` into its own directory, starts the
three daemons in the foreground (``-D``, children of this process, logs in the directory)
and waits until ``srun hostname`` answers; ``stop()`` cancels every job, stops the daemons
(SIGTERM, then SIGKILL) and removes the directory. ``find_running()`` returns the
environment of a Slurm that already answers (``$SLURM_CONF`` or /etc/slurm/slurm.conf),
which the tests then use as it is.

The directory is made with ``tempfile.mkdtemp`` directly under the system's temporary
directory, not in pytest's (which is mode 0700 to root): ``munged`` runs as the munge user
and must reach its socket, and refuses paths not executable by everyone.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import psutil

from ..conftest import port_to_bind_later

# Debian installs the daemons (and runuser) in /usr/sbin, which a plain user PATH (a fresh
# `env -i PATH=/usr/bin:/bin` shell, say) lacks; everything started here inherits this.
for _sbin in ("/usr/sbin", "/sbin"):
    if _sbin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + _sbin

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scancel", "sinfo")
START_TIMEOUT = 60.0
# More CPUs than this machine has (config_overrides lets slurmd accept them): the tests
# submit several one-core worker jobs at once, and a two-core machine would queue them.
MIN_CPUS = 8


def missing_reason() -> str | None:
    """Why no Slurm can be started here, or None."""
    missing = [name for name in DAEMONS + CLIENTS if shutil.which(name) is None]
    if missing:
        return (f"Slurm/munge programs not installed: {', '.join(missing)} (Debian: apt-get "
                f"install slurmctld slurmd slurm-client munge)")
    if os.geteuid() != 0:
        return "starting slurmd needs root (it runs jobs as their users)"
    try:
        import pwd
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user to run munged as (the munge package creates it)"
    return None


def job_queued(job: str) -> bool:
    """Whether Slurm still lists job ``job`` (pending or running)."""
    queue = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], capture_output=True,
                           text=True, timeout=30).stdout
    return job in queue.split()


def find_running(timeout: float = 5.0) -> dict | None:
    """The environment of a Slurm that already runs jobs here, or None."""
    conf = os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    if not os.path.exists(conf):
        return None
    env = {**os.environ, "SLURM_CONF": conf}
    try:
        result = subprocess.run(["srun", "-N1", "-n1", "-t", "1", "hostname"], env=env,
                                capture_output=True, timeout=timeout)
    except (subprocess.TimeoutExpired, OSError):
        return None
    return {"SLURM_CONF": conf} if result.returncode == 0 else None


class MiniSlurm:
    def __init__(self):
        self.root = None
        self.processes = {}
        self.env = {}

    @property
    def conf(self):
        return os.path.join(self.root, "slurm.conf")

    def start(self, attempts: int = 3):
        """Bring the cluster up; a port taken meanwhile is retried with other ports."""
        for attempt in range(attempts):
            self.root = tempfile.mkdtemp(prefix="hyperloom-slurm-")
            os.chmod(self.root, 0o755)
            try:
                self._start_once()
                return self
            except RuntimeError:
                logs = self.logs()
                self.stop()
                if attempt == attempts - 1:
                    raise RuntimeError(f"Slurm did not start; its logs:\n{logs}") from None

    def _start_once(self):
        munge_dir = os.path.join(self.root, "munge")
        for sub in ("spool", "state", "log", "munge"):
            os.makedirs(os.path.join(self.root, sub))
        os.chmod(munge_dir, 0o755)
        key = os.path.join(munge_dir, "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o600)
        shutil.chown(munge_dir, "munge", "munge")
        shutil.chown(key, "munge", "munge")
        socket_path = os.path.join(munge_dir, "munge.socket")
        self._spawn("munged", ["runuser", "-u", "munge", "--", "munged", "--foreground",
                               f"--socket={socket_path}", f"--key-file={key}",
                               f"--log-file={munge_dir}/munged.log",
                               f"--pid-file={munge_dir}/munged.pid",
                               f"--seed-file={munge_dir}/munged.seed"])
        self._wait(lambda: os.path.exists(socket_path), "munged's socket")
        self._write_conf(socket_path, *_two_free_ports())
        self.env = {"SLURM_CONF": self.conf}
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", self.conf])
        self._spawn("slurmd", ["slurmd", "-D", "-f", self.conf])
        self._wait(self._srun_works, "srun hostname")

    def _write_conf(self, munge_socket, ctld_port, slurmd_port):
        node = socket.gethostname().split(".")[0]
        cpus = max(MIN_CPUS, os.cpu_count() or 1)
        memory = max(1024, psutil.virtual_memory().total // 2**20 - 1024)
        r = self.root
        lines = [
            "ClusterName=hyperloomtest", f"SlurmctldHost={node}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}", f"SlurmdPort={slurmd_port}",
            "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", f"AuthInfo=socket={munge_socket}", "CredType=cred/munge",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid", f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log", f"SlurmdLogFile={r}/log/slurmd.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "SlurmdParameters=config_overrides", "MpiDefault=none", "ReturnToService=2",
            "JobCompType=jobcomp/none", "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none", "InactiveLimit=0", "MinJobAge=2",
            "KillWait=2", "SchedulerParameters=sched_interval=1",
            f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN",
            f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _spawn(self, name, command):
        log = open(os.path.join(self.root, "log", f"{name}.out"), "wb")
        self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL,
                                                env={**os.environ, "SLURM_CONF": self.conf},
                                                start_new_session=True)
        log.close()

    def _wait(self, predicate, what):
        deadline = time.monotonic() + START_TIMEOUT
        while not predicate():
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {what} within {START_TIMEOUT:.0f} s")
            time.sleep(0.2)

    def _srun_works(self):
        try:
            result = subprocess.run(["srun", "-N1", "-n1", "-t", "1", "--immediate=5",
                                     "hostname"], env={**os.environ, **self.env},
                                    capture_output=True, timeout=15)
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    def _cancel_all_jobs(self, timeout: float = 20.0):
        env = {**os.environ, **self.env}
        subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True, env=env,
                       timeout=15)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True,
                                    env=env, timeout=15)
            if result.returncode != 0 or not result.stdout.strip():
                return
            time.sleep(0.2)

    def _kill_leftover_steps(self):
        """slurmstepd daemonises away from slurmd's process group; ours carry our
        SLURM_CONF in their environment (slurmd is started with it), others' do not."""
        for process in psutil.process_iter(["name"]):
            if process.info["name"] != "slurmstepd":
                continue
            try:
                if process.environ().get("SLURM_CONF") == self.conf:
                    for child in process.children(recursive=True):
                        child.kill()
                    process.kill()
            except psutil.Error:
                pass

    def logs(self) -> str:
        out = []
        for directory in ("log", "munge"):
            path = os.path.join(self.root or "", directory)
            for name in sorted(os.listdir(path)) if os.path.isdir(path) else ():
                if name.endswith((".log", ".out")):
                    with open(os.path.join(path, name), errors="replace") as f:
                        out.append(f"--- {name}\n{f.read()[-3000:]}")
        return "\n".join(out)

    def stop(self):
        if self.processes.get("slurmctld") and self.processes["slurmctld"].poll() is None:
            self._cancel_all_jobs()
        for name in reversed(DAEMONS):   # slurmd first, munged last
            process = self.processes.pop(name, None)
            if process is None:
                continue
            _stop_group(process)
        self._kill_leftover_steps()
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


def _stop_group(process, timeout: float = 10.0):
    """SIGTERM the daemon's process group (job steps of slurmd included), then SIGKILL."""
    for sig, wait in ((15, timeout), (9, timeout)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _two_free_ports():
    """Two free ports for slurmctld and slurmd. Slurm has no 'port 0'; these are drawn below
    the ephemeral range (see port_to_bind_later), and a daemon that finds one taken anyway
    exits, which ``MiniSlurm.start`` answers by starting again with new ports."""
    first = port_to_bind_later()
    return first, port_to_bind_later(exclude=(first,))
