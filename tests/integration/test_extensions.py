"""Own task types: a worker extended with ``my/count`` (the guide's example)."""

import os
import struct
import sys

import pytest

from hyperloom.client import LoomError, tasks
from hyperloom.worker.taskdef import TaskRegistry

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
sys.path.insert(0, EXAMPLES)
from my_count import histogram, most_common, my_count  # noqa: E402


@pytest.fixture
def extended_cluster(make_cluster, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.path.abspath(EXAMPLES) + os.pathsep
                       + os.environ.get("PYTHONPATH", ""))
    cluster = make_cluster(workers=1, cpus=1)
    cluster.add_worker(extra_args=("--extension", "my_count"))
    cluster.wait_for_workers(2)
    return cluster


def test_guide_my_count_runs_only_on_the_extended_worker(extended_cluster, tmp_path):
    path = tmp_path / "file"
    path.write_text("banana")
    client = extended_cluster.client()
    t1 = tasks.open(str(path))
    t2 = my_count(t1, "a")
    assert client.submit_one(t2).gather() == struct.pack("<Q", 3)
    futures = client.submit([my_count(tasks.const("aXa" * i), "a") for i in range(20)])
    # a my/count placed on the plain worker would fail there ("not provided by this worker")
    assert client.gather(futures) == [struct.pack("<Q", 2 * i) for i in range(20)]


def test_own_data_type_travels_between_workers_and_to_the_client(make_cluster, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.path.abspath(EXAMPLES) + os.pathsep
                       + os.environ.get("PYTHONPATH", ""))
    cluster = make_cluster(workers=2, cpus=1, worker_args=("--extension", "my_count"))
    client = cluster.client()
    texts = ["aab", "zzzy", "abcc", "qq"]
    hists = [histogram(tasks.const(text)) for text in texts]
    assert client.submit_one(hists[0]).gather() == {b"a": 2, b"b": 1}
    # each most_common runs where some histogram is; the array gathers them across workers
    commons = [most_common(h) for h in hists]
    assert client.submit_one(tasks.array_make(commons)).gather() == [b"a", b"z", b"c", b"q"]
    everything = tasks.array_make(hists)
    assert client.submit_one(everything).gather()[3] == {b"q": 2}


def test_registering_a_data_type_twice_or_unnamespaced_is_an_error():
    from my_count import Histogram
    registry = TaskRegistry()
    registry.register_data_type(Histogram)
    with pytest.raises(ValueError, match="already registered"):
        registry.register_data_type(Histogram)


def test_unprovided_type_is_refused_at_submit(make_cluster):
    client = make_cluster(workers=1, cpus=1).client()
    future = client.submit_one(my_count(tasks.const("abc"), "a"))
    with pytest.raises(LoomError, match="unknown task type 'my/count'"):
        future.wait()


def test_registering_a_symbol_twice_is_an_error():
    registry = TaskRegistry()
    registry.register("my/count", lambda ctx: None)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("my/count", lambda ctx: None)
    with pytest.raises(ValueError, match="namespaced"):
        registry.register("count", lambda ctx: None)
