"""Python tasks on a multi-core worker: serial vs PythonPool, and the pool's per-task overhead.

Run:  python benchmarks/py_parallel.py [--processes 2] [--seconds 0.5] [--tiny 2000]

Prints a readable summary and one JSON line per scenario (scenario, sizes,
figures, versions, git hash, load average: a busy machine skews every figure).
Scenarios:
  cpu_bound      4 tasks that each spin ~--seconds in pure Python: run one after
                 another in this process (what a 1-core worker does in its
                 thread) vs submitted together to PythonPool(--processes).
  tiny_latency   one tiny py_call at a time through the pool (submit -> result),
                 minus nothing: the whole round trip a task pays; and the same
                 call in-process for comparison.
  tiny_pipelined --processes tiny tasks in flight at once (how a worker with
                 that many cores keeps the pool busy): time per task.
  ppe_latency    the same round trip through concurrent.futures.ProcessPoolExecutor
                 (forkserver) for a trivial function, the alternative not chosen.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time

import cloudpickle

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hyperloom.client import tasks
from hyperloom.data import Plain
from hyperloom.worker.py_pool import PythonPool
from hyperloom.worker.py_task import execute_py_value, execute_python_task
from hyperloom.worker.taskdef import TaskContext


def spin(n, a):
    """Pure-Python CPU work; returns the CPU seconds it got (a busy machine gives less)."""
    started = time.process_time()
    total = 0
    for i in range(n):
        total += i * i
    return f"{total % 1000} {time.process_time() - started}"


def cpu_seconds(results) -> float:
    return sum(float(result.data.split()[1]) for result in results)


def hello(a):
    return b"Hello " + a.read()


def trivial(x):
    return x


def py_call_ctx(task, *inputs) -> TaskContext:
    fn_task = task.inputs[0]
    fn_obj = execute_py_value(TaskContext(0, fn_task.task_type, fn_task.config, []))
    return TaskContext(1, task.task_type, task.config, [fn_obj, *inputs])


def iterations_for(seconds: float) -> int:
    n = 300_000
    started = time.perf_counter()
    spin(n, None)
    return int(n * seconds / (time.perf_counter() - started))


def cpu_bound(pool: PythonPool, seconds: float, n_tasks: int = 4) -> dict:
    n = iterations_for(seconds)
    task = tasks.py_call(tasks.py_value(spin), (tasks.const("x"),), direct_args=(n,))
    contexts = [py_call_ctx(task, Plain(b"x")) for _ in range(n_tasks)]
    started = time.perf_counter()
    serial_cpu = cpu_seconds([execute_python_task("py_call", ctx) for ctx in contexts])
    serial = time.perf_counter() - started
    started = time.perf_counter()
    futures = [pool.submit("py_call", ctx) for ctx in contexts]
    pool_cpu = cpu_seconds([future.result() for future in futures])
    parallel = time.perf_counter() - started
    # CPU/wall: cores the tasks really used at once; below 1 in the serial run
    # means neighbours took part of the machine during the measurement.
    return {"tasks": n_tasks, "task_seconds": seconds, "serial_s": round(serial, 3),
            "pool_s": round(parallel, 3), "speedup": round(serial / parallel, 2),
            "serial_cpu_per_wall": round(serial_cpu / serial, 2),
            "pool_cpu_per_wall": round(pool_cpu / parallel, 2)}


def per_call_us(fn, repeat: int) -> float:
    """Median over 5 rounds of the mean time of one call, in µs."""
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeat):
            fn()
        rounds.append((time.perf_counter() - started) / repeat * 1e6)
    return round(statistics.median(rounds), 1)


def tiny(pool: PythonPool, repeat: int, in_flight: int) -> dict:
    ctx = py_call_ctx(tasks.py_call(tasks.py_value(hello), (tasks.const("x"),)), Plain(b"w"))
    pool.submit("py_call", ctx).result()
    latency = per_call_us(lambda: pool.submit("py_call", ctx).result(), repeat)

    def batch():
        for future in [pool.submit("py_call", ctx) for _ in range(in_flight)]:
            future.result()

    pipelined = per_call_us(batch, max(1, repeat // in_flight)) / in_flight
    inline = per_call_us(lambda: execute_python_task("py_call", ctx), repeat)
    return {"tasks": repeat, "pool_latency_us": latency, "in_flight": in_flight,
            "pool_pipelined_us_per_task": round(pipelined, 1), "in_process_us": inline}


def ppe_latency(processes: int, repeat: int) -> dict:
    context = multiprocessing.get_context("forkserver")
    payload = cloudpickle.dumps(hello)
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as executor:
        executor.submit(trivial, payload).result()
        latency = per_call_us(lambda: executor.submit(trivial, payload).result(), repeat)
    return {"tasks": repeat, "ppe_latency_us": latency}


def git_hash() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--tiny", type=int, default=2000)
    options = parser.parse_args()
    common = {"processes": options.processes, "cpus": os.cpu_count(),
              "python": platform.python_version(), "git": git_hash()}
    with PythonPool(options.processes) as pool:
        pool.submit("py_call", py_call_ctx(
            tasks.py_call(tasks.py_value(hello), (tasks.const("x"),)), Plain(b"w"))).result()
        rows = [("cpu_bound", cpu_bound(pool, options.seconds)),
                ("tiny", tiny(pool, options.tiny, options.processes))]
    rows.append(("ppe_latency", ppe_latency(options.processes, options.tiny)))
    cpu, small, ppe = (row for _, row in rows)
    print(f"CPU-bound, {cpu['tasks']} x {cpu['task_seconds']} s: serial {cpu['serial_s']} s, "
          f"pool({options.processes}) {cpu['pool_s']} s, speed-up x{cpu['speedup']} "
          f"(cores used: serial {cpu['serial_cpu_per_wall']}, pool {cpu['pool_cpu_per_wall']})")
    print(f"tiny task: pool round trip {small['pool_latency_us']} µs, "
          f"{small['pool_pipelined_us_per_task']} µs/task with {small['in_flight']} in flight, "
          f"in-process {small['in_process_us']} µs; "
          f"ProcessPoolExecutor round trip {ppe['ppe_latency_us']} µs")
    for scenario, figures in rows:
        print(json.dumps({"scenario": scenario, **figures, **common,
                          "loadavg_1min": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
