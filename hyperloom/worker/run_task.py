"""The worker side of ``loom/run/run``: run an external program in a fresh directory.

Owns the run directory's lifecycle (and the pool of run directories kept for
reuse), the mapping of input data objects to variables, files and standard
input, the program's spawn (with optional pinning), the original's error
messages, and the collection of output files into the task's result.
Blocking: the worker calls ``execute_run`` in a thread.

Behaviour (reference §5.2) and the deliberate differences from the original:
- the run directory is ``<work_dir>/run/<task id>-<unique suffix>/`` so that a
  retried or redirected task never meets a leftover directory of the same id;
  a worker keeps the directories of cleanly finished programs (nothing left in
  them but ``+out``/``+err``, nothing left running) and gives them to later
  tasks (``RunDirs``): on ext4 creating and removing a directory and two files
  cost ~0.3 ms, a third of a ``run("true")``;
- the program is spawned by CPython's ``subprocess`` (vfork + exec, no copy of
  the worker's memory) and pinned by setting the spawning thread's CPU
  affinity, which the child inherits: no ``taskset`` exec (which doubled the
  cost of a short program). ``os.posix_spawn`` (the same vfork in glibc) would
  save ~30 µs of Popen's Python per program but cannot set the working
  directory (benchmarks/README.md, "Programs");
- a program killed by a signal fails the task (the original reported success);
- the program runs in a process group of its own, killed whole when the task
  is canceled (``ctx.cancel``), so a released task stops at once;
- non-D-object inputs, mapped names that escape the run directory, and inputs
  mapped to ``+out``/``+err`` fail the task cleanly (the original crashed or
  clobbered files);
- stdout is always captured to ``+out`` (the original discarded it when no
  output named ``+out``; keeping it costs nothing and helps debugging);
- outputs are read into memory as bytes (the original moved them into the
  data directory and mmapped them).
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading

from .. import protocol
from ..data import Array, DataObject, File, Plain
from .taskdef import TaskContext, TaskError

STDIN_NAME = "+in"
STDOUT_NAME = "+out"
STDERR_NAME = "+err"
_CAPTURED = {STDOUT_NAME, STDERR_NAME}

# The original read at most this much stderr into the error message.
STDERR_LIMIT = 128 * 1024
STDERR_TRUNCATED = "\n ... stderr truncated by Loom"


def execute_run(ctx: TaskContext) -> DataObject:
    """Run the program described by ``ctx.config``; its outputs are the result."""
    try:
        args, input_names, output_names = protocol.decode_run_config(ctx.config)
    except protocol.ProtocolError as error:
        raise TaskError(str(error)) from None
    if not args:
        raise TaskError("No arguments provided")
    if ctx.cancel is not None and ctx.cancel.canceled:
        raise TaskError("Canceled before the program started")
    if len(input_names) != len(ctx.inputs):
        raise TaskError(f"Run configuration maps {len(input_names)} inputs, "
                        f"but the task has {len(ctx.inputs)}")
    run_dirs = ctx.run_dirs
    run_dir = run_dirs.take() if run_dirs is not None else None
    if run_dir is None:
        run_dir = _make_run_dir(ctx)
    clean = False
    try:
        variables = _map_inputs(run_dir, input_names, ctx.inputs)
        argv = [variables.get(arg, arg) for arg in args]
        # Only a mapped file can be +in: a fresh or reused run directory holds no other.
        maps_files = len(variables) < len(input_names)
        status, clean = _spawn(argv, run_dir, ctx, maps_files)
        _check_status(status, run_dir)
        return _collect_outputs(run_dir, output_names)
    finally:
        if not (clean and run_dirs is not None and run_dirs.give_back(run_dir)):
            shutil.rmtree(run_dir, ignore_errors=True)


def program_of(config: bytes) -> str | None:
    """The program a run task's config names (its first argument), None if invalid."""
    try:
        args = protocol.decode_run_config(config)[0]
    except protocol.ProtocolError:
        return None
    return args[0] if args else None


def _make_run_dir(ctx: TaskContext) -> str:
    # An empty work_dir only happens in ad-hoc use; the system temp dir keeps
    # the run directory out of the caller's cwd.
    parent = os.path.join(ctx.work_dir or tempfile.gettempdir(), "run")
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{ctx.task_id}-", dir=parent)


class RunDirs:
    """Run directories of finished programs, kept for the next tasks of one worker.

    A directory comes back only when it holds exactly ``+out`` and ``+err``, both
    plain files with one link, and is still mode 0700 (as mkdtemp made it): they
    are truncated (now, and again by the next task), so they must not be links
    to anything else, and no other file may leak into the next task. A spare
    directory thus holds two empty files. Thread-safe; at most
    ``limit`` are kept.

    It also remembers where programs named without a ``/`` were found on PATH
    (``which``): given the full path, the spawn makes one ``execve`` instead of
    trying each PATH directory in turn (~45 µs of CPU per program here). A path
    that no longer works is forgotten when its spawn fails (``forget``), and the
    spawn searches PATH again.
    """

    def __init__(self, limit: int = 16):
        self._free: list[str] = []
        self._limit = limit
        self._lock = threading.Lock()
        self._programs: dict = {}   # (name, PATH) -> full path

    def which(self, program: str) -> str | None:
        """The full path of ``program`` on PATH, or None (then the spawn searches,
        and reports a missing program as it always did)."""
        if "/" in program or not program:
            return None
        key = (program, os.environ.get("PATH", os.defpath))
        path = self._programs.get(key)
        if path is not None:
            return path
        path = shutil.which(program)
        if path is not None and len(self._programs) < 1024:
            self._programs[key] = path
        return path

    def forget(self, program: str) -> None:
        """``which`` found ``program`` where it no longer runs from: search again next time."""
        self._programs.pop((program, os.environ.get("PATH", os.defpath)), None)

    def take(self) -> str | None:
        with self._lock:
            return self._free.pop() if self._free else None

    def give_back(self, run_dir: str) -> bool:
        """Keep ``run_dir`` for reuse if it is clean; False: the caller removes it."""
        try:
            if stat.S_IMODE(os.lstat(run_dir).st_mode) != 0o700:
                return False
            with os.scandir(run_dir) as entries:
                names, filled = [], []
                for entry in entries:
                    info = entry.stat(follow_symlinks=False)
                    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                        return False
                    names.append(entry.name)
                    if info.st_size:
                        filled.append(entry.path)
            if len(names) != 2 or set(names) != _CAPTURED:
                return False
            for path in filled:  # no task's output stays on disk after its task
                os.truncate(path, 0)
        except OSError:
            return False
        with self._lock:
            if len(self._free) >= self._limit:
                return False
            self._free.append(run_dir)
        return True

    def close(self) -> None:
        with self._lock:
            free, self._free = self._free, []
        for run_dir in free:
            shutil.rmtree(run_dir, ignore_errors=True)


# ---------------------------------------------------------------- inputs

def _map_inputs(run_dir: str, names: list, inputs: list) -> dict:
    """Create the mapped files; return ``{"$NAME": value}`` for the variables."""
    variables = {}
    for index, (name, obj) in enumerate(zip(names, inputs)):
        raw = obj.raw()
        if raw is None:
            raise TaskError(f"Input {index} mapped to '{name}' is {type(obj).__name__}, "
                            "not a D-object")
        if name.startswith("$"):
            # surrogateescape: arbitrary bytes survive the round trip into argv
            variables[name] = bytes(raw).decode("utf-8", "surrogateescape")
        else:
            _map_file(run_dir, index, name, obj, raw)
        if isinstance(obj, File):
            _close_mapping(raw)
    return variables


def _map_file(run_dir: str, index: int, name: str, obj: DataObject, raw) -> None:
    if name in (STDOUT_NAME, STDERR_NAME):
        raise TaskError(f"Input {index} cannot be mapped to '{name}': "
                        "the name is reserved for the program's output")
    path = _path_in(run_dir, name, f"Input {index} mapped to '{name}'")
    if os.path.lexists(path):
        raise TaskError(f"Input {index} mapped to '{name}': the name is already mapped")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if isinstance(obj, File):
        # Files live on a shared file system: link, never copy (as the original).
        os.symlink(os.path.abspath(obj.path), path)
        return
    with open(path, "wb") as f:
        f.write(raw)


def _path_in(run_dir: str, name: str, what: str) -> str:
    """``<run_dir>/<name>``, refusing names that would land outside the run dir."""
    parts = name.split("/")
    if not name or os.path.isabs(name) or ".." in parts or "\0" in name:
        raise TaskError(f"{what}: the name must be a relative path inside the run directory")
    return os.path.join(run_dir, name)


def _close_mapping(raw) -> None:
    # File.raw() returns a fresh mmap owned by us; release it now rather than
    # at GC time. (A Plain's buffer belongs to the store: never close that.)
    close = getattr(raw, "close", None)
    if close is not None:
        try:
            close()
        except (BufferError, ValueError):  # still exported elsewhere: leave it to GC
            pass


# ---------------------------------------------------------------- the program

def _spawn(argv: list, run_dir: str, ctx: TaskContext, maps_files: bool) -> tuple[int, bool]:
    """Run the program to completion. Returns its wait status (negative = signal)
    and whether it ended cleanly: not canceled, nothing of its process group left
    running (that could still write into the run directory)."""
    stdin_name = os.devnull
    if maps_files:
        stdin_path = os.path.join(run_dir, STDIN_NAME)
        if os.path.lexists(stdin_path):
            stdin_name = stdin_path
    cpus = ctx.cpu_ids if ctx.pin and ctx.cpu_ids else None
    fds = []
    try:
        fds.append(os.open(stdin_name, os.O_RDONLY | os.O_CLOEXEC))
        for name in (STDOUT_NAME, STDERR_NAME):
            fds.append(os.open(os.path.join(run_dir, name),
                               os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644))
        run_dirs = ctx.run_dirs
        executable = run_dirs.which(argv[0]) if run_dirs is not None else None
        try:
            process = _popen(argv, run_dir, fds, cpus, executable)
        except OSError:
            if executable is None or run_dirs is None:
                raise
            run_dirs.forget(argv[0])  # moved or removed since it was found: search PATH
            process = _popen(argv, run_dir, fds, cpus)
    except OSError as error:
        # libuv's wording is the lower-case strerror ("no such file or directory").
        raise TaskError(f"spawning '{argv[0]}': {(error.strerror or str(error)).lower()}") \
            from None
    except ValueError as error:  # e.g. an embedded NUL byte from a variable
        raise TaskError(f"spawning '{argv[0]}': {error}") from None
    finally:
        for fd in fds:
            os.close(fd)
    # A cancel kills the group; wait() then returns, and always reaps, so no zombie
    # stays behind. The kill is disarmed before the pid can be reused.
    cancel = ctx.cancel
    if cancel is None:
        status = process.wait()
        return status, _group_gone(process.pid)
    cancel.on_cancel(lambda: _kill_group(process.pid))
    try:
        status = process.wait()
        return status, _group_gone(process.pid) and not cancel.canceled
    finally:
        cancel.on_cancel(None)


def _popen(argv: list, run_dir: str, fds: list, cpus, executable=None) -> subprocess.Popen:
    """Spawn (vfork + exec); pinned to ``cpus`` by this thread's affinity, inherited."""
    def spawn():
        # A process group of its own, so that a cancel kills what the program started too.
        return subprocess.Popen(argv, executable=executable, cwd=run_dir,
                                stdin=fds[0], stdout=fds[1], stderr=fds[2],
                                close_fds=True, start_new_session=True)
    if cpus is None:
        return spawn()
    previous = os.sched_getaffinity(0)  # 0: this thread only
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as error:
        raise TaskError(f"pinning '{argv[0]}' to cpus {list(cpus)}: "
                        f"{(error.strerror or str(error)).lower()}") from None
    try:
        return spawn()
    finally:
        os.sched_setaffinity(0, previous)


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:  # the group is gone already
        pass


def _check_status(status: int, run_dir: str) -> None:
    if status == 0:
        return
    stderr = _read_stderr(run_dir)
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = "unknown signal"
        raise TaskError(f"Program terminated by signal {-status} ({name})\nStderr:\n{stderr}")
    raise TaskError(f"Program terminated with status {status}\nStderr:\n{stderr}")


def _read_stderr(run_dir: str) -> str:
    try:
        with open(os.path.join(run_dir, STDERR_NAME), "rb") as f:
            data = f.read(STDERR_LIMIT)
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    return text + STDERR_TRUNCATED if len(data) == STDERR_LIMIT else text


# ---------------------------------------------------------------- outputs

def _read_file(path: str) -> bytes:
    """The whole file, in one ``read`` when its size holds (``open(path, "rb").read()``
    makes seven system calls; each cost several µs after the program's exit)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        wanted = os.fstat(fd).st_size + 1
        data = os.read(fd, wanted)
        if len(data) < wanted:  # a short read of a regular file: the end
            return data
        chunks = [data]
        while True:  # it grew, or is no regular file: read to the end
            data = os.read(fd, 1 << 20)
            if not data:
                return b"".join(chunks)
            chunks.append(data)
    finally:
        os.close(fd)


def _collect_outputs(run_dir: str, names: list) -> DataObject:
    results = [_read_output(run_dir, name) for name in names]
    if len(results) == 1:
        return results[0]
    return Array(results)


def _read_output(run_dir: str, name: str) -> Plain:
    path = _path_in(run_dir, name, f"Output '{name}' error")
    try:
        return Plain(_read_file(path))
    except OSError as error:
        raise TaskError(f"Output '{name}' error: {error.strerror}\n"
                        f"Stderr:\n{_read_stderr(run_dir)}") from None
