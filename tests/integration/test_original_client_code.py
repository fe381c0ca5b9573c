"""Code written for the original client, with its module layout, runs on a real cluster."""

import pytest

import loom.client.tasks as tasks
from loom.client.errors import TaskFailed
from loom.client.task import Task
from loom.client.tasks import cpu1


def test_original_style_code_runs_and_catches_failures(client):
    @tasks.py_task(label="Merging task")
    def join(a, b):
        return a.read() + b.read()

    value = tasks.py_value("ABC")
    value.resource_request = cpu1
    custom = Task()                        # a task built by hand from the original's symbols
    custom.task_type = tasks.DATA_CONST
    custom.config = b"123"
    merged = join(tasks.const("x"), custom)
    assert client.gather(client.submit((merged, value))) == [b"x123", "ABC"]
    with pytest.raises(TaskFailed, match="Program terminated with status 3"):
        client.submit_one(tasks.run(("sh", "-c", "exit 3"))).gather()
