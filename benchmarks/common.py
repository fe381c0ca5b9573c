"""Shared helpers of the benchmark suite: environment, metadata, timing,
process cleanup, RSS sampling, result records (JSON lines) and the table.

Nothing here knows about a particular scenario or system.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO_ROOT / "benchmarks" / "results.jsonl"


def prepare_environment() -> None:
    """Make ``benchmarks`` and ``hyperloom`` importable here and in every
    process we spawn (workers unpickle functions defined in this package)."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([root] + parts)


# ---------------------------------------------------------------- metadata


def _version(module: str) -> str:
    try:
        mod = __import__(module)
    except Exception:
        return "unavailable"
    return str(getattr(mod, "__version__", "unknown"))


def git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def metadata() -> dict:
    """Versions, git hash and machine description stored with every record."""
    return {
        "versions": {
            "python": platform.python_version(),
            "pyzmq": _version("zmq"),
            "dask": _version("dask"),
            "distributed": _version("distributed"),
            "hyperloom": _version("hyperloom"),
        },
        "git": git_hash(),
        "machine": {"nproc": os.cpu_count(), "cpu_model": cpu_model(),
                    "platform": platform.platform()},
    }


# ---------------------------------------------------------------- timing


class RepTimeout(Exception):
    """One repetition ran longer than its limit."""


class time_limit:
    """Raise RepTimeout in the main thread after ``seconds`` (SIGALRM)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def _fire(self, signum, frame):
        raise RepTimeout(f"repetition (incl. cluster start) exceeded {self.seconds:g} s")

    def __enter__(self):
        if self.seconds and threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        if self.seconds and threading.current_thread() is threading.main_thread():
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old)
        return False


def wait_until(predicate, timeout: float, interval: float = 0.02):
    """Poll ``predicate()`` until it returns a truthy value; return it."""
    deadline = time.perf_counter() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.perf_counter() > deadline:
            raise TimeoutError("condition not reached in %.0f s" % timeout)
        time.sleep(interval)


# ---------------------------------------------------------------- processes


def kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Terminate a process started with ``start_new_session=True`` together
    with everything in its process group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass


def rss(pid: int) -> int:
    import psutil
    return psutil.Process(pid).memory_info().rss


class PeakRss:
    """Samples a process's RSS in a background thread; ``peak`` is the max."""

    def __init__(self, pid: int, interval: float = 0.005):
        self.pid, self.interval = pid, interval
        self.peak = rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil
        proc = psutil.Process(self.pid)
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, proc.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


# ---------------------------------------------------------------- results


@dataclass
class Row:
    """One measured quantity of one case for one system."""
    scenario: str
    case: str
    metric: str
    unit: str
    system: str
    params: dict
    reps: list = field(default_factory=list)
    error: str | None = None
    higher_is_better: bool = True
    skipped: bool = False      # not measured by design (shown as "-")
    loadavg: tuple | None = None  # os.getloadavg() when the case started

    @property
    def median(self):
        return statistics.median(self.reps) if self.reps and not self.error else None

    def record(self, meta: dict) -> dict:
        return {
            "scenario": self.scenario, "case": self.case, "metric": self.metric,
            "params": self.params, "system": self.system, "median": self.median,
            "repetitions": self.reps, "unit": self.unit, "error": self.error,
            "loadavg_at_start": self.loadavg,
            **meta, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def append_json(rows: list[Row], path: str | os.PathLike, meta: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        for row in (r for r in rows if not r.skipped):
            fh.write(json.dumps(row.record(meta), default=str) + "\n")


def fmt(value) -> str:
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.01:
        return f"{value:.3f}"
    return f"{value:.2e}"


def table(rows: list[Row]) -> str:
    """Medians side by side: one line per (scenario, case, metric)."""
    keys, by_key = [], {}
    for row in rows:
        key = (row.scenario, row.case, row.metric, row.unit,
               "higher" if row.higher_is_better else "lower")
        if key not in by_key:
            keys.append(key)
            by_key[key] = {}
        by_key[key][row.system] = row
    header = ("scenario", "case", "metric", "unit", "better", "hyperloom",
              "dask", "hl/dask", "reference")
    lines = [header]
    for key in keys:
        systems = by_key[key]
        hl, dk = systems.get("hyperloom"), systems.get("dask")
        hl = None if hl is None or hl.skipped else hl
        dk = None if dk is None or dk.skipped else dk
        hl_v = hl.median if hl else None
        dk_v = dk.median if dk else None
        ratio = fmt(hl_v / dk_v) if hl_v is not None and dk_v else "n/a"
        refs = ", ".join(f"{name}={fmt(r.median)}" for name, r in systems.items()
                         if name not in ("hyperloom", "dask") and not r.skipped)
        lines.append(key + (fmt(hl_v) if hl else "-", fmt(dk_v) if dk else "-",
                            ratio if hl and dk else "-", refs))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def errors_report(rows: list[Row]) -> str:
    lines = [f"  {r.system} {r.scenario}/{r.case}/{r.metric}: {r.error}"
             for r in rows if r.error]
    return "errors (shown as n/a):\n" + "\n".join(lines) if lines else ""


def add_standalone_options(parser, repeat: int = 3):
    """The options every standalone benchmark script shares."""
    parser.add_argument("--repeat", type=int, default=repeat)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-dask", action="store_true")
    parser.add_argument("--no-hyperloom", action="store_true")
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    parser.add_argument("--timeout", type=float, default=600.0)


def time_gathers(samples, nbytes, server_pid, make, gather):
    """``samples`` times: ``make(i)`` an array of ``nbytes`` and wait for it, then time
    ``gather(future)`` alone while sampling the server's RSS. GB/s of the median gather,
    and the median rise of the server's RSS (MB) meanwhile."""
    times, rises = [], []
    for i in range(samples):
        future = make(i)
        before = rss(server_pid)
        with PeakRss(server_pid) as peak:
            t0 = time.perf_counter()
            value = gather(future)
            times.append(time.perf_counter() - t0)
        rises.append(peak.peak - before)
        assert value.nbytes == nbytes // 8 * 8
        del future, value
    return {"gbps_gather": nbytes / statistics.median(times) / 1e9,
            "server_mb": statistics.median(rises) / 1e6}
