"""JobQueueCluster: a broker in this process's machine, workers as jobs of a batch system.

The broker runs as a subprocess here (the LocalCluster machinery, with no local workers),
on all interfaces or on ``interface``, and writes a scheduler file into a directory the
jobs can read. Each job runs ``workers_per_job`` workers with the same Python interpreter
(``sys.executable -m hyperloom.worker``), which find the broker through that file.

A batch system is a subclass: ``job_header()`` (the directives of the script),
``launcher()`` (what starts the workers inside a job) and four commands (submit, cancel,
list by job name, and how to read their output). SlurmCluster is one; PBS or HTCondor is
another class of the same size.

Every job is named ``job_name`` (``hyperloom-`` and 8 hex digits unless ``name`` is
given): ``squeue -h -n NAME`` lists them, and ``.close()`` cancels every job it submitted.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import LoomError
from ..local import LocalCluster
from . import adaptive
from .adapt import Adaptor, AdaptPolicy

if TYPE_CHECKING:
    from ..client import Client

log = logging.getLogger("hyperloom.cluster")

COMMAND_TIMEOUT = 60.0      # seconds for one sbatch/squeue/scancel call
# Job states (as the subclass's list_jobs reports them) of jobs on their way out.
ENDING = ("COMPLETING", "CANCELLED", "COMPLETED", "FAILED", "TIMEOUT", "PREEMPTED")
CLOSE_TIMEOUT = 60.0        # seconds close() waits for cancelled jobs to leave the queue


class SubmitError(LoomError):
    """The batch system refused a job; the message carries its exit code and stderr."""


@dataclass(frozen=True)
class JobSpec:
    cpus: int = 1                       # cores per worker
    workers_per_job: int = 1
    memory: str | None = None           # per job, in the batch system's words ("4G")
    walltime: str = "00:30:00"
    queue: str | None = None            # partition (Slurm) / queue (PBS)
    account: str | None = None
    job_directives: tuple = ()          # extra header lines, without the prefix
    prologue: tuple = ()                # shell lines before the workers start
    worker_args: tuple = ()             # extra loom-worker options
    python: str = sys.executable


class JobQueueCluster:
    submit_command: tuple = ()      # + the script path; prints the job id
    cancel_command: tuple = ()      # + job ids
    name_option = "hyperloom"       # overridden: how the header names the job
    dashboard_jobs_option: str | None = None   # loom-dashboard option listing its jobs

    def __init__(self, jobs: int = 0, spec: JobSpec = JobSpec(), *, name: str | None = None,
                 log_directory: str | None = None, shared_directory: str | None = None,
                 interface: str | None = None, secret_file: str | None = None,
                 log_level: str = "info", broker_job: bool = False,
                 broker_wait: float = 600.0, dashboard: bool = False):
        self.spec = spec
        self.job_name = name or f"hyperloom-{uuid.uuid4().hex[:8]}"
        self.log_directory = os.path.abspath(log_directory) if log_directory else None
        self._own_directory = shared_directory is None and log_directory is None
        self.directory = os.path.abspath(
            shared_directory or self.log_directory
            or os.path.join(os.path.expanduser("~"), ".hyperloom", self.job_name))
        self.scheduler_file = os.path.join(self.directory, f"{self.job_name}.json")
        self.interface = interface
        self.secret_file = os.path.abspath(secret_file) if secret_file else None
        self.log_level = log_level
        self._initial_jobs = jobs
        self._submitted: dict[str, float] = {}  # job id -> monotonic submit time, in order
        self._lock = threading.RLock()  # the adapt thread and the user's calls share jobs
        self._adaptor: Adaptor | None = None      # the adapt() loop, when adapting
        self._broker: LocalCluster | None = None  # the LocalCluster holding the broker process
        self.broker_job = broker_job    # or: the broker runs in a job of its own
        self.broker_wait = broker_wait  # seconds for that job to start and write its file
        self.broker_job_id = None
        self._started = False
        self._clients: list[Client] = []
        self.dashboard: Any = dashboard   # True until started, then its DashboardProcess
        self.dashboard_url: str | None = None

    # ------------------------------------------------------------ what a subclass gives

    def job_header(self, name: str, ntasks: int, cpus: int) -> list[str]:
        """The directives of a job named ``name`` running ``ntasks`` processes of ``cpus``
        cores each (plus the spec's memory, walltime, queue, account, extra lines)."""
        raise NotImplementedError

    def launcher(self, ntasks: int, cpus: int) -> list[str]:
        """The command prefix that starts ``ntasks`` copies of a program in the job."""
        raise NotImplementedError

    def list_jobs(self, name: str | None = None) -> list[dict]:
        """Jobs named ``name`` (default: this cluster's worker jobs) in the queue: dicts
        with job_id, state, name, nodes."""
        raise NotImplementedError

    @property
    def broker_job_name(self) -> str:
        return f"{self.job_name}-broker"

    def parse_job_id(self, stdout: str) -> str:
        return stdout.strip().split(";")[0]

    # ------------------------------------------------------------ lifecycle

    def start(self):
        os.makedirs(self.directory, exist_ok=True)
        self._started = True
        try:
            if self.broker_job:
                self._start_broker_job()
            else:
                self._start_local_broker()
            if self.dashboard:
                self._start_dashboard()
            if self._initial_jobs:
                self.scale(jobs=self._initial_jobs)
        except BaseException:
            self.close()
            raise
        return self

    def _start_local_broker(self):
        broker_args = ["--scheduler-file", self.scheduler_file]
        if self.interface:
            broker_args += ["--interface", self.interface]
        self._broker = LocalCluster(workers=0, host="0.0.0.0", log_dir=self.log_directory,
                                    broker_args=broker_args, log_level=self.log_level,
                                    secret_file=self.secret_file)
        self._broker.start()

    def _start_dashboard(self):
        """loom-dashboard against this cluster's broker, listing its jobs too."""
        from .. import scheduler_file
        from ..dashboard import start_dashboard
        info = scheduler_file.read(self.scheduler_file, self.broker_wait)
        extra = (self.dashboard_jobs_option, self.job_name) if self.dashboard_jobs_option \
            else ()
        log_file = os.path.join(self.log_directory or self.directory, "dashboard.log")
        with open(log_file, "ab") as stderr:
            self.dashboard = start_dashboard(info.host, info.port, self.secret_file,
                                             stderr=stderr, extra_args=extra)
        self.dashboard_url = self.dashboard.url

    def _start_broker_job(self):
        """Submit the broker as a job of its own and wait for its scheduler file."""
        from .. import scheduler_file
        path = os.path.join(self.directory, f"{self.broker_job_name}.sh")
        with open(path, "w") as f:
            f.write(self.broker_script())
        self.broker_job_id = self._submit_script(path)
        log.info("submitted the broker as job %s; waiting up to %.0f s for %s",
                 self.broker_job_id, self.broker_wait, self.scheduler_file)
        scheduler_file.read(self.scheduler_file, self.broker_wait)

    def broker_script(self) -> str:
        """The script of the broker's own job (``broker_job=True``)."""
        broker = [self.spec.python, "-m", "hyperloom.broker", "--host", "0.0.0.0", "--port",
                  "0", "--scheduler-file", self.scheduler_file, "--log-level",
                  self.log_level, *self._worker_options()]
        # Its endpoint line goes nowhere: peers read the scheduler file.
        launch = " ".join([*self.launcher(1, 1), *map(shlex.quote, broker)]) + " > /dev/null"
        return self._script(self.job_header(self.broker_job_name, 1, 1), launch)

    def _script(self, header, launch) -> str:
        lines = ["#!/usr/bin/env bash", *header, "", *self.spec.prologue, launch]
        return "\n".join(lines) + "\n"

    def client(self):
        from ..client import Client
        client = Client(scheduler_file=self.scheduler_file, secret_file=self.secret_file)
        self._clients.append(client)
        return client

    def close(self, timeout: float = CLOSE_TIMEOUT):
        """Stop adapting, cancel every job this cluster submitted (waiting until the queue no
        longer lists them), stop the broker."""
        if self._adaptor is not None:
            self._adaptor.stop()
            self._adaptor = None
        if self.dashboard and self.dashboard is not True:
            self.dashboard.stop()   # first: it is a client of the broker
            self.dashboard = False
        with self._lock:
            if self._started:   # the queue may hold our jobs
                self._cancel_all(self.job_name, list(self._submitted), timeout)
        for client in self._clients:
            client.close()
        self._clients = []
        codes: dict[str, int | None] = self._broker.stop() if self._broker is not None else {}
        self._broker = None
        if self.broker_job and self._started:
            self._cancel_all(self.broker_job_name, [self.broker_job_id] if self.broker_job_id
                             else [], timeout)
        self._started = False
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
        return codes

    stop = close

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ jobs

    def job_script(self) -> str:
        """The script each job runs, as it will be submitted."""
        spec = self.spec
        worker = [spec.python, "-m", "hyperloom.worker", "--scheduler-file",
                  self.scheduler_file, "--cpus", str(spec.cpus), "--nopin",
                  "--log-level", self.log_level, *self._worker_options(), *spec.worker_args]
        launch = " ".join([*self.launcher(spec.workers_per_job, spec.cpus),
                           *map(shlex.quote, worker)])
        # $TMPDIR is node-local on most clusters; the work directory goes there.
        launch += ' --wdir "${TMPDIR:-/tmp}"'
        header = self.job_header(self.job_name, spec.workers_per_job, spec.cpus)
        return self._script(header, launch)

    def _worker_options(self) -> list[str]:
        options = []
        if self.secret_file:
            options += ["--secret-file", self.secret_file]
        if self.interface:
            options += ["--interface", self.interface]
        return options

    def jobs(self) -> list[dict]:
        """The queue's view of this cluster's jobs (``job_id``, ``state``, ``name``, ``nodes``)."""
        return self.list_jobs()

    @property
    def submitted(self) -> list[str]:
        """Ids of the jobs submitted and not yet seen to end or cancelled."""
        with self._lock:
            return list(self._submitted)

    def scale(self, jobs: int):
        """Submit or cancel jobs until ``jobs`` of ours are queued or running. Cancels
        pending jobs first, then the newest. A refused submission raises SubmitError."""
        if jobs < 0:
            raise ValueError(f"jobs must be >= 0, got {jobs}")
        with self._lock:
            active = self._refresh()
            for _ in range(jobs - len(active)):
                self._submit()
            if len(active) > jobs:
                self._cancel(self._victims(active, len(active) - jobs, running_too=True))

    def _refresh(self) -> dict:
        """Forget submitted jobs the queue no longer lists; {job id: state} of those that
        are pending or running (not those already ending)."""
        states = {job["job_id"]: job["state"] for job in self.list_jobs()}
        for job_id in list(self._submitted):
            if job_id not in states:
                del self._submitted[job_id]
        return {job_id: states[job_id] for job_id in self._submitted
                if not states[job_id].upper().startswith(ENDING)}

    @staticmethod
    def _victims(active: dict, count: int, running_too: bool) -> list:
        pending = [job for job, state in active.items() if state.upper().startswith("PEND")]
        others = [job for job in active if job not in pending] if running_too else []
        return (list(reversed(pending)) + list(reversed(others)))[:count]

    def _submit(self) -> str:
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"{self.job_name}.sh")
        with open(path, "w") as f:
            f.write(self.job_script())
        job_id = self._submit_script(path)
        self._submitted[job_id] = time.monotonic()
        return job_id

    def _submit_script(self, path: str) -> str:
        result = self._run([*self.submit_command, path])
        if result.returncode != 0:
            raise SubmitError(f"{self.submit_command[0]} refused the job (exit "
                              f"{result.returncode}): {result.stderr.strip() or result.stdout}")
        job_id = self.parse_job_id(result.stdout)
        log.info("submitted job %s (%s)", job_id, os.path.basename(path))
        return job_id

    def _cancel(self, job_ids):
        if not job_ids:
            return
        result = self._run([*self.cancel_command, *job_ids])
        if result.returncode != 0:
            log.warning("%s %s failed (exit %d): %s", self.cancel_command[0], " ".join(job_ids),
                        result.returncode, result.stderr.strip())
        log.info("cancelled jobs %s", " ".join(job_ids))

    def _cancel_all(self, name: str, known: list, timeout: float):
        """Cancel ``known`` jobs and any the queue lists under ``name``, and wait for the
        queue to let them go; a failing queue command is logged, not raised, so close()
        still stops the broker."""
        try:
            listed = [job["job_id"] for job in self.list_jobs(name)]
        except RuntimeError as error:
            log.warning("cannot list jobs named %s (%s); cancelling the ones submitted",
                        name, error)
            listed = []
        self._cancel(list(dict.fromkeys([*known, *listed])))
        try:
            self._wait_for_empty_queue(name, timeout)
        except RuntimeError as error:
            log.warning("cannot check that jobs named %s left the queue: %s", name, error)

    def _wait_for_empty_queue(self, name: str, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            left = self.list_jobs(name)
            if not left:
                if name == self.job_name:
                    self._submitted.clear()
                return
            if time.monotonic() > deadline:
                log.warning("jobs %s still queued %.0f s after being cancelled",
                            " ".join(job["job_id"] for job in left), timeout)
                return
            time.sleep(0.2)

    @staticmethod
    def _run(command) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(command, capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as error:
            return subprocess.CompletedProcess(command, 127, "", str(error))

    # ------------------------------------------------------------ adapt

    def adapt(self, minimum: int = 0, maximum: int = 10, interval: float = 1.0,
              idle_timeout: float = 60.0, backoff: tuple = (5.0, 300.0)):
        """Size the allocation from the broker's backlog, every ``interval`` seconds, within
        [minimum, maximum] jobs; release surplus jobs once it has lasted ``idle_timeout``
        seconds; after a refused submission, wait ``backoff[0]`` seconds, doubling up to
        ``backoff[1]``, before trying again. See adapt.py."""
        if not 0 <= minimum <= maximum:
            raise ValueError(f"need 0 <= minimum <= maximum, got {minimum}, {maximum}")
        policy = AdaptPolicy(minimum, maximum, interval, adaptive.Shrink(idle_timeout),
                             *backoff)
        if self._adaptor is not None:
            self._adaptor.stop()
        self._adaptor = Adaptor(self, policy)
        self._adaptor.start()
        return self
