"""Slurm jobs of a cluster, for the dashboard: ``squeue -h -n NAME -o '%i %T %j %N'``.

A SlurmCluster names its jobs; ``loom-dashboard --slurm-job-name NAME`` shows
those jobs and their states, asking squeue every few seconds.
"""

from __future__ import annotations

import subprocess

SQUEUE_FORMAT = "%i %T %j %N"
SQUEUE_TIMEOUT = 20.0


def squeue_command(job_name: str) -> list[str]:
    return ["squeue", "-h", "-n", job_name, "-o", SQUEUE_FORMAT]


def parse_squeue(text: str) -> list[dict]:
    """``squeue -o '%i %T %j %N'`` lines as ``{"id", "state", "name", "nodes"}``.

    The node list is empty for a pending job; the job name may not hold spaces
    (squeue -n matched it whole), so splitting on whitespace is unambiguous.
    """
    jobs = []
    for line in text.splitlines():
        parts = line.split(None, 3)
        if not parts:
            continue
        if len(parts) < 3:
            raise ValueError(f"unexpected squeue line: {line!r:.120}")
        jobs.append({"id": parts[0], "state": parts[1], "name": parts[2],
                     "nodes": parts[3].strip() if len(parts) > 3 else ""})
    return jobs


def query_jobs(job_name: str) -> tuple[list[dict], str | None]:
    """The jobs now, or ``([], why not)`` when squeue cannot tell."""
    try:
        done = subprocess.run(squeue_command(job_name), capture_output=True, text=True,
                              timeout=SQUEUE_TIMEOUT)
    except FileNotFoundError:
        return [], "squeue is not installed here (no Slurm on this machine?)"
    except subprocess.TimeoutExpired:
        return [], f"squeue did not answer within {SQUEUE_TIMEOUT:.0f} s"
    if done.returncode != 0:
        return [], f"squeue failed (exit {done.returncode}): {done.stderr.strip()[:300]}"
    try:
        return parse_squeue(done.stdout), None
    except ValueError as error:
        return [], str(error)
