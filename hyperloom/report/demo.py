"""A synthetic but realistic trace directory, for the report's tests, docs and a quick look.

``write_demo_trace`` simulates a broker and workers on a virtual clock (no sleeping) and writes
their ``.ltrace`` files through the real ``TraceWriter``: labelled groups of light, 1-core and
2-core tasks, data moved between workers, and once-a-second CPU/memory samples.
``python -m hyperloom.report.demo DIR`` writes one.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass

from hyperloom.trace import TraceWriter

_WALL_START_NS = 1_700_000_000 * 10**9
_LIGHT_SECONDS = 0.002


@dataclass(frozen=True)
class _Spec:
    task_id: int
    task_type: str
    label: str | None
    inputs: tuple[int, ...]
    cpus: int             # 0 for light tasks
    seconds: float
    size: int


class _VirtualClock:
    def __init__(self) -> None:
        self.now_ns = 0

    def monotonic(self) -> int:
        return self.now_ns

    def wall(self) -> int:
        return _WALL_START_NS + self.now_ns


def plan(n_tasks: int, rng: random.Random) -> list[_Spec]:
    """Init (light) → Compute: i (1 core) → Aggregate (2 cores, one per 8 computes) → a merge."""
    n_init = max(1, n_tasks // 10)
    n_agg = max(1, (n_tasks - n_init - 1) // 9)
    n_compute = n_tasks - n_init - n_agg - 1
    if n_compute < 1:
        raise ValueError("a demo plan needs at least 4 tasks")
    specs = [_Spec(i, "loom/data/const", "Init", (), 0, _LIGHT_SECONDS, 1000)
             for i in range(n_init)]
    for i in range(n_compute):
        specs.append(_Spec(len(specs), "loom/py/call", f"Compute: {i}", (rng.randrange(n_init),),
                           1, rng.uniform(0.2, 1.5), rng.randrange(10_000, 2_000_000)))
    computes = [s.task_id for s in specs[n_init:]]
    for i in range(n_agg):
        specs.append(_Spec(len(specs), "loom/run/run", "Aggregate", tuple(computes[i::n_agg]),
                           2, rng.uniform(0.3, 0.8), 50_000))
    specs.append(_Spec(len(specs), "loom/data/merge", None,
                       tuple(s.task_id for s in specs[-n_agg:]), 0, _LIGHT_SECONDS, 150_000))
    return specs


def _join_time(worker: int) -> float:
    return 0.05 * (worker + 1)  # workers join one by one, the plan comes after the last one


# task id -> (worker index, cpu ids, start, end), in seconds of the virtual clock
Placement = dict[int, tuple[int, tuple[int, ...], float, float]]
# (time, writer, method, args): replayed in time order on the virtual clock
Action = tuple[float, TraceWriter, str, tuple]


def schedule(specs: list[_Spec], n_workers: int, cpus: int) -> Placement:
    """Greedy list scheduling in plan order: each task on the worker that can start it first."""
    if n_workers < 1 or cpus < 1:
        raise ValueError(f"a demo schedule needs workers and cpus, got {n_workers} workers "
                         f"of {cpus} cpus")
    submitted = _join_time(n_workers)
    free_at = [[submitted] * cpus for _ in range(n_workers)]
    placed: Placement = {}
    for spec in specs:
        ready = max((placed[i][3] for i in spec.inputs), default=submitted + 0.005)
        if spec.cpus == 0:
            worker = placed[spec.inputs[0]][0] if spec.inputs else spec.task_id % n_workers
            placed[spec.task_id] = (worker, (), ready, ready + spec.seconds)
            continue
        best: tuple[int, tuple[int, ...], float] | None = None
        for worker, cores in enumerate(free_at):
            chosen = sorted(range(cpus), key=lambda c: cores[c])[:spec.cpus]
            start = max([ready] + [cores[c] for c in chosen]) + 0.01  # 10 ms scheduling delay
            if best is None or start < best[2]:
                best = (worker, tuple(sorted(chosen)), start)
        assert best is not None  # there is a worker
        worker, cpu_ids, start = best
        for c in cpu_ids:
            free_at[worker][c] = start + spec.seconds
        placed[spec.task_id] = (worker, cpu_ids, start, start + spec.seconds)
    return placed


def write_demo_trace(directory: str, n_workers: int = 2, cpus: int = 4, n_tasks: int = 50,
                     seed: int = 0, failed: tuple[int, ...] = ()) -> None:
    """Write ``broker.ltrace`` and ``worker-<i>.ltrace`` (i = 1..n_workers) into ``directory``.

    Tasks whose ids are in ``failed`` are reported as finished unsuccessfully.
    """
    rng = random.Random(seed)
    specs = plan(n_tasks, rng)
    placed = schedule(specs, n_workers, cpus)
    sizes = {s.task_id: s.size for s in specs}
    clock = _VirtualClock()
    broker = TraceWriter(directory, "broker", clock.monotonic, clock.wall)
    actions: list[Action] = []
    workers = []
    for w in range(n_workers):
        clock.now_ns = int(_join_time(w) * 1e9)  # each worker's file starts later
        workers.append(TraceWriter(directory, f"worker-{w + 1}", clock.monotonic, clock.wall))
        actions.append((clock.now_ns / 1e9, broker, "worker_joined",
                        (w + 1, f"10.0.0.{w + 1}:9100", cpus)))
    actions.append((_join_time(n_workers), broker, "tasks_submitted",
                    ([(s.task_id, s.task_type, s.label, s.inputs) for s in specs],)))
    for spec in specs:
        actions.extend(_task_actions(spec, placed, sizes, workers, rng, spec.task_id not in failed))
    end = max(p[3] for p in placed.values())
    actions.extend(_sample_actions(placed, workers, cpus, end))
    for t, writer, method, args in sorted(actions, key=lambda a: a[0]):
        clock.now_ns = int(t * 1e9)
        getattr(writer, method)(*args)
    for writer in [broker] + workers:
        writer.close()


def _task_actions(spec, placed, sizes, workers, rng, ok):
    worker, cpu_ids, start, end = placed[spec.task_id]
    actions = []
    for input_id in spec.inputs:
        source = placed[input_id][0]
        if source != worker:  # an input made elsewhere is fetched just before the start
            nbytes = sizes[input_id]
            seconds = nbytes / 500e6 + rng.uniform(0.0005, 0.002)
            actions.append((start - seconds - 0.001, workers[source], "data_sent",
                            (input_id, nbytes, f"10.0.0.{worker + 1}:9100")))
            actions.append((start - 0.001, workers[worker], "data_received",
                            (input_id, nbytes, f"10.0.0.{source + 1}:9100", seconds)))
    actions.append((start, workers[worker], "task_started", (spec.task_id, cpu_ids)))
    actions.append((end, workers[worker], "task_finished", (spec.task_id, spec.size, ok)))
    return actions


def _sample_actions(placed, workers, cpus, end):
    """Once a second per worker: the busy share of its cores, and memory growing with it."""
    seconds = int(end) + 2
    busy = [[0.0] * seconds for _ in workers]  # core-seconds per worker per second
    for worker, cpu_ids, start, stop in placed.values():
        for second in range(int(start), int(stop) + 1):
            overlap = min(stop, second + 1) - max(start, second)
            busy[worker][second] += max(0.0, overlap) * len(cpu_ids)
    actions = []
    for w, writer in enumerate(workers):
        for second in range(seconds):
            share = min(100.0, 100.0 * busy[w][second] / cpus)
            actions.append((second + 0.5, writer, "sample",
                            (share, int((150 + 4 * share + 20 * w) * 2**20))))
    return actions


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m hyperloom.report.demo DIR")
    write_demo_trace(sys.argv[1], n_workers=3, cpus=4, n_tasks=120, failed=(40,))
