"""The wire contract and the data-object model."""

import os

import msgpack
import pytest

from hyperloom import data, protocol
from hyperloom.data import Array, File, Index, Plain, PyObj


def test_every_message_round_trips_and_codes_are_unique():
    assert len({m.code for m in protocol.MESSAGES}) == len(protocol.MESSAGES)
    samples = {int: 1, str: "s", bytes: b"b", list: [1], bool: True, dict: {"a": 1}}
    for message in protocol.MESSAGES:
        fields = [samples[types[0]] for _, types in message.fields]
        code, decoded = protocol.decode(protocol.encode(message.code, *fields))
        assert code == message.code and decoded == fields


def test_documented_table_matches_the_module():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "protocol.md")
    with open(path) as f:
        document = f.read()
    for message in protocol.MESSAGES:
        assert f"| {message.name} | {message.code} |" in document, message.name


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
    objects = [Plain(b"xyz"), Plain(b"L" * 5000), File(str(path)), Index(base, [0, 2, 3]), PyObj(("t", 1)),
               Array([Plain(b"a"), Array([Plain(b"b")]), PyObj({"k": 1})])]
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
