"""Checkpoints: write a finished task's result atomically; resume from it with load=True."""

import pytest

from hyperloom.client import TaskFailed, tasks


def counting(path, text):
    """A task that records each run in ``path`` and prints ``text``."""
    return tasks.run(("sh", "-c", f"echo run >> {path}; printf {text}"))


def test_checkpoint_is_written_and_loaded_instead_of_recomputing(client, tmp_path):
    runs = tmp_path / "runs"
    checkpoint = tmp_path / "step1.ckpt"
    step1 = counting(runs, "first")
    step1.checkpoint_path = str(checkpoint)
    step2 = tasks.merge((step1, tasks.const("+second")))
    assert client.submit_one(step2).gather() == b"first+second"
    assert checkpoint.read_bytes() == b"first"
    assert not (tmp_path / "step1.ckpt.loom.tmp").exists()
    # a restarted pipeline resumes from the checkpoint: step1 does not run again
    step1_again = counting(runs, "first")
    step1_again.checkpoint_path = str(checkpoint)
    step2_again = tasks.merge((step1_again, tasks.const("+again")))
    assert client.submit_one(step2_again, load=True).gather() == b"first+again"
    assert runs.read_text().count("run") == 1
    # fetching a loaded checkpoint directly works too (the original crashed here)
    assert client.submit_one(step1_again, load=True).gather() == b"first"
    assert client.get_stats()["n_tasks"] == 0


def test_without_load_the_task_is_computed_again(client, tmp_path):
    runs = tmp_path / "runs"
    task = counting(runs, "x")
    task.checkpoint_path = str(tmp_path / "c")
    assert client.submit_one(task).gather() == b"x"
    again = counting(runs, "x")
    again.checkpoint_path = str(tmp_path / "c")
    assert client.submit_one(again).gather() == b"x"
    assert runs.read_text().count("run") == 2


def test_checkpointing_an_array_fails_the_task_cleanly(client, tmp_path):
    array = tasks.array_make((tasks.const("a"),))
    array.checkpoint_path = str(tmp_path / "array")
    with pytest.raises(TaskFailed, match="Data 'Array' cannot be checkpointed"):
        client.submit_one(array).gather()


def test_unwritable_checkpoint_fails_with_the_original_message(client, tmp_path):
    task = tasks.const("x")
    task.checkpoint_path = str(tmp_path / "missing-dir" / "c")
    with pytest.raises(TaskFailed, match="Writing checkpoint '.*' failed. Cannot create"):
        client.submit_one(task).gather()


@pytest.mark.timeout(30)  # the old code never reported the task: gather() hung
def test_a_checkpoint_that_cannot_replace_its_path_fails_the_task_and_frees_its_core(
        make_cluster, tmp_path):
    cluster = make_cluster(workers=1, cpus=1)
    client = cluster.client()
    checkpoints = tmp_path / "checkpoints"
    occupied = checkpoints / "a-directory"
    occupied.mkdir(parents=True)
    task = tasks.run("printf x")            # takes the worker's only core
    task.checkpoint_path = str(occupied)    # the temporary file is written, the rename fails
    with pytest.raises(TaskFailed) as failure:
        client.submit_one(task).gather()
    message = str(failure.value)
    assert f"Writing checkpoint '{occupied}' failed" in message
    assert "Is a directory" in message
    assert occupied.is_dir() and list(checkpoints.iterdir()) == [occupied]  # no temporary left
    # the core was given back: the next core task runs on the same worker
    assert client.submit_one(tasks.run("printf y")).gather() == b"y"
