"""Built-in tasks with the original's names, configs and results (reference §1)."""

import struct

import pytest

from hyperloom.client import TaskFailed, tasks


def run(client, task):
    return client.submit_one(task).gather()


def u64(value):
    return struct.pack("<Q", value)


def test_const(client):
    assert run(client, tasks.const("")) == b""
    assert run(client, tasks.const(b"\x00\xff")) == b"\x00\xff"


def test_merge(client):
    a, b, c = tasks.const("a"), tasks.const("b"), tasks.const("c")
    assert run(client, tasks.merge((a, b, c), "-")) == b"a-b-c"
    assert run(client, tasks.merge(())) == b""
    assert run(client, tasks.merge((), "x")) == b""
    assert run(client, tasks.merge((a,), "x")) == b"a"


def test_merge_of_a_non_d_object_fails_cleanly(client):
    array = tasks.array_make((tasks.const("a"),))
    with pytest.raises(TaskFailed, match="not a D-object"):
        run(client, tasks.merge((array, tasks.const("b"))))
    assert run(client, tasks.const("still serving")) == b"still serving"


def test_split_get_and_slice_on_index(client):
    index = tasks.split(tasks.const("a\n\nb\n\n"))
    assert run(client, tasks.length(index)) == u64(4)
    assert run(client, tasks.get(index, 2)) == b"b\n"
    assert run(client, tasks.slice(index, 1, 3)) == b"\nb\n"
    assert run(client, tasks.slice(index, 3, 1)) == b""
    assert run(client, index) == [b"a\n", b"\n", b"b\n", b"\n"]
    assert run(client, tasks.length(tasks.split(tasks.const("a\nb")))) == u64(2)
    assert run(client, tasks.length(tasks.split(tasks.const("a,b,c"), ","))) == u64(1)


def test_split_of_empty_data_is_one_empty_item(client):
    assert run(client, tasks.split(tasks.const(""))) == [b""]


def test_index_size_as_original(client):
    assert run(client, tasks.size(tasks.split(tasks.const("a\nb")))) == u64(27)


def test_array_make_get_slice(client):
    items = [tasks.const("data%d" % i) for i in range(20)]
    array = tasks.array_make(items)
    assert run(client, tasks.length(array)) == u64(20)
    assert run(client, tasks.size(array)) == u64(sum(len("data%d" % i) for i in range(20)))
    assert run(client, tasks.get(array, 3)) == b"data3"
    assert run(client, tasks.slice(array, 2, 4)) == [b"data2", b"data3"]
    assert run(client, tasks.slice(array, 1, 0)) == []
    assert run(client, tasks.slice(array, 50, 100)) == []
    nested = tasks.array_make((tasks.array_make((tasks.const("ABC"), tasks.const("123"))),
                               tasks.const("+++")))
    assert run(client, nested) == [[b"ABC", b"123"], b"+++"]
    assert run(client, tasks.array_make(())) == []


def test_get_out_of_range_message(client):
    array = tasks.array_make((tasks.const("x"),))
    with pytest.raises(TaskFailed) as error:
        run(client, tasks.get(array, 1))
    assert error.value.error_msg == "loom/data/get on Array: index 1 is out of range (length=1)"
    with pytest.raises(TaskFailed, match="index 0 is out of range"):
        run(client, tasks.get(tasks.const("x"), 0))


def test_slice_of_plain_fails_cleanly(client):
    with pytest.raises(TaskFailed, match="only an Array or an Index"):
        run(client, tasks.slice(tasks.const("abc"), 0, 1))


def test_open_save_and_file_objects(client, tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes(b"line1\nline2\n")
    opened = tasks.open(str(source))
    assert run(client, tasks.size(opened)) == u64(12)
    assert run(client, tasks.length(opened)) == u64(0)
    assert run(client, opened) == b"line1\nline2\n"
    assert run(client, tasks.get(tasks.split(opened), 1)) == b"line2\n"
    target = tmp_path / "out.txt"
    assert run(client, tasks.save(tasks.const("saved"), str(target))) == b""
    assert target.read_bytes() == b"saved"


def test_open_missing_file_fails_cleanly(client, tmp_path):
    with pytest.raises(TaskFailed, match="No such file or directory"):
        run(client, tasks.open(str(tmp_path / "missing")))


def test_save_errors_have_the_original_messages(client):
    with pytest.raises(TaskFailed) as error:
        run(client, tasks.save(tasks.const("x"), "relative/path"))
    assert error.value.error_msg == "Path 'relative/path' is not absolute path"
    with pytest.raises(TaskFailed) as error:
        run(client, tasks.save(tasks.const("x"), "/"))
    assert error.value.error_msg == "Openning '/' failed: Is a directory"


def test_size_and_length_of_plain(client):
    assert run(client, tasks.size(tasks.const("12345"))) == u64(5)
    assert run(client, tasks.length(tasks.const("12345"))) == u64(0)
