"""How many worker jobs the broker's backlog asks for: a pure function of ``client.info()``.

Kept apart from the submitting and cancelling so it is tested without a batch system.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Backlog:
    cpus_wanted: int        # cores the ready, running and unplaceable tasks ask for
    busy: bool              # some task is ready or running: no worker may be released
    too_big: tuple = ()     # ids of tasks that need more cores than one worker has
    retiring: int = 0       # workers retiring at walltime: their jobs end soon


def backlog(info: dict, cpus_per_worker: int) -> Backlog:
    """Ready and assigned tasks count one core each (the broker's counts do not carry core
    requests); unplaceable tasks count their own ``n_cpus``. A task asking for more cores
    than a worker offers can never run on these jobs: it is reported, not counted."""
    counts = info.get("tasks", {})
    unplaceable = info.get("unplaceable", [])
    fits = [entry for entry in unplaceable if entry["n_cpus"] <= cpus_per_worker]
    too_big = tuple(entry["id"] for entry in unplaceable if entry["n_cpus"] > cpus_per_worker)
    # Unplaceable tasks are also counted as ready by state: count them once, with their cores.
    plain_ready = max(0, counts.get("ready", 0) - len(unplaceable))
    cpus = plain_ready + counts.get("assigned", 0) + sum(entry["n_cpus"] for entry in fits)
    busy = counts.get("ready", 0) + counts.get("assigned", 0) > len(too_big)
    workers = info.get("workers", [])
    retiring = sum(1 for w in workers if w.get("retiring"))
    if retiring and retiring == len(workers):
        # Every worker retires: the data they hold needs somewhere to go, work or not.
        cpus = max(cpus, 1)
    return Backlog(cpus_wanted=cpus, busy=busy, too_big=too_big, retiring=retiring)


def retiring_jobs(need: Backlog, workers_per_job: int) -> int:
    """Jobs about to end at walltime, which therefore count as no capacity."""
    return math.ceil(need.retiring / max(1, workers_per_job))


def jobs_wanted(need: Backlog, cpus_per_job: int, minimum: int, maximum: int) -> int:
    """Jobs that would give every wanted core a worker, within [minimum, maximum]."""
    wanted = math.ceil(need.cpus_wanted / max(1, cpus_per_job))
    return max(minimum, min(maximum, wanted))


@dataclass
class Shrink:
    """Releases jobs only after the allocation has been larger than the backlog for
    ``idle_timeout`` seconds without a break, so a pause between two plans keeps them."""
    idle_timeout: float
    surplus_since: float | None = None

    def surplus(self, current: int, wanted: int, now: float) -> int:
        """How many jobs to release now (0 until the surplus has lasted long enough)."""
        if wanted >= current:
            self.surplus_since = None
            return 0
        if self.surplus_since is None:
            self.surplus_since = now
        if now - self.surplus_since < self.idle_timeout:
            return 0
        self.surplus_since = None
        return current - wanted
