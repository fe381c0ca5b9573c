"""The wire contract and the data-object model."""

import os

import msgpack
import pytest

from hyperloom import data, protocol, protocol_doc
from hyperloom.data import Array, File, Index, Plain, PyObj


def test_every_message_round_trips_and_codes_are_unique():
    assert len({m.code for m in protocol.MESSAGES}) == len(protocol.MESSAGES)
    samples = {int: 1, str: "s", bytes: b"b", list: [1], bool: True, dict: {"a": 1}}
    for message in protocol.MESSAGES:
        fields = [samples[types[0]] for _, types in message.fields]
        code, decoded = protocol.decode(protocol.encode(message.code, *fields))
        assert code == message.code and decoded == fields


def test_the_document_agrees_with_the_module_field_by_field():
    # docs/protocol.md's message and entry tables are generated from MESSAGES and the
    # entry records; regenerate with `python -m hyperloom.protocol_doc docs/protocol.md`.
    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "protocol.md")
    with open(path) as f:
        document = f.read()
    assert protocol_doc.render(document) == document, \
        "docs/protocol.md is stale: run python -m hyperloom.protocol_doc docs/protocol.md"
    for message in protocol.MESSAGES:
        assert f"| {message.name} | {message.code} |" in document, message.name
        for name, item in message.items.items():
            assert name in dict(message.fields), (message.name, name)
            if item not in (int, str):
                assert f"### {item.__name__} (in " in document
                for field in item._fields:
                    assert f"| {field} | " in document


def test_every_list_field_names_its_entries():
    for message in protocol.MESSAGES:
        lists = {name for name, types in message.fields if types == (list,)}
        assert lists == set(message.items), message.name


@pytest.mark.parametrize("record, entry", [
    (protocol.ComputeTask, [1, "loom/data/const", b"x", [], 0, None, True, None]),
    (protocol.SubmitTask, [1, 0, b"", [0], 1, False, -1, "/abs"]),
    (protocol.DataEntry, [5, [0]]),
    (protocol.DataEntry, [5, None, "Invalid id: 5"]),
    (protocol.DataEntry, [5, None, [5, "tcp://h:1", "boom"]]),
    (protocol.FinishedTask, (3, 10, 0)),
])
def test_conforming_entries_pass(record, entry):
    protocol.check_entry(record, entry)


@pytest.mark.parametrize("record, entry, problem", [
    (protocol.ComputeTask, [1, "t", b"x", [], 0, None, 1, None], "is_result must be bool"),
    (protocol.ComputeTask, [1, "t", b"x", [], 0, None, True, None, "extra"], "wrong shape"),
    (protocol.ComputeTask, [1, "t", b"x", [], 0, None], "lacks is_result"),
    (protocol.FinishedTask, [3, "10", 0], "size must be int"),
    (protocol.DataSend, "tcp://h:1", "wrong shape"),
    (protocol.FailedTask, [True, "m"], "id must be int"),
])
def test_entries_that_break_their_record_are_named(record, entry, problem):
    with pytest.raises(protocol.ProtocolError, match=problem):
        protocol.check_entry(record, entry)


@pytest.mark.parametrize("header, problem", [
    (b"\xc1", "not valid msgpack"),
    (msgpack.packb("text"), "not a list"),
    (msgpack.packb([12345]), "unknown message code"),
    (msgpack.packb([protocol.RELEASE]), "takes 1 fields, got 0"),
    (msgpack.packb([protocol.RELEASE, "notalist"]), "Release.ids must be list"),
    (msgpack.packb([protocol.FETCH, True, [], False, False]), "Fetch.request must be int"),
])
def test_malformed_headers_name_the_problem(header, problem):
    with pytest.raises(protocol.ProtocolError, match=problem):
        protocol.decode(header)


def roundtrip(obj):
    meta, frames = data.encode(obj)
    meta = msgpack.unpackb(msgpack.packb(meta))
    decoded, position = data.decode(meta, [bytes(f) for f in frames])
    assert position == len(frames)
    return decoded


def test_data_objects_round_trip_with_size_and_length(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"12345")
    base = Plain(b"a\nb")
    objects = [Plain(b"xyz"), Plain(b"L" * 5000), File(str(path)), Index(base, [0, 2, 3]),
               PyObj(("t", 1)), Array([Plain(b"a"), Array([Plain(b"b")]), PyObj({"k": 1})])]
    for obj in objects:
        copy = roundtrip(obj)
        assert type(copy) is type(obj)
        assert copy.size == obj.size and copy.length == obj.length
        assert copy.to_python() == obj.to_python()
    assert Index(base, [0, 2, 3]).size == 27          # as the original
    assert File(str(path)).raw()[:] == b"12345"
    assert Array([Plain(b"ab"), Plain(b"c")]).size == 3


def test_malformed_data_meta_is_a_data_error():
    with pytest.raises(data.DataError):
        data.decode([99], [])
    with pytest.raises(data.DataError):
        data.decode([data.KIND_PLAIN], [])


# ---------------------------------------------------------------- PyObj, pickle protocol 5

def test_a_large_numpy_array_travels_out_of_band_without_a_copy():
    np = pytest.importorskip("numpy")
    array = np.arange(1_000_000, dtype="f8")
    meta, frames = data.encode(data.PyObj(array))
    assert meta == [data.KIND_PYOBJ, array.nbytes, 1]
    assert len(frames) == 2 and len(frames[0]) < 1000  # the pickle holds no array data
    assert np.shares_memory(np.frombuffer(frames[1], dtype="f8"), array)  # sent in place
    # The receiver's frames are read-only buffers (as zmq frames are): used in place.
    received = [frames[0], memoryview(bytes(frames[1]))]
    decoded, position = data.decode(meta, received)
    assert position == 2
    assert np.array_equal(decoded.obj, array)
    assert np.shares_memory(decoded.obj, np.frombuffer(received[1], dtype="f8"))
    assert not decoded.obj.flags.writeable  # data objects are immutable
    # Passed on, it is not pickled again: the same buffer goes out.
    meta2, frames2 = data.encode(decoded)
    assert meta2 == meta and frames2[1] is decoded.buffers()[0]


def test_small_buffers_stay_inside_the_pickle():
    np = pytest.importorskip("numpy")
    value = {"a": np.arange(10), "b": b"x" * 100_000}
    meta, frames = data.encode(data.PyObj(value))
    assert meta[:1] == [data.KIND_PYOBJ] and len(meta) == 2 and len(frames) == 1
    decoded = data.decode(meta, frames)[0].obj
    assert decoded["b"] == value["b"] and list(decoded["a"]) == list(range(10))


def test_a_pyobj_meta_with_missing_buffer_frames_is_refused():
    with pytest.raises(data.DataError, match="2 buffers has only 1"):
        data.decode([data.KIND_PYOBJ, 10, 2], [data.dumps(1)[0], b"x"])


def test_an_index_over_an_array_names_the_problem_instead_of_a_type_error():
    # A wire meta may put an Index over any object; cutting it used to raise
    # "TypeError: memoryview: a bytes-like object is required, not 'NoneType'".
    offsets = Index(Plain(b"ab"), [0, 1, 2]).offsets.tobytes()
    index, _ = data.decode([data.KIND_INDEX, [data.KIND_ARRAY, []]], [offsets])
    assert index.length == 2
    with pytest.raises(data.DataError, match="base is not a D-object"):
        index.get(0)
    with pytest.raises(data.DataError, match="base is not a D-object"):
        index.to_python()
