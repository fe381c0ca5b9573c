"""``loom.client`` has the original's module layout; every name is hyperloom's own object.

The original's client test suite starts with ``import loom.client.tasks as tasks``
and ``from loom.client.tasks import cpu1``; its code catches
``loom.client.errors.TaskFailed``. Each import form must work and give the very
objects hyperloom uses (an ``except`` clause must catch what hyperloom raises).
"""

import subprocess
import sys

import pytest

import hyperloom.client
import hyperloom.client.client
import hyperloom.client.future
import hyperloom.client.plan
import hyperloom.client.task
import hyperloom.client.tasks
import hyperloom.errors

# module -> names the original's module had (reference §3 and the original's sources)
ORIGINAL_NAMES = {
    "loom.client": ["Client", "Future", "Task", "tasks", "LoomException", "TaskFailed"],
    "loom.client.tasks": [
        "cpus", "cpu1", "const", "merge", "open", "split", "save", "run", "array_make",
        "size", "length", "get", "slice", "dslice", "dget", "py_call", "py_value",
        "py_task", "Task", "ResourceRequest", "BASE_GET", "BASE_SLICE", "BASE_SIZE",
        "BASE_LENGTH", "DATA_CONST", "DATA_MERGE", "DATA_OPEN", "DATA_SPLIT", "DATA_SAVE",
        "ARRAY_MAKE", "RUN", "SCHEDULER_DSLICE", "SCHEDULER_DGET", "PY_CALL", "PY_VALUE"],
    "loom.client.task": ["Task", "ResourceRequest"],
    "loom.client.client": ["Client", "LoomException", "LoomError", "TaskFailed"],
    "loom.client.errors": ["LoomException", "LoomError", "TaskFailed"],
    "loom.client.future": ["Future"],
}

# where hyperloom defines each of them
HOMES = (hyperloom.client.tasks, hyperloom.client.task, hyperloom.client.client,
         hyperloom.client.future, hyperloom.errors, hyperloom.client)


def hyperloom_object(name):
    for home in HOMES:
        if hasattr(home, name):
            return getattr(home, name)
    raise AssertionError(f"hyperloom has no {name}")


@pytest.mark.parametrize("module", sorted(ORIGINAL_NAMES))
def test_each_original_module_gives_hyperloom_objects(module):
    namespace = {}
    exec(f"from {module} import {', '.join(ORIGINAL_NAMES[module])}", namespace)
    for name in ORIGINAL_NAMES[module]:
        assert namespace[name] is hyperloom_object(name) or (
            name == "tasks" and namespace[name].const is hyperloom.client.tasks.const), name


def test_the_original_suites_import_lines_run_in_a_fresh_interpreter():
    # The first lines of the original's test_py.py / test_fail.py / loomenv.py, verbatim,
    # in a new process: import order matters to packages, so nothing is imported before.
    script = "\n".join([
        "import loom.client.tasks as tasks",
        "from loom.client.tasks import cpu1",
        "from loom.client import TaskFailed",
        "from loom.client.errors import TaskFailed as TaskFailed2",
        "import loom.client as client",
        "from loom.client import Task",
        "import hyperloom.client, hyperloom.errors",
        "assert tasks.const is hyperloom.client.tasks.const",
        "assert client.tasks is tasks and client.errors.TaskFailed is TaskFailed",
        "assert TaskFailed is TaskFailed2 is hyperloom.errors.TaskFailed",
        "assert Task is hyperloom.client.Task and cpu1 is hyperloom.client.tasks.cpu1",
        "print('ok')",
    ])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_task_type_symbols_are_the_originals():
    import loom.client.tasks as tasks
    assert tasks.cpu1.resources == {"loom/resource/cpus": 1}
    assert tasks.cpus(4) == tasks.cpus(4) and tasks.cpus(4).resources == {
        "loom/resource/cpus": 4}
    pairs = [(tasks.BASE_GET, "loom/base/get"), (tasks.BASE_SLICE, "loom/base/slice"),
             (tasks.BASE_SIZE, "loom/base/size"), (tasks.BASE_LENGTH, "loom/base/length"),
             (tasks.DATA_CONST, "loom/data/const"), (tasks.DATA_MERGE, "loom/data/merge"),
             (tasks.DATA_OPEN, "loom/data/open"), (tasks.DATA_SPLIT, "loom/data/split"),
             (tasks.DATA_SAVE, "loom/data/save"), (tasks.ARRAY_MAKE, "loom/array/make"),
             (tasks.RUN, "loom/run/run"), (tasks.SCHEDULER_DSLICE, "loom/scheduler/dslice"),
             (tasks.SCHEDULER_DGET, "loom/scheduler/dget"), (tasks.PY_CALL, "loom/py/call"),
             (tasks.PY_VALUE, "loom/py/value")]
    for value, original in pairs:
        assert value == original
    # and they are what the task functions build
    assert tasks.run("ls").task_type == tasks.RUN
    assert tasks.const("x").task_type == tasks.DATA_CONST


def test_plan_module_is_hyperlooms():
    import loom.client.plan
    assert loom.client.plan.PlanBuilder is hyperloom.client.plan.PlanBuilder


def test_star_import_gives_every_name_of_hyperloom_client():
    # loom.client names hyperloom.client's exports one by one: one added there and not here
    # would make the star import fail.
    namespace: dict = {}
    exec("from loom.client import *", namespace)
    for name in hyperloom.client.__all__:
        assert namespace[name] is hyperloom_object(name) or (
            name == "tasks" and namespace[name].const is hyperloom.client.tasks.const), name
