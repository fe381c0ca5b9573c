"""When a worker started by Slurm should retire: shortly before its job's end time."""

from __future__ import annotations

import datetime
import logging
import os
import subprocess

log = logging.getLogger("hyperloom.worker")

# Retire this long before the job ends (at most a fifth of the time left): enough to hand
# back queued tasks and copy the data only this worker holds.
RETIRE_MARGIN = 120.0


def slurm_lifetime(environ=None, now=None) -> float | None:
    """Seconds this worker may run, from $SLURM_JOB_ID's end time; None outside Slurm, for
    jobs without a time limit, or when squeue cannot say."""
    environ = os.environ if environ is None else environ
    job_id = environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    try:
        result = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%e"], timeout=30,
                                capture_output=True, text=True)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("cannot ask Slurm when job %s ends (%s): no walltime retirement",
                    job_id, error)
        return None
    lifetime = lifetime_from_end(result.stdout.strip(), now)
    if lifetime is not None:
        log.info("Slurm job %s ends at %s: retiring in %.0f s", job_id,
                 result.stdout.strip(), lifetime)
    return lifetime


def lifetime_from_end(end: str, now: datetime.datetime | None = None) -> float | None:
    """squeue's %e (local time, ``2026-11-30T18:20:00``) to seconds of work left, keeping
    RETIRE_MARGIN (or a fifth of what is left) for the retirement itself."""
    try:
        ends = datetime.datetime.fromisoformat(end)
    except ValueError:
        return None     # "N/A", "Unknown", "NONE": no time limit
    left = (ends - (now or datetime.datetime.now())).total_seconds()
    if left <= 0:
        return None
    return max(1.0, left - min(RETIRE_MARGIN, left / 5))
