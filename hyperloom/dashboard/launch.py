"""Start loom-dashboard as a subprocess: LocalCluster(dashboard=True), Client(dashboard=True)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from ..errors import LoomError


class DashboardProcess:
    """A running loom-dashboard; ``url`` is what it printed, ``stop()`` ends it."""

    def __init__(self, process: subprocess.Popen, url: str):
        self.process = process
        self.url = url

    def stop(self, timeout: float = 10.0):
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        if self.process.stdout:
            self.process.stdout.close()


def start_dashboard(broker_host: str, broker_port: int, secret_file: str | None = None,
                    port: int = 0, stderr=None, extra_args=()) -> DashboardProcess:
    """Start ``python -m hyperloom.dashboard`` against a broker; it exits with this process.
    ``extra_args``: more loom-dashboard options (``--slurm-job-name NAME``)."""
    command = [sys.executable, "-m", "hyperloom.dashboard", broker_host, str(broker_port),
               "--port", str(port), "--exit-with-parent", *extra_args]
    if secret_file:
        command += ["--secret-file", secret_file]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=stderr, start_new_session=True)
    assert process.stdout is not None  # stdout=PIPE above
    line = process.stdout.readline().decode().strip()
    if not line.startswith("http"):
        code = process.wait()
        raise LoomError(f"loom-dashboard did not start (printed {line!r}, exit code {code})")
    return DashboardProcess(process, line)
