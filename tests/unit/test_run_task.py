"""loom/run/run on the worker: the guide's examples and the reference's §5.2, without sockets."""

from __future__ import annotations

import os
import threading

import pytest

from hyperloom.worker.run_task import RunDirs

from hyperloom.client import tasks
from hyperloom.data import Array, File, Index, Plain, PyObj
from hyperloom.worker.run_task import execute_run
from hyperloom.worker.taskdef import TaskContext, TaskError


@pytest.fixture
def work_dir(tmp_path):
    path = tmp_path / "worker"
    (path / "run").mkdir(parents=True)  # as the worker lays out its directory
    yield str(path)
    # Every run directory is removed, after success and after failure alike.
    assert os.listdir(path / "run") == []


def run(work_dir, task, inputs=(), task_id=7, **ctx_options):
    ctx = TaskContext(task_id, task.task_type, task.config, list(inputs),
                      work_dir=work_dir, **ctx_options)
    return execute_run(ctx)


def fails(work_dir, task, inputs=(), **ctx_options) -> str:
    with pytest.raises(TaskError) as info:
        run(work_dir, task, inputs, **ctx_options)
    return str(info.value)


# ---------------------------------------------------------------- the guide

def test_grep_maps_stdin_and_captures_stdout(work_dir):
    task = tasks.run("/bin/grep Loom", stdin=tasks.const("x"))
    text = Plain(b"Hello Loom\nnothing\nLoom again\n")
    assert run(work_dir, task, [text]).data == b"Hello Loom\nLoom again\n"


def test_explicit_arguments_keep_spaces(work_dir):
    task = tasks.run(("printf", "%s|", "--arg1", "argument with spaces"))
    assert run(work_dir, task).data == b"--arg1|argument with spaces|"


def test_input_files_are_mapped_in_the_run_directory(work_dir):
    a, b = tasks.const("a"), tasks.const("b")
    task = tasks.run("/bin/cat file1 file2", [(a, "file1"), (b, "file2")])
    assert run(work_dir, task, [Plain(b"first\n"), Plain(b"second\n")]).data == b"first\nsecond\n"


def test_three_simultaneous_runs_with_the_same_file_name(work_dir, tmp_path):
    # Each program waits until all three have started, so they really overlap.
    marks = tmp_path / "marks"
    marks.mkdir()
    script = (f"touch {marks}/$$; i=0; while [ $(ls {marks} | wc -l) -lt 3 ]; do "
              "i=$((i+1)); [ $i -gt 1000 ] && exit 9; sleep 0.01; done; cat file1")
    task = tasks.run(("/bin/sh", "-c", script), [(tasks.const("x"), "file1")])
    results = {}

    def one(name):
        results[name] = run(work_dir, task, [Plain(name.encode())]).data

    threads = [threading.Thread(target=one, args=(name,)) for name in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {"a": b"a", "b": b"b", "c": b"c"}


def test_one_output_file_is_the_result(work_dir):
    task = tasks.run(("/bin/sh", "-c", "echo ignored; echo data > output.txt"),
                     outputs=("output.txt",))
    assert run(work_dir, task).data == b"data\n"


def test_outputs_with_none_give_an_array_in_order(work_dir):
    script = "echo one > output1.txt; echo stdout; echo two > output2.txt"
    task = tasks.run(("/bin/sh", "-c", script), outputs=("output1.txt", None, "output2.txt"))
    result = run(work_dir, task)
    assert isinstance(result, Array)
    assert result.to_python() == [b"one\n", b"stdout\n", b"two\n"]


def test_no_outputs_give_an_empty_array(work_dir):
    result = run(work_dir, tasks.run("/bin/true", outputs=()))
    assert isinstance(result, Array) and result.length == 0


def test_variable_as_the_ls_argument(work_dir, tmp_path):
    listed = tmp_path / "listed"
    listed.mkdir()
    (listed / "some-file").write_bytes(b"")
    task = tasks.run("/bin/ls $PATH", [(tasks.const(str(listed)), "$PATH")])
    assert run(work_dir, task, [Plain(str(listed).encode())]).data == b"some-file\n"


def test_nonzero_exit_reports_status_and_stderr(work_dir):
    message = fails(work_dir, tasks.run("ls /non-existent-path"))
    assert message.startswith("Program terminated with status 2\nStderr:\nls: ")
    assert message.endswith("No such file or directory\n")


# ---------------------------------------------------------------- the reference

def test_variables_replace_only_whole_arguments(work_dir):
    task = tasks.run("/bin/echo $xyz xyz $ab $c pre$xyz",
                     [(tasks.const("1"), "$xyz"), (tasks.const("2"), "$c")])
    result = run(work_dir, task, [Plain(b"123"), Plain(b"456")])
    assert result.data == b"123 xyz $ab 456 pre$xyz\n"


def test_variable_bytes_reach_the_program_unchanged(work_dir):
    task = tasks.run(("printf", "%s", "$X"), [(tasks.const("x"), "$X")])
    assert run(work_dir, task, [Plain(b"\xff\xfe ok")]).data == b"\xff\xfe ok"


def test_run_directory_lists_err_in_out_and_mapped_files(work_dir):
    task = tasks.run("ls", [(tasks.const("f"), "f1")], stdin=tasks.const("i"))
    assert run(work_dir, task, [Plain(b"in"), Plain(b"f")]).data == b"+err\n+in\n+out\nf1\n"


def test_unmapped_stdin_is_empty(work_dir):
    assert run(work_dir, tasks.run("/bin/cat")).data == b""


def test_killed_by_a_signal_fails(work_dir):
    task = tasks.run(("/bin/sh", "-c", "echo dying >&2; kill -9 $$"))
    assert fails(work_dir, task) == "Program terminated by signal 9 (SIGKILL)\nStderr:\ndying\n"


def test_missing_output_file(work_dir):
    task = tasks.run("/bin/true", outputs=("xxx",))
    assert fails(work_dir, task) == "Output 'xxx' error: No such file or directory\nStderr:\n"


def test_long_stderr_is_truncated(work_dir):
    task = tasks.run(("/bin/sh", "-c", "head -c 200000 /dev/zero | tr '\\0' e >&2; exit 3"))
    message = fails(work_dir, task)
    head = "Program terminated with status 3\nStderr:\n"
    assert message == head + "e" * 128 * 1024 + "\n ... stderr truncated by Loom"


def test_empty_arguments(work_dir):
    assert fails(work_dir, tasks.run("")) == "No arguments provided"


@pytest.mark.parametrize("pin", [False, True])
def test_missing_program(work_dir, pin):
    task = tasks.run("/usr/bin/non-existing-program x")
    message = fails(work_dir, task, pin=pin, cpu_ids=(0,))
    assert message == "spawning '/usr/bin/non-existing-program': no such file or directory"


@pytest.mark.parametrize("pin", [False, True])
def test_program_not_on_path(work_dir, pin):
    message = fails(work_dir, tasks.run("non-existing-program-4f1e"), pin=pin, cpu_ids=(0,))
    assert message == "spawning 'non-existing-program-4f1e': no such file or directory"


def test_program_that_is_not_executable(work_dir, tmp_path):
    script = tmp_path / "script.sh"
    script.write_text("echo hi\n")
    message = fails(work_dir, tasks.run(str(script)))
    assert message == f"spawning '{script}': permission denied"


def test_pinning_restricts_the_program_to_the_task_cpus(work_dir):
    task = tasks.run("grep Cpus_allowed_list /proc/self/status")
    cpu = sorted(os.sched_getaffinity(0))[-1]
    before = os.sched_getaffinity(0)
    assert run(work_dir, task, pin=True, cpu_ids=(cpu,)).data == \
        f"Cpus_allowed_list:\t{cpu}\n".encode()
    # The program was pinned through the spawning thread's affinity: restored after.
    assert os.sched_getaffinity(0) == before


def test_pinning_to_a_cpu_that_does_not_exist_fails_cleanly(work_dir):
    message = fails(work_dir, tasks.run("true"), pin=True, cpu_ids=(4095,))
    assert message == "pinning 'true' to cpus [4095]: invalid argument"


def test_no_pinning_without_cpus(work_dir):
    task = tasks.run("grep -c Cpus_allowed_list /proc/self/status")
    assert run(work_dir, task, pin=True, cpu_ids=()).data == b"1\n"


# ---------------------------------------------------------------- inputs that are not bytes

def test_file_object_is_symlinked(work_dir, tmp_path):
    original = tmp_path / "original.txt"
    original.write_bytes(b"file content")
    task = tasks.run(("/bin/sh", "-c", "readlink f; cat f"), [(tasks.const("x"), "f")])
    result = run(work_dir, task, [File(str(original))])
    assert result.data == f"{original}\n".encode() + b"file content"


@pytest.mark.parametrize("obj, kind", [
    (Array([Plain(b"a")]), "Array"),
    (PyObj({"a": 1}), "PyObj"),
    (Index(Plain(b"a\nb\n"), [0, 2, 4]), "Index"),
])
@pytest.mark.parametrize("name", ["$X", "file", "+in"])
def test_non_d_object_inputs_fail_cleanly(work_dir, obj, kind, name):
    task = tasks.run("/bin/cat", [(tasks.const("a"), "ok"), (tasks.const("x"), name)])
    message = fails(work_dir, task, [Plain(b"fine"), obj])
    assert message == f"Input 1 mapped to '{name}' is {kind}, not a D-object"


@pytest.mark.parametrize("name", ["../escape", "/tmp/absolute", "a/../../b", ""])
def test_input_names_cannot_leave_the_run_directory(work_dir, name):
    task = tasks.run("/bin/true", [(tasks.const("x"), name)])
    assert "relative path inside the run directory" in fails(work_dir, task, [Plain(b"x")])


def test_output_names_cannot_leave_the_run_directory(work_dir):
    task = tasks.run("/bin/true", outputs=("/etc/hostname",))
    assert fails(work_dir, task).startswith("Output '/etc/hostname' error: ")


def test_inputs_cannot_be_mapped_onto_captured_streams(work_dir):
    task = tasks.run("/bin/true", [(tasks.const("x"), "+out")])
    assert "reserved" in fails(work_dir, task, [Plain(b"x")])


def test_input_in_a_subdirectory(work_dir):
    task = tasks.run("/bin/cat sub/f", [(tasks.const("x"), "sub/f")])
    assert run(work_dir, task, [Plain(b"nested")]).data == b"nested"


def test_mismatched_inputs_fail(work_dir):
    task = tasks.run("/bin/cat file1", [(tasks.const("x"), "file1")])
    assert "maps 1 inputs" in fails(work_dir, task, [])


def test_run_directory_is_named_after_the_task_and_unique(work_dir):
    first = run(work_dir, tasks.run("pwd"), task_id=12).data.decode()
    second = run(work_dir, tasks.run("pwd"), task_id=12).data.decode()
    assert first.startswith(os.path.join(os.path.realpath(work_dir), "run", "12-"))
    assert first != second


def test_a_cancel_kills_the_program_and_what_it_started(work_dir, tmp_path):
    """The program runs in a process group of its own: a cancel kills all of it, the
    task fails at once and its run directory is removed (the fixture checks)."""
    from hyperloom.worker.taskdef import Cancellation
    from tests.conftest import process_gone, wait_until
    pids = tmp_path / "pids"
    task = tasks.run(("sh", "-c", f"sleep 60 & echo $$ $! > {pids}.tmp; "
                                  f"mv {pids}.tmp {pids}; wait"))
    ctx = TaskContext(7, task.task_type, task.config, [], work_dir=work_dir)
    ctx.cancel = Cancellation()
    outcome = {}

    def execute():
        try:
            execute_run(ctx)
        except TaskError as error:
            outcome["error"] = str(error)

    thread = threading.Thread(target=execute)
    thread.start()
    wait_until(pids.exists, timeout=10, message="the program to start")
    shell, sleep = map(int, pids.read_text().split())
    ctx.cancel.cancel()
    thread.join(10)
    assert not thread.is_alive()
    assert outcome["error"].startswith("Program terminated by signal 9 (SIGKILL)")
    wait_until(lambda: process_gone(shell) and process_gone(sleep), timeout=10,
               message="the shell and its background sleep to die")


def test_a_task_canceled_before_its_program_starts_does_not_run_it(work_dir, tmp_path):
    from hyperloom.worker.taskdef import Cancellation
    marker = tmp_path / "ran"
    task = tasks.run(("touch", str(marker)))
    ctx = TaskContext(7, task.task_type, task.config, [], work_dir=work_dir)
    ctx.cancel = Cancellation()
    ctx.cancel.cancel()
    with pytest.raises(TaskError, match="Canceled before the program started"):
        execute_run(ctx)
    assert not marker.exists()


# ---------------------------------------------------------------- reused run directories

@pytest.fixture
def run_dirs(work_dir):
    pool = RunDirs()
    yield pool
    pool.close()  # before the work_dir fixture checks that nothing is left


def run_pooled(work_dir, pool, task, inputs=(), task_id=7):
    from hyperloom.worker.taskdef import Cancellation
    ctx = TaskContext(task_id, task.task_type, task.config, list(inputs), work_dir=work_dir)
    ctx.cancel, ctx.run_dirs = Cancellation(), pool
    return execute_run(ctx)


def test_a_clean_run_directory_is_reused_with_fresh_streams(work_dir, run_dirs):
    task = tasks.run(("/bin/sh", "-c", "pwd; ls; echo err >&2"))
    first = run_pooled(work_dir, run_dirs, task).data.decode().split()
    second = run_pooled(work_dir, run_dirs, tasks.run("pwd")).data.decode()
    assert first[1:] == ["+err", "+out"]
    assert second == first[0] + "\n"  # same directory, and +out holds only this run's output
    spare = run_dirs.take()
    assert spare == first[0]  # kept again, with nothing of the last run left in it
    assert [os.path.getsize(os.path.join(spare, f)) for f in ("+out", "+err")] == [0, 0]
    assert run_dirs.give_back(spare)
    stderr = run_pooled(work_dir, run_dirs, tasks.run(("/bin/sh", "-c", "cat +err")))
    assert stderr.data == b""


def test_a_run_directory_with_other_files_is_not_reused(work_dir, run_dirs):
    first = run_pooled(work_dir, run_dirs, tasks.run(("/bin/sh", "-c", "pwd; touch left"))).data
    second = run_pooled(work_dir, run_dirs, tasks.run(("/bin/sh", "-c", "pwd; ls"))).data
    assert first.split()[0] != second.split()[0]
    assert second.split()[1:] == [b"+err", b"+out"]
    # Mapped inputs are files too: their directory is not reused either.
    task = tasks.run(("/bin/sh", "-c", "pwd"), [(tasks.const("x"), "f")])
    third = run_pooled(work_dir, run_dirs, task, [Plain(b"x")]).data
    fourth = run_pooled(work_dir, run_dirs, tasks.run(("/bin/sh", "-c", "pwd; ls"))).data
    assert fourth.split()[1:] == [b"+err", b"+out"]
    assert fourth.split()[0] != third.split()[0]


def test_a_captured_stream_replaced_by_a_link_is_never_truncated(work_dir, run_dirs, tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    for link in (f"ln -sf {victim} +out", f"rm +out; ln {victim} +out"):
        run_pooled(work_dir, run_dirs, tasks.run(("/bin/sh", "-c", link), outputs=()))
        run_pooled(work_dir, run_dirs, tasks.run(("/bin/sh", "-c", "echo new")))
        assert victim.read_bytes() == b"precious"


def test_a_run_directory_is_not_reused_while_the_program_left_something_running(
        work_dir, run_dirs, tmp_path):
    from tests.conftest import wait_until
    pids = tmp_path / "pid"
    task = tasks.run(("/bin/sh", "-c", f"pwd; (sleep 30 >/dev/null 2>&1 & echo $! > {pids})"))
    first = run_pooled(work_dir, run_dirs, task).data
    second = run_pooled(work_dir, run_dirs, tasks.run("pwd")).data
    os.kill(int(pids.read_text()), 9)
    assert first != second
    wait_until(lambda: not os.path.exists(first.decode().strip()), timeout=10,
               message="the first directory to be removed")


def test_programs_on_path_are_spawned_by_their_full_path(work_dir, run_dirs, tmp_path,
                                                        monkeypatch):
    program = tmp_path / "bin" / "hello-4f1e"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\necho hello from $0\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{program.parent}:{os.environ['PATH']}")
    assert run_dirs.which("hello-4f1e") == str(program)
    # Spawned through the path found once (and $0 is that path, as with a PATH search).
    assert run_pooled(work_dir, run_dirs, tasks.run("hello-4f1e")).data == \
        f"hello from {program}\n".encode()
    program.unlink()  # gone: the spawn reports it as before
    with pytest.raises(TaskError, match="spawning 'hello-4f1e': no such file or directory"):
        run_pooled(work_dir, run_dirs, tasks.run("hello-4f1e"))
    assert run_dirs.which("./relative") is None


def test_a_program_found_on_path_then_removed_is_searched_for_again(
        work_dir, run_dirs, tmp_path, monkeypatch):
    first, second = tmp_path / "first" / "hello-9c2d", tmp_path / "second" / "hello-9c2d"
    for program in (first, second):
        program.parent.mkdir()
        program.write_text(f"#!/bin/sh\necho {program.parent.name}\n")
        program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{first.parent}:{second.parent}:{os.environ['PATH']}")
    assert run_pooled(work_dir, run_dirs, tasks.run("hello-9c2d")).data == b"first\n"
    first.unlink()
    assert run_pooled(work_dir, run_dirs, tasks.run("hello-9c2d")).data == b"second\n"
    assert run_dirs.which("hello-9c2d") == str(second)


def test_an_output_whose_size_the_file_system_does_not_know_is_read_whole(work_dir):
    """/proc files report size 0; an output linked to one is read to its end."""
    task = tasks.run(("/bin/sh", "-c", "ln -s /proc/self/status status"), outputs=("status",))
    assert run(work_dir, task).data.startswith(b"Name:")
    big = tasks.run(("/bin/sh", "-c", "head -c 3000000 /dev/zero > big"), outputs=("big",))
    assert run(work_dir, big).data == bytes(3_000_000)
