"""The guide's "Running external programs" and "Python functions" sections, end to end."""

import os
import time

import pytest

from loom.client import Task, TaskFailed, tasks


def gather(client, task):
    return client.submit_one(task).gather()


# ---------------------------------------------------------------- run

def test_grep_with_stdin(client):
    task1 = tasks.const("Loom line\nother\nLoom again\n")
    task_run = tasks.run("/bin/grep Loom", stdin=task1)
    assert gather(client, task_run) == b"Loom line\nLoom again\n"


def test_explicit_arguments_with_spaces(client):
    task = tasks.run(("/bin/echo", "--arg1", "argument with spaces"))
    assert gather(client, task) == b"--arg1 argument with spaces\n"


def test_mapping_input_files(client):
    task_a, task_b = tasks.const("A"), tasks.const("B")
    task_run = tasks.run("/bin/cat file1 file2", [(task_a, "file1"), (task_b, "file2")])
    assert gather(client, task_run) == b"AB"


def test_same_file_names_in_simultaneous_runs_do_not_collide(make_cluster):
    client = make_cluster(workers=1, cpus=3).client()
    runs = [tasks.run(("sh", "-c", "sleep 0.2; cat file1"), [(tasks.const(c), "file1")])
            for c in "abc"]
    assert client.gather(client.submit(runs)) == [b"a", b"b", b"c"]


def test_workers_of_a_local_cluster_pin_their_programs_to_cores_of_their_own(make_cluster):
    """Pinning is on by default; two one-core workers on one machine must not both
    pin to its first core."""
    client = make_cluster(workers=2, cpus=1).client()
    # Eight tasks: one worker may hold at most 3 per core, so both run some.
    script = "sleep 0.1; grep Cpus_allowed_list /proc/self/status #{}"
    where = [tasks.run(("sh", "-c", script.format(i))) for i in range(8)]
    lists = {line.split()[-1].decode() for line in client.gather(client.submit(where))}
    cores = sorted(os.sched_getaffinity(0))
    assert lists == {str(core) for core in (cores * 2)[:2]}


def test_output_files_and_stdout(client):
    script = "printf one > output1.txt; printf two; printf three > output2.txt"
    task = tasks.run(("sh", "-c", script), outputs=("output1.txt", None, "output2.txt"))
    assert gather(client, task) == [b"one", b"two", b"three"]
    single = tasks.run(("sh", "-c", "printf x > out.txt; echo ignored"), outputs=("out.txt",))
    assert gather(client, single) == b"x"


def test_variables(client):
    path = tasks.const("/")
    task = tasks.run("/bin/ls $PATH", [(path, "$PATH")])
    assert b"tmp" in gather(client, task).split()
    task = tasks.run("/bin/echo $xyz xyz $ab $c",
                     [(tasks.const("123"), "$xyz"), (tasks.const("456"), "$c")])
    assert gather(client, task) == b"123 xyz $ab 456\n"


def test_error_handling_example_from_the_guide(shared_cluster):
    from loom.client import Client
    client = Client(shared_cluster.host, shared_cluster.port)
    task = tasks.run("ls /non-existent-path")
    with pytest.raises(TaskFailed) as error:
        result = client.submit_one(task)
        result.wait()
    assert str(error.value) == (
        f"Task id={result.task_id} failed: Program terminated with status 2\nStderr:\n"
        "ls: cannot access '/non-existent-path': No such file or directory\n")
    client.close()


def test_killed_program_fails(client):
    with pytest.raises(TaskFailed, match="signal 9"):
        gather(client, tasks.run(("sh", "-c", "kill -9 $$")))


def test_missing_program_and_missing_output(client):
    with pytest.raises(TaskFailed, match="spawning '/usr/bin/non-existing-program'"):
        gather(client, tasks.run("/usr/bin/non-existing-program"))
    with pytest.raises(TaskFailed, match="Output 'xxx' error: No such file or directory"):
        gather(client, tasks.run("true", outputs=("xxx",)))


def test_non_d_object_mapped_to_a_file_fails_the_task_not_the_worker(client):
    array = tasks.array_make((tasks.const("a"),))
    with pytest.raises(TaskFailed, match="not a D-object"):
        gather(client, tasks.run("/bin/cat f", [(array, "f")]))
    assert gather(client, tasks.const("worker alive")) == b"worker alive"


# ---------------------------------------------------------------- python

@tasks.py_task()
def hello(a):
    return b"Hello " + a.read()


def test_py_task_decorator(client):
    task1 = tasks.const("world")
    task2 = hello(task1)
    assert gather(client, task2) == b"Hello world"
    assert task2.label == "hello"


def test_a_stopped_cluster_logs_no_executor_failure(tmp_path):
    # Stopping signals each process group: the executors and their forkserver end with
    # the worker, which used to log "cannot replace a Python executor" as a WARNING.
    import hyperloom
    with hyperloom.LocalCluster(workers=2, cpus=1, log_dir=str(tmp_path)) as cluster:
        client = cluster.client()
        names = [tasks.const(b"w%d" % i) for i in range(4)]
        assert client.gather(client.submit([hello(n) for n in names])) == \
            [b"Hello w%d" % i for i in range(4)]
    logs = {path.name: path.read_text() for path in tmp_path.glob("worker*")}
    assert len(logs) == 2 and not any("WARNING" in text for text in logs.values()), logs


def test_py_call_with_py_value(client):
    def hello_fn(a):
        return b"Hello " + a.read()
    task1 = tasks.const("world")
    task2 = tasks.py_call(tasks.py_value(hello_fn), (task1,))
    task2.label = "hello"
    assert gather(client, task2) == b"Hello world"


@tasks.py_task()
def my_run(a, b):
    data = a if a.size() > b.size() else b
    return tasks.run("/bin/cat", stdin=data)


def test_task_redirection_to_run(client):
    assert gather(client, my_run(tasks.const("short"), tasks.const("longer one"))) == b"longer one"


@tasks.py_task(context=True)
def hello_ctx(ctx, a):
    ctx.log_info("Hello was called")
    return b"Hello " + a.read() + b" from task %d" % ctx.task_id


def test_context_logs_and_task_id(shared_cluster, client):
    future = client.submit_one(hello_ctx(tasks.const("world")))
    assert future.gather() == b"Hello world from task %d" % future.task_id
    logs = "".join(open(f"{shared_cluster.log_dir}/worker-{i}.log").read() for i in range(2))
    assert f"PyTask id={future.task_id}: Hello was called" in logs


@tasks.py_task(n_direct_args=1)
def repeat(n, a):
    return n * a.read()


def test_direct_arguments(client):
    c = tasks.const("ABC")
    assert gather(client, repeat(2, c)) == b"ABCABC"
    assert gather(client, repeat(3, c)) == b"ABCABCABC"
    t1 = tasks.py_call(tasks.py_value(lambda n, a: n * a.read()), (c,), direct_args=(2,))
    assert gather(client, t1) == b"ABCABC"


@tasks.py_task(context=True, n_direct_args=1)
def ordered(ctx, n, a):
    return ctx.wrap((n, a.read()))


def test_context_then_direct_args_then_inputs(client):
    assert gather(client, ordered(7, tasks.const("x"))) == (7, b"x")


@tasks.py_task()
def value_of_a(a):
    d = a.unwrap()
    return "Value of 'A' is " + d["A"]


@tasks.py_task(context=True)
def mixed(ctx):
    return [ctx.wrap({"A", (1, 2, 3)}), "Hello"]


def test_python_objects(client):
    my_dict = tasks.py_value({"A": "B"})
    assert gather(client, value_of_a(my_dict)) == b"Value of 'A' is B"
    assert gather(client, mixed()) == [{"A", (1, 2, 3)}, b"Hello"]


@tasks.py_task()
def divide(a):
    return 1 / 0


@tasks.py_task()
def invalid(a):
    return 42


def test_python_failures(client):
    with pytest.raises(TaskFailed) as error:
        gather(client, divide(tasks.const("x")))
    assert error.value.error_msg.startswith("Python exception:\nTraceback")
    assert "ZeroDivisionError" in error.value.error_msg
    with pytest.raises(TaskFailed, match="Invalid result from python code"):
        gather(client, invalid(tasks.const("x")))


def test_own_task_via_generic_task(client):
    task = Task()
    task.task_type = "loom/data/const"
    task.config = "generic"
    assert gather(client, task) == b"generic"


def test_resource_defaults():
    assert tasks.run("true").resource_request == tasks.cpus(1)
    assert tasks.py_value(1).resource_request == tasks.cpus(1)
    assert hello(tasks.const("x")).resource_request == tasks.cpus(1)
    assert tasks.merge(()).resource_request is None


@tasks.py_task(context=True)
def spin(ctx, a):
    import os
    begin = time.time()
    end = time.process_time() + 0.4
    while time.process_time() < end:
        pass
    return ctx.wrap((os.getpid(), begin, time.time()))


def test_python_tasks_run_in_parallel_processes_on_a_multi_core_worker(make_cluster):
    # Not a timing assertion (shared, noisy machines; benchmarks/py_parallel.py measures
    # the speed-up): the tasks ran in different interpreters, at overlapping times.
    client = make_cluster(workers=1, cpus=2).client()
    runs = client.gather(client.submit([spin(tasks.const(str(i))) for i in range(4)]))
    assert len({pid for pid, _, _ in runs}) >= 2
    runs.sort(key=lambda run: run[1])
    overlapping = any(b[1] < a[2] and a[0] != b[0] for a, b in zip(runs, runs[1:]))
    assert overlapping, f"no two Python tasks ran at the same time: {runs}"


@tasks.py_task()
def where_and_how_big(a):
    import os
    return f"{os.getpid()} {a.size()}"


def test_where_python_tasks_run_on_a_one_core_worker(make_cluster):
    """Executor processes for Python tasks (a cancel can stop them), except a task
    whose inputs would have to be copied there in bulk (>= 16 MiB): it runs in the
    worker on its inputs in place (measured faster: benchmarks/README.md)."""
    cluster = make_cluster(workers=1, cpus=1)
    client = cluster.client()
    worker = cluster.workers[0].pid
    big = b"x" * (17 * 1024 * 1024)
    small_result, big_result = client.gather(client.submit(
        [where_and_how_big(tasks.const(b"small")), where_and_how_big(tasks.const(big))]))
    small_pid, small_size = map(int, small_result.split())
    big_pid, big_size = map(int, big_result.split())
    assert (small_size, big_size) == (5, len(big))
    assert small_pid != worker
    assert big_pid == worker
