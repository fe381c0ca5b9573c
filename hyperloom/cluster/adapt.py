"""The loop behind ``JobQueueCluster.adapt()``: every interval, the backlog -> jobs.

A thread with its own Client (sockets belong to one thread) asks the broker for
``info()``; ``once()`` turns that into submissions and cancellations through the cluster,
under the cluster's lock (the user may call ``scale()`` meanwhile). The arithmetic lives
in adaptive.py; this is the part that talks to the batch system, with the back-off after
a refused submission.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from . import adaptive

log = logging.getLogger("hyperloom.cluster")


@dataclass
class AdaptPolicy:
    minimum: int
    maximum: int
    interval: float
    shrink: adaptive.Shrink
    backoff_first: float
    backoff_max: float


class Adaptor:
    def __init__(self, cluster, policy: AdaptPolicy):
        self.cluster = cluster
        self.policy = policy
        self.stopped = threading.Event()
        self.next_submit = 0.0          # monotonic time before which nothing is submitted
        self.backoff: float | None = None  # seconds of the current back-off, None when none
        self.thread = None

    def start(self):
        self.thread = threading.Thread(target=self._loop, daemon=True,
                                       name=f"adapt-{self.cluster.job_name}")
        self.thread.start()

    def stop(self):
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()

    def _loop(self):
        from ..client import Client
        cluster = self.cluster
        client = Client(scheduler_file=cluster.scheduler_file, secret_file=cluster.secret_file)
        try:
            while True:
                try:
                    self.once(client.info(), time.monotonic())
                except Exception:  # a broken round must not end adapting for good
                    log.exception("adapt: a round failed; trying again")
                if self.stopped.wait(self.policy.interval):
                    return
        finally:
            client.close()

    def once(self, info: dict, now: float):
        """One round: submit or release jobs for the backlog ``info`` describes."""
        cluster, policy, spec = self.cluster, self.policy, self.cluster.spec
        need = adaptive.backlog(info, spec.cpus)
        if need.too_big:
            log.warning("adapt: tasks %s need more than the %d cpus of a worker; no job "
                        "of this cluster can run them", list(need.too_big)[:5], spec.cpus)
        wanted = adaptive.jobs_wanted(need, spec.cpus * spec.workers_per_job,
                                      policy.minimum, policy.maximum)
        leaving = adaptive.retiring_jobs(need, spec.workers_per_job)
        with cluster._lock:
            if self.stopped.is_set():
                return
            active = cluster._refresh()
            # Jobs whose workers retire at walltime are no capacity: replace them now (so
            # for a while there may be up to `maximum` plus those).
            current = max(0, len(active) - leaving)
            if wanted > current:
                policy.shrink.surplus(current, wanted, now)   # resets the idle timer
                self._grow(wanted - current, now)
                return
            surplus = policy.shrink.surplus(current, wanted, now)
            if surplus:
                victims = cluster._victims(active, surplus, running_too=not need.busy)
                if victims:
                    log.info("adapt: backlog wants %d jobs, have %d; releasing %s",
                             wanted, len(active), " ".join(victims))
                    cluster._cancel(victims)

    def _grow(self, count: int, now: float):
        from .jobqueue import SubmitError
        if now < self.next_submit:
            return
        policy = self.policy
        for _ in range(count):
            try:
                self.cluster._submit()
            except SubmitError as error:
                self.backoff = min(policy.backoff_max,
                                   self.backoff * 2 if self.backoff else policy.backoff_first)
                self.next_submit = now + self.backoff
                log.warning("adapt: %s; not submitting again for %.0f s", error, self.backoff)
                return
        self.backoff = None
