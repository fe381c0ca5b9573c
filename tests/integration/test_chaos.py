"""Chaos: a 10,000-task plan while workers are killed (kill -9) and replaced, 20 times;
and plans while the broker itself is killed and restarted from its journal.

Slow (skipped by default). Run it with

    python -m pytest -m slow tests/integration/test_chaos.py -s

``HYPERLOOM_CHAOS_RUNS`` (default 20) sets how many times the plan runs and
``HYPERLOOM_CHAOS_PERIOD`` (default 2.5) the mean seconds between kills;
``HYPERLOOM_CHAOS_BROKER_RUNS`` (default 3) how many plans run under broker kills.

Every run must complete with exactly the right results, and the broker's
resident memory must come back to its baseline between runs (+20 MB).
Figures printed at the end: runs, kills, and tasks recomputed. Recomputations
are counted from the broker's own per-worker ``tasks_finished`` (``info()``):
the chaos thread reads the victim's count just before each kill, the sum over
every worker that ever lived minus the tasks of the plans is the number of
re-executions of tasks that had already finished once (a lower bound: what a
victim finished between that read and the kill is not counted).

What a user checks of the recomputation: the broker reported the needed data
each kill lost (its log: "worker N held K needed objects; recomputing them", at
most one report per kill), and the work done again is bounded: no kill cost
more than a whole plan of recomputation.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import signal
import socket
import tempfile
import threading
import time

import psutil
import pytest

from hyperloom.client import tasks

from ..conftest import data_port_or_none, wait_until

RUNS = int(os.environ.get("HYPERLOOM_CHAOS_RUNS", "20"))
PERIOD = float(os.environ.get("HYPERLOOM_CHAOS_PERIOD", "2.5"))
WORKERS = 3
CHAINS, STEPS, N_CONSTS = 100, 100, 100
RUN_EVERY = 20                 # every 20th step of a chain is a run task (a process)
RSS_TOLERANCE = 20 * 2 ** 20

pytestmark = [pytest.mark.slow, pytest.mark.allow_crash]


def build_plan(round_number):
    """100 chains of 100 steps over 100 shared consts: 10,100 tasks; results, expected."""
    values = [f"{round_number}.{i};" for i in range(N_CONSTS)]
    consts = [tasks.const(v) for v in values]
    results, expected = [], []
    for chain in range(CHAINS):
        task, value = consts[chain % N_CONSTS], values[chain % N_CONSTS]
        for step in range(1, STEPS):
            if step % RUN_EVERY == 0:
                task = tasks.run(("sh", "-c", "sleep 0.02; cat"), stdin=task)
            else:
                i = (chain * 31 + step * 7) % N_CONSTS
                task = tasks.merge((task, consts[i]))
                value += values[i]
        results.append(task)
        expected.append(value.encode())
    return results, expected, N_CONSTS + CHAINS * (STEPS - 1)


class Chaos(threading.Thread):
    """Kills a random worker every PERIOD seconds (on average) and starts a new one."""

    def __init__(self, cluster, seed):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.random = random.Random(seed)
        self.stop_event = threading.Event()
        self.active = threading.Event()      # kill only while a plan runs
        self.kills = 0
        self.kills_this_run = 0
        self.finished_by_dead = 0            # tasks_finished of victims, read before the kill
        self.dead_pids = []
        self.error = None

    def run(self):
        try:
            client = self.cluster.client()
            try:
                while not self.stop_event.wait(self.random.uniform(0.5, 1.5) * PERIOD):
                    if self.active.is_set():
                        self.kill_one(client)
            finally:
                client.close()
        except BaseException as error:
            self.error = error

    def kill_one(self, client):
        live = [w for w in self.cluster.workers if w.poll() is None]
        candidates = [w for w in live if data_port_or_none(w.pid, client) is not None]
        if not candidates:
            return
        victim = self.random.choice(candidates)
        port = data_port_or_none(victim.pid, client)
        finished = [w["tasks_finished"] for w in client.info()["workers"]
                    if w["address"].endswith(f":{port}")]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        self.finished_by_dead += finished[0] if finished else 0
        self.dead_pids.append(victim.pid)
        self.kills += 1
        self.kills_this_run += 1
        self.cluster.add_worker()


def broker_rss(cluster):
    return psutil.Process(cluster.broker_pid).memory_info().rss


@pytest.mark.timeout(60 + RUNS * 60)
def test_plans_complete_while_workers_are_killed(make_cluster):
    cluster = make_cluster(workers=WORKERS, cpus=1)
    client = cluster.client()
    cold = broker_rss(cluster)
    chaos = Chaos(cluster, seed=os.environ.get("HYPERLOOM_CHAOS_SEED", "hyperloom"))
    chaos.start()
    figures = []
    planned = 0
    warm = None
    try:
        for run in range(RUNS):
            results, expected, n_tasks = build_plan(run)
            chaos.kills_this_run = 0
            started = time.monotonic()
            chaos.active.set()
            futures = client.submit(results)
            got = client.gather(futures)
            chaos.active.clear()
            took = time.monotonic() - started
            assert chaos.error is None, f"the chaos thread failed: {chaos.error!r}"
            assert got == expected, f"run {run}: wrong results"
            planned += n_tasks
            del futures, got
            wait_until(lambda: client.get_stats()["n_tasks"] == 0, timeout=30,
                       message="the broker to forget the plan")
            rss = broker_rss(cluster)
            if warm is None:
                warm = rss
            figures.append((run, took, chaos.kills_this_run, rss))
            print(f"run {run:2d}: {n_tasks} tasks in {took:5.1f} s, "
                  f"{chaos.kills_this_run} kills, broker RSS {rss / 2 ** 20:.1f} MiB", flush=True)
            assert rss <= warm + RSS_TOLERANCE, \
                f"broker RSS grew from {warm / 2 ** 20:.1f} to {rss / 2 ** 20:.1f} MiB"
    finally:
        chaos.active.clear()
        chaos.stop_event.set()
        chaos.join(30)
        for pid in chaos.dead_pids:   # a killed worker cannot remove its work directory
            shutil.rmtree(os.path.join(tempfile.gettempdir(),
                                       f"worker-{socket.gethostname()}-{pid}"),
                          ignore_errors=True)
    # a kill at the very end of the last plan leaves its replacement still registering
    wait_until(lambda: client.info()["n_workers"] == WORKERS, timeout=30,
               message="the replacement workers to join")
    info = client.info()
    finished_total = chaos.finished_by_dead + sum(w["tasks_finished"] for w in info["workers"])
    recomputed = finished_total - planned
    print(f"\nchaos: {RUNS} runs of {n_tasks} tasks, {chaos.kills} workers killed "
          f"(kill -9) and replaced, {finished_total} task completions for {planned} tasks: "
          f"{recomputed} recomputed (lower bound, from info()['workers'][i]['tasks_finished']);"
          f" broker RSS {cold / 2 ** 20:.1f} MiB at start, {warm / 2 ** 20:.1f} MiB after run 0,"
          f" {figures[-1][3] / 2 ** 20:.1f} MiB after the last run; "
          f"{sum(f[1] for f in figures):.0f} s of plans", flush=True)
    assert info["n_workers"] == WORKERS
    assert chaos.kills >= RUNS, "too few kills to call it chaos"
    with open(os.path.join(cluster.log_dir, "broker.log")) as log:
        reports = [int(k) for k in re.findall(r"held (\d+) needed objects; recomputing them",
                                              log.read())]
    print(f"the broker reported {len(reports)} losses of needed data, "
          f"{sum(reports)} objects to recompute", flush=True)
    assert reports and all(k > 0 for k in reports), \
        "the kills never lost data that was still needed (or the broker did not say so)"
    assert len(reports) <= chaos.kills
    # Every completion was counted (none vanished); a task ran again only because a kill
    # lost its data, and a kill costs at most the whole plan's lineage.
    assert 0 <= recomputed <= chaos.kills * n_tasks


BROKER_RUNS = int(os.environ.get("HYPERLOOM_CHAOS_BROKER_RUNS", "3"))


class BrokerChaos(threading.Thread):
    """SIGKILLs the broker every PERIOD seconds (on average) and starts it again from its
    journal on the same port; every second time a worker is killed too while the broker
    is down (and replaced); before each kill, reads how much the broker computed twice."""

    def __init__(self, processes, seed):
        super().__init__(daemon=True)
        self.processes = processes
        self.random = random.Random(seed)
        self.stop_event = threading.Event()
        self.kills = 0
        self.worker_kills = 0
        self.recomputed = 0
        self.killed = []                     # workers killed while the broker was down
        self.error = None

    def run(self):
        from hyperloom.client import Client
        try:
            while not self.stop_event.wait(self.random.uniform(0.5, 1.5) * PERIOD):
                with Client("127.0.0.1", self.processes.port, connect_timeout=60) as spy:
                    self.recomputed += spy.info()["journal"]["recomputed"]
                self.processes.kill_broker()
                self.kills += 1
                if self.kills % 2 == 0:
                    live = [w for w in self.processes.workers if w.poll() is None]
                    victim = self.random.choice(live)
                    victim.kill()
                    victim.wait(10)
                    self.killed.append(victim)
                    self.worker_kills += 1
                self.processes.start_broker()
                if len(self.processes.workers) - len(self.killed) < WORKERS:
                    self.processes.start_worker()
        except BaseException as error:  # reported by the test
            self.error = error


@pytest.mark.timeout(120 + BROKER_RUNS * 120)
def test_plans_complete_while_the_broker_is_killed_and_restarted(tmp_path, caplog):
    """The broker (with --journal) is SIGKILLed and restarted during every plan; workers and
    the client re-attach; every plan completes with the right results, each submitted once."""
    from hyperloom.client import Client

    from .test_broker_restart import Processes
    processes = Processes(str(tmp_path))
    chaos = None
    try:
        processes.start_broker()
        for _ in range(WORKERS):
            processes.start_worker()
        client = Client("127.0.0.1", processes.port, connect_timeout=60)
        wait_until(lambda: client.info()["n_workers"] == WORKERS, timeout=30,
                   message="the workers to join")
        chaos = BrokerChaos(processes, seed=os.environ.get("HYPERLOOM_CHAOS_SEED", "broker"))
        chaos.start()
        caplog.set_level(logging.INFO, logger="hyperloom.client")
        planned = 0
        for run in range(BROKER_RUNS):
            results, expected, n_tasks = build_plan(run)
            started, kills = time.monotonic(), chaos.kills
            # One submit, whatever the kills: a plan that met one before the broker journaled
            # it is sent again by the client itself (client/session.py)
            got = client.gather(client.submit(results))
            assert chaos.error is None, f"the chaos thread failed: {chaos.error!r}"
            assert got == expected, f"run {run}: wrong results"
            planned += n_tasks
            print(f"run {run}: {n_tasks} tasks in {time.monotonic() - started:.1f} s, "
                  f"{chaos.kills - kills} broker kills, {chaos.worker_kills} workers killed "
                  f"so far", flush=True)
        chaos.stop_event.set()
        chaos.join(60)
        assert chaos.error is None, f"the chaos thread failed: {chaos.error!r}"
        recomputed = chaos.recomputed + client.info()["journal"]["recomputed"]
        print(f"\nbroker chaos: {BROKER_RUNS} plans of {n_tasks} tasks, {chaos.kills} broker "
              f"kills (kill -9) and restarts from the journal, {chaos.worker_kills} workers "
              f"killed while it was down; {recomputed} tasks computed twice of {planned} "
              f"({recomputed / planned:.2%}; read before each kill); "
              f"{caplog.text.count('not journaled sent again')} times the client sent a plan "
              f"again that a kill had met before the broker journaled it", flush=True)
        assert chaos.kills >= BROKER_RUNS, "too few kills to call it chaos"
        assert all(w.poll() is None for w in processes.workers if w not in chaos.killed), \
            "a worker gave up"
        client.close()
    finally:
        if chaos is not None:
            chaos.stop_event.set()
            chaos.join(60)
        processes.stop()
