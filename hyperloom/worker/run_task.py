"""The worker side of ``loom/run/run``: run an external program in a fresh directory.

Owns the run directory's lifecycle, the mapping of input data objects to
variables, files and standard input, the program's spawn (with optional
``taskset`` pinning), the original's error messages, and the collection of
output files into the task's result. Blocking: the worker calls
``execute_run`` in a thread.

Behaviour (reference §5.2) and the deliberate differences from the original:
- the run directory is ``<work_dir>/run/<task id>-<unique suffix>/`` so that a
  retried or redirected task never meets a leftover directory of the same id;
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
import subprocess
import tempfile

from .. import protocol
from ..data import Array, DataObject, File, Plain
from .taskdef import TaskContext, TaskError

STDIN_NAME = "+in"
STDOUT_NAME = "+out"
STDERR_NAME = "+err"

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
    run_dir = _make_run_dir(ctx)
    try:
        variables = _map_inputs(run_dir, input_names, ctx.inputs)
        argv = [variables.get(arg, arg) for arg in args]
        status = _spawn(argv, run_dir, ctx)
        _check_status(status, run_dir)
        return _collect_outputs(run_dir, output_names)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _make_run_dir(ctx: TaskContext) -> str:
    # An empty work_dir only happens in ad-hoc use; the system temp dir keeps
    # the run directory out of the caller's cwd.
    parent = os.path.join(ctx.work_dir or tempfile.gettempdir(), "run")
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{ctx.task_id}-", dir=parent)


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

def _spawn(argv: list, run_dir: str, ctx: TaskContext) -> int:
    """Run the program to completion; return its wait status (negative = signal)."""
    program = argv[0]
    if ctx.pin and ctx.cpu_ids:
        # With taskset in front a missing program would only show as taskset's
        # exit status; check first so the message is the one users expect.
        problem = _lookup_problem(program, run_dir)
        if problem:
            raise TaskError(f"spawning '{program}': {problem}")
        argv = ["taskset", "-c", ",".join(str(cpu) for cpu in ctx.cpu_ids)] + argv
    stdin_path = os.path.join(run_dir, STDIN_NAME)
    stdin_name = stdin_path if os.path.lexists(stdin_path) else os.devnull
    try:
        with open(stdin_name, "rb") as stdin, \
                open(os.path.join(run_dir, STDOUT_NAME), "wb") as stdout, \
                open(os.path.join(run_dir, STDERR_NAME), "wb") as stderr:
            # A process group of its own, so that a cancel kills what the program started too.
            process = subprocess.Popen(argv, cwd=run_dir, stdin=stdin, stdout=stdout,
                                       stderr=stderr, close_fds=True, start_new_session=True)
    except OSError as error:
        # libuv's wording is the lower-case strerror ("no such file or directory").
        raise TaskError(f"spawning '{argv[0]}': {(error.strerror or str(error)).lower()}") \
            from None
    except ValueError as error:  # e.g. an embedded NUL byte from a variable
        raise TaskError(f"spawning '{program}': {error}") from None
    # A cancel kills the group; wait() then returns, and always reaps, so no zombie
    # stays behind. The kill is disarmed before the pid can be reused.
    cancel = ctx.cancel
    if cancel is None:
        return process.wait()
    cancel.on_cancel(lambda: _kill_group(process.pid))
    try:
        return process.wait()
    finally:
        cancel.on_cancel(None)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:  # the group is gone already
        pass


def _lookup_problem(program: str, run_dir: str) -> str | None:
    """Why execvp(program) would fail, as libuv words it; None when it would not."""
    if "/" in program:
        # execvp resolves a relative path against the child's cwd: the run dir.
        path = os.path.join(run_dir, program)
        if not os.path.exists(path):
            return "no such file or directory"
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            return "permission denied"
        return None
    return None if shutil.which(program) else "no such file or directory"


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

def _collect_outputs(run_dir: str, names: list) -> DataObject:
    results = [_read_output(run_dir, name) for name in names]
    if len(results) == 1:
        return results[0]
    return Array(results)


def _read_output(run_dir: str, name: str) -> Plain:
    path = _path_in(run_dir, name, f"Output '{name}' error")
    try:
        with open(path, "rb") as f:
            return Plain(f.read())
    except OSError as error:
        raise TaskError(f"Output '{name}' error: {error.strerror}\n"
                        f"Stderr:\n{_read_stderr(run_dir)}") from None
