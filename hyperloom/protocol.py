"""The wire contract: protocol version, every message, encode and decode.

This is the only module that knows how messages look as bytes; docs/protocol.md
is the same table in prose and must stay identical to MESSAGES below.

A message is one msgpack header frame ``[code, field, field, ...]`` followed
by zero or more raw payload frames (data objects, see hyperloom.data). On the
broker's ROUTER socket the peer's routing id precedes the header. Control
messages are never pickled. Every message that concerns tasks carries a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

PROTOCOL_VERSION = 1
DEFAULT_PORT = 9010

# Task type symbols of the built-in tasks (the original's names).
TASK_CONST = "loom/data/const"
TASK_MERGE = "loom/data/merge"
TASK_OPEN = "loom/data/open"
TASK_SPLIT = "loom/data/split"
TASK_SAVE = "loom/data/save"
TASK_ARRAY_MAKE = "loom/array/make"
TASK_SIZE = "loom/base/size"
TASK_LENGTH = "loom/base/length"
TASK_GET = "loom/base/get"
TASK_SLICE = "loom/base/slice"
TASK_RUN = "loom/run/run"
TASK_PY_CALL = "loom/py/call"
TASK_PY_VALUE = "loom/py/value"
TASK_DSLICE = "loom/scheduler/dslice"
TASK_DGET = "loom/scheduler/dget"
RESOURCE_CPUS = "loom/resource/cpus"

# Task ids are global: a client numbered C owns ids in [C << CLIENT_SHIFT,
# (C + 1) << CLIENT_SHIFT). Clients number their tasks from 0 in their range;
# the broker creates tasks for a client (dslice expansion) from the top half.
CLIENT_SHIFT = 40
LOCAL_MASK = (1 << CLIENT_SHIFT) - 1
BROKER_ID_BASE = 1 << (CLIENT_SHIFT - 1)

# Limits the broker enforces on what it is sent.
MAX_HEADER_BYTES = 256 * 1024 * 1024
# Results of result tasks up to this size travel with TasksDone to the broker.
INLINE_RESULT_BYTES = 64 * 1024


class ProtocolError(Exception):
    """A message that does not follow this contract."""


@dataclass(frozen=True)
class Message:
    name: str
    code: int
    direction: str       # "client->broker", "broker->worker", ...
    fields: tuple        # ((name, type or tuple of types), ...)
    frames: str          # what payload frames follow the header
    answer: str          # what the receiver sends back, if anything


_B = (bytes,)
_S = (str,)
_I = (int,)
_L = (list,)
_N = (type(None),)

MESSAGES = (
    # --- handshake
    Message("HelloClient", 1, "client->broker", (("version", _I),), "none",
            "Welcome, or Error(fatal) on a version mismatch"),
    Message("HelloWorker", 2, "worker->broker",
            (("version", _I), ("cpus", _I), ("data_address", _S), ("task_types", _L),
             ("hostname", _S)), "none",
            "Welcome, or Error(fatal) on a version mismatch"),
    Message("Welcome", 3, "broker->client|worker",
            (("version", _I), ("peer_number", _I), ("task_types", _L)), "none",
            "nothing; peer_number is the client number or the worker id"),
    Message("Error", 4, "broker->any",
            (("message", _S), ("fatal", (bool,))), "none",
            "nothing; fatal errors end the connection"),
    Message("Heartbeat", 5, "any->broker|broker->any", (), "none", "nothing"),
    Message("Goodbye", 6, "client|worker->broker", (), "none",
            "nothing; the peer is leaving (release everything it owns)"),
    # --- client -> broker
    Message("Submit", 10, "client->broker",
            (("symbols", _L), ("labels", _L), ("tasks", _L), ("load", (bool,)),
             ("more", (bool,))), "none",
            "TasksFinished / TasksFailed later; SubmitRefused if the plan is invalid. A big "
            "plan comes in chunks (more=True on all but the last); symbols and labels extend "
            "the tables of earlier chunks; the plan is accepted or refused whole"),
    Message("Fetch", 11, "client->broker",
            (("request", _I), ("ids", _L), ("release", (bool,))), "none",
            "Data with the same request number, once each task is done (one or more "
            "Data messages that together cover the ids); release=True also releases them"),
    Message("Release", 12, "client->broker", (("ids", _L),), "none", "nothing"),
    Message("GetStats", 13, "client->broker", (("request", _I),), "none", "Stats"),
    Message("SetTrace", 14, "client->broker", (("path", _S),), "none",
            "nothing; Error if the path is not absolute or cannot be written"),
    Message("Terminate", 15, "client->broker", (), "none",
            "nothing; broker tells workers Shutdown and exits"),
    # --- broker -> client
    Message("TasksFinished", 20, "broker->client",
            (("ids", _L), ("done", _I), ("total", _I)), "none",
            "nothing; ids are finished results (maybe none), done/total count every task "
            "this client submitted (for progress bars)"),
    Message("TasksFailed", 21, "broker->client", (("failures", _L),), "none",
            "nothing; failures are [id, failed_id, worker, message]"),
    Message("SubmitRefused", 22, "broker->client",
            (("ids", _L), ("message", _S)), "none",
            "nothing; ids are the result tasks of the refused submit"),
    Message("Data", 23, "broker->client",
            (("request", _I), ("objects", _L)), "the objects' frames in order",
            "nothing; objects are [id, meta] or [id, None, error message]"),
    Message("Stats", 24, "broker->client", (("request", _I), ("stats", (dict,))), "none",
            "nothing"),
    # --- broker -> worker
    Message("ComputeTasks", 30, "broker->worker", (("tasks", _L),), "none",
            "TasksDone later; tasks are [id, type, config, input ids, n_cpus, label, "
            "is_result]"),
    Message("SendData", 31, "broker->worker", (("sends", _L),), "none",
            "PushData to each target; sends are [target data address, [ids]]"),
    Message("Upload", 32, "broker->worker",
            (("client", _B), ("request", _I), ("ids", _L)), "none", "Uploaded"),
    Message("RemoveData", 33, "broker->worker", (("ids", _L),), "none", "nothing"),
    Message("CancelTasks", 34, "broker->worker", (("ids", _L),), "none", "nothing"),
    Message("StartTrace", 35, "broker->worker", (("path", _S), ("worker_id", _I)), "none",
            "nothing"),
    Message("Shutdown", 36, "broker->worker", (), "none", "nothing; the worker exits"),
    Message("StealTasks", 37, "broker->worker", (("ids", _L),), "none",
            "TasksDone.stolen lists those the worker had not started and dropped; "
            "it runs the others as usual"),
    # --- worker -> broker
    Message("TasksDone", 40, "worker->broker",
            (("finished", _L), ("failed", _L), ("results", _L), ("stolen", _L)),
            "the inline results' frames in order",
            "nothing; finished are [id, size, length], failed are [id, message], results "
            "are [id, meta, n_frames]: small results of result tasks, sent along so a "
            "fetch needs no further round trip; stolen are ids given back after StealTasks"),
    Message("Retiring", 47, "worker->broker", (), "none",
            "StealTasks for its queued tasks, SendData copying what only it holds to other "
            "workers, then Shutdown; the broker places nothing more on it meanwhile"),
    Message("Uploaded", 41, "worker->broker",
            (("client", _B), ("request", _I), ("objects", _L)),
            "the objects' frames in order",
            "forwarded to the client as Data"),
    # --- worker -> worker (PUSH -> PULL, never through the broker)
    Message("PushData", 50, "worker->worker", (("source", _S), ("objects", _L)),
            "the objects' frames in order", "nothing; objects are [id, meta]"),
)

BY_NAME = {message.name: message for message in MESSAGES}
BY_CODE = {message.code: message for message in MESSAGES}

# Message codes as module constants, so handlers read ``protocol.SUBMIT``.
HELLO_CLIENT = BY_NAME["HelloClient"].code
HELLO_WORKER = BY_NAME["HelloWorker"].code
WELCOME = BY_NAME["Welcome"].code
ERROR = BY_NAME["Error"].code
HEARTBEAT = BY_NAME["Heartbeat"].code
GOODBYE = BY_NAME["Goodbye"].code
SUBMIT = BY_NAME["Submit"].code
FETCH = BY_NAME["Fetch"].code
RELEASE = BY_NAME["Release"].code
GET_STATS = BY_NAME["GetStats"].code
SET_TRACE = BY_NAME["SetTrace"].code
TERMINATE = BY_NAME["Terminate"].code
TASKS_FINISHED = BY_NAME["TasksFinished"].code
TASKS_FAILED = BY_NAME["TasksFailed"].code
SUBMIT_REFUSED = BY_NAME["SubmitRefused"].code
DATA = BY_NAME["Data"].code
STATS = BY_NAME["Stats"].code
COMPUTE_TASKS = BY_NAME["ComputeTasks"].code
SEND_DATA = BY_NAME["SendData"].code
UPLOAD = BY_NAME["Upload"].code
REMOVE_DATA = BY_NAME["RemoveData"].code
CANCEL_TASKS = BY_NAME["CancelTasks"].code
START_TRACE = BY_NAME["StartTrace"].code
SHUTDOWN = BY_NAME["Shutdown"].code
STEAL_TASKS = BY_NAME["StealTasks"].code
TASKS_DONE = BY_NAME["TasksDone"].code
UPLOADED = BY_NAME["Uploaded"].code
PUSH_DATA = BY_NAME["PushData"].code
RETIRING = BY_NAME["Retiring"].code

_packer = msgpack.Packer(use_bin_type=True)


def encode(code: int, *fields) -> bytes:
    """The header frame of message ``code`` with ``fields`` (not checked)."""
    return _packer.pack([code, *fields])


def decode(header) -> tuple[int, list]:
    """Decode and check a header frame; return ``(code, fields)``.

    Checks the header is a msgpack list of a known code with the right number
    of fields of the right top-level types. Raises ProtocolError otherwise;
    the contents of batches are checked by the handler that uses them.
    """
    if len(header) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(header)} bytes exceeds the limit")
    try:
        value = msgpack.unpackb(header, raw=False, strict_map_key=False,
                                max_bin_len=MAX_HEADER_BYTES, max_str_len=MAX_HEADER_BYTES)
    except Exception as error:
        raise ProtocolError(f"header is not valid msgpack: {error}") from None
    if not isinstance(value, list) or not value or type(value[0]) is not int:
        raise ProtocolError("header is not a list starting with a message code")
    message = BY_CODE.get(value[0])
    if message is None:
        raise ProtocolError(f"unknown message code {value[0]}")
    fields = value[1:]
    if len(fields) != len(message.fields):
        raise ProtocolError(
            f"{message.name} takes {len(message.fields)} fields, got {len(fields)}")
    for (name, types), field in zip(message.fields, fields):
        if not isinstance(field, types) or (type(field) is bool and bool not in types):
            raise ProtocolError(
                f"{message.name}.{name} must be {'/'.join(t.__name__ for t in types)}, "
                f"got {type(field).__name__}")
    return value[0], fields


def name_of(code: int) -> str:
    message = BY_CODE.get(code)
    return message.name if message else f"<code {code}>"


def valid_data_address(address: str) -> bool:
    """A worker's data address must be ``tcp://HOST:PORT``: peers connect to it."""
    if not address.startswith("tcp://"):
        return False
    host, _, port = address[6:].rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536 \
        and not any(c.isspace() for c in host)


def client_number_of(task_id: int) -> int:
    return task_id >> CLIENT_SHIFT


def local_id(task_id: int) -> int:
    """The id a user sees: the task's number within its client."""
    return task_id & LOCAL_MASK


# ---------------------------------------------------------------- task configs
# How built-in tasks encode their config bytes (client writes, worker reads).
#   const: the bytes;  merge: the delimiter;  open, save: the path (UTF-8)
#   get: <Q index;  slice: <QQ start, end;  split, size, length, array_make: empty
#   run: msgpack [args, input names, output names] ("+in" stdin, "+out" stdout)
#   py_value: cloudpickle of the object
#   py_call: cloudpickle of (direct_args tuple, context flag)

def encode_run_config(args, input_names, output_names) -> bytes:
    return msgpack.packb([list(args), list(input_names), list(output_names)])


def decode_run_config(config) -> tuple[list, list, list]:
    try:
        args, input_names, output_names = msgpack.unpackb(config, raw=False)
        if not all(isinstance(x, str) for x in args + input_names + output_names):
            raise ValueError("names must be strings")
    except Exception as error:
        raise ProtocolError(f"invalid run configuration: {error}") from None
    return args, input_names, output_names


def encode_py_call_config(direct_args: tuple, context: bool) -> bytes:
    import cloudpickle
    return cloudpickle.dumps((tuple(direct_args), bool(context)))
