"""The Dask side's cluster: a ``dask scheduler`` subprocess and W
``dask worker`` subprocesses (one thread each, no nanny), all on loopback.

Configured for Dask's best case with tiny tasks: the scheduler runs in its own
process (not in the client's event loop as ``LocalCluster`` does), with
``distributed.scheduler.worker-saturation: inf`` (no root-task queuing), the
workers' statistical profiler and GIL monitor off, no dashboard, no nanny, no
memory limit, quiet logging. Every process is started
in its own session and killed by process group on exit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO_ROOT, kill_group, prepare_environment, wait_until

DASK_ENV = {
    "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "inf",
    "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "error",
    "DASK_LOGGING__DISTRIBUTED": "error",
    "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
    "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__GIL__ENABLED": "False",
}
CONFIG_DESCRIPTION = (
    "Dask: separate `dask scheduler` process + W `dask worker --nthreads 1 "
    "--no-nanny` processes, worker-saturation=inf, worker profiling and GIL "
    "monitor off, no dashboard, no memory limit, logging=error")


def _child_env() -> dict:
    prepare_environment()
    env = dict(os.environ)
    env.update(DASK_ENV)
    env["OMP_NUM_THREADS"] = "1"
    return env


class DaskCluster:
    """``with DaskCluster(workers=2) as c: client = c.client()``."""

    def __init__(self, workers: int = 2, start_timeout: float = 60.0):
        self.n_workers = workers
        self.start_timeout = start_timeout
        self.procs: list[subprocess.Popen] = []
        self.scheduler_proc: subprocess.Popen | None = None
        self._client = None
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-dask-")
        self.scheduler_file = Path(self._tmp.name) / "scheduler.json"

    # -- lifecycle -----------------------------------------------------

    def _spawn(self, args: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m"] + args, env=_child_env(), cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> DaskCluster:
        try:
            self.scheduler_proc = self._spawn([
                "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                "--port", "0", "--no-dashboard", "--no-show",
                "--scheduler-file", str(self.scheduler_file)])
            wait_until(self._scheduler_ready, self.start_timeout, 0.05)
            for i in range(self.n_workers):
                self._spawn([
                    "distributed.cli.dask_worker", "--scheduler-file",
                    str(self.scheduler_file), "--nthreads", "1", "--no-nanny",
                    "--no-dashboard", "--memory-limit", "0",
                    "--host", "127.0.0.1", "--name", f"bench-worker-{i}"])
            self.client().wait_for_workers(self.n_workers,
                                           timeout=self.start_timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _scheduler_ready(self) -> bool:
        if self.scheduler_proc.poll() is not None:
            raise RuntimeError("dask scheduler exited with %s"
                               % self.scheduler_proc.returncode)
        if not self.scheduler_file.exists():
            return False
        try:
            json.loads(self.scheduler_file.read_text())
        except ValueError:
            return False
        return True

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close(timeout=10)
            except Exception:
                pass
            self._client = None
        for proc in reversed(self.procs):
            kill_group(proc)
        self.procs.clear()
        self._tmp.cleanup()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        return False

    # -- access --------------------------------------------------------

    @property
    def address(self) -> str:
        return json.loads(self.scheduler_file.read_text())["address"]

    @property
    def scheduler_pid(self) -> int:
        return self.scheduler_proc.pid

    def client(self):
        if self._client is None:
            import dask
            from distributed import Client
            dask.config.set({"distributed.logging.distributed": "error"})
            self._client = Client(self.address, set_as_default=False,
                                  timeout=self.start_timeout)
        return self._client

    def worker_addresses(self) -> list[str]:
        info = self.client().scheduler_info(n_workers=-1)
        return sorted(info["workers"])


def quiet_client_logging() -> None:
    import logging
    for name in ("distributed", "distributed.client", "distributed.worker",
                 "distributed.scheduler", "distributed.core",
                 "distributed.comm", "distributed.batched"):
        logging.getLogger(name).setLevel(logging.ERROR)


if __name__ == "__main__":  # manual check: start, run one task, stop
    prepare_environment()
    quiet_client_logging()
    t0 = time.perf_counter()
    with DaskCluster(2) as cluster:
        print("started in %.2f s" % (time.perf_counter() - t0),
              cluster.worker_addresses())
        print(cluster.client().submit(sum, [1, 2]).result())
