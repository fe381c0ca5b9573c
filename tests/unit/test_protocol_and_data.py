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
    (msgpack.packb([protocol.FETCH, True, [], False]), "Fetch.request must be int"),
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
