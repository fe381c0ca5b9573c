"""The wire contract: protocol version, every message, encode and decode.

This is the only module that knows how messages look as bytes; docs/protocol.md
is the same table in prose and must stay identical to MESSAGES below.

A message is one msgpack header frame ``[code, field, field, ...]`` followed
by zero or more raw payload frames (data objects, see hyperloom.data). On the
broker's ROUTER socket the peer's routing id precedes the header. Control
messages are never pickled. Every message that concerns tasks carries a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any, NamedTuple, Optional, Union, get_args, get_origin, get_type_hints

import msgpack

from .errors import LoomError

# 2: Results, Submit.release, OfferData and DeclineOffer (the bulk lane)
# 3: Fetch.lane, Upload.lane, Uploaded.offer, Data.offer (clients read from the bulk lane)
# 4: Accepted, ResumeClient.resend_from (a plan in flight survives its broker's loss)
# 5: AbandonPlan (a submit stopped between two chunks)
PROTOCOL_VERSION = 5
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
# Results up to this size go on to their client as they finish (Results), unasked: a
# gather of them needs no Fetch. Small enough that a client holding many finished
# futures holds little more than the futures themselves.
PUSH_RESULT_BYTES = 4096


class ProtocolError(LoomError):
    """A message that does not follow this contract (a LoomError, so users catch one base)."""


# ---------------------------------------------------------------- batch entries
# One record type per entry of a batch. Senders build plain lists in this field
# order (msgpack writes tuples and lists alike; a list literal is cheaper on the hot
# path); ``check_entry`` holds an entry to its record, and docs/protocol.md's entry
# tables are generated from these (``python -m hyperloom.protocol``, checked by a test).


class SubmitTask(NamedTuple):
    """A task of a Submit, in post-order: every input is earlier in the same submit or
    an unreleased result of the same client."""
    id: int                      # global id in the client's range
    type_index: int              # into Submit.symbols
    config: bytes                # the task type's configuration (see Task configs)
    input_ids: list[int]         # ids of its inputs, in order
    n_cpus: int                  # cores it needs (0: a light task)
    is_result: bool              # the client holds a future for it
    label_index: int             # into Submit.labels; -1: no label
    checkpoint: Optional[str]    # absolute path its result is written to, or nil


class ComputeTask(NamedTuple):
    """A task the worker must run once its inputs are there."""
    id: int                      # global id of the task
    type: str                    # the task type's symbol
    config: bytes                # the task type's configuration (see Task configs)
    input_ids: list[int]         # inputs, held by the worker or pushed to it (SendData)
    n_cpus: int                  # cores it takes while it runs (0: a light task)
    label: Optional[str]         # the label the client gave it, for traces
    is_result: bool              # small results travel back with TasksDone
    checkpoint: Optional[str]    # write the result there (atomically) once computed


class FinishedTask(NamedTuple):
    """A task that finished on the reporting worker; its result stays there."""
    id: int                      # the task
    size: int                    # bytes of the result
    length: int                  # elements of the result (0 for plain data)


class FailedTask(NamedTuple):
    """A task that failed on the reporting worker."""
    id: int                      # the task
    message: str                 # why it failed


class InlineResult(NamedTuple):
    """A result of a result task of at most 64 KiB, sent along so that a fetch needs no
    further round trip; its frames follow the header in entry order."""
    id: int                      # the task
    meta: list[Any]              # the data object's meta (see Framing)
    n_frames: int                # how many payload frames are its own


class TaskFailure(NamedTuple):
    """A result of the client that failed, or one whose dependency failed."""
    id: int                      # the waited-on task
    failed_id: int               # the task that failed (itself or a dependency)
    worker: str                  # data address of the worker it failed on, or "broker"
    message: str                 # why it failed (a traceback, a program's stderr, ...)


class DataEntry(NamedTuple):
    """A fetched object: ``[id, meta]`` (its frames follow in entry order), or
    ``[id, nil, error]`` when there is no data to send."""
    id: int                      # the fetched task
    meta: Optional[list[Any]]    # the data object's meta (see Framing), or nil
    error: Union[str, list[Any], None]  # request invalid: a string; task failed: TaskFailure[1:]


class DataSend(NamedTuple):
    """Push these objects to the worker whose data address this is."""
    address: str                 # the receiving worker's data address (tcp://HOST:PORT)
    ids: list[int]               # the objects to push, held by this worker


class PushedObject(NamedTuple):
    """An object on a data channel; its frames follow in entry order."""
    id: int                      # the object's (task's) id
    meta: list[Any]              # the data object's meta (see Framing)


def check_entry(record: type[tuple[Any, ...]], entry: object) -> None:
    """Raise ProtocolError unless ``entry`` has ``record``'s fields, in order, with their
    types (an entry may stop before trailing fields whose type allows nil)."""
    names: tuple[str, ...] = record._fields  # type: ignore[attr-defined]
    hints = field_types(record)
    if not isinstance(entry, (list, tuple)) or len(entry) > len(names):
        raise ProtocolError(f"{record.__name__} entry {entry!r:.80} has the wrong shape")
    for position, name in enumerate(names):
        allowed = _allowed_types(hints[name])
        if position >= len(entry):
            if type(None) not in allowed:
                raise ProtocolError(f"{record.__name__} entry {entry!r:.80} lacks {name}")
            continue
        value = entry[position]
        if not isinstance(value, allowed) or (type(value) is bool and bool not in allowed):
            raise ProtocolError(f"{record.__name__}.{name} must be "
                                f"{type_name(hints[name])}, got {type(value).__name__}")


@cache
def field_types(record: type[tuple[Any, ...]]) -> dict[str, Any]:
    """``{field: type}`` of a record (its annotations, resolved)."""
    return get_type_hints(record)


def _allowed_types(hint: Any) -> tuple[type, ...]:
    """The runtime types a field's annotation allows (``Optional[list[int]]``: list, None)."""
    options = get_args(hint) if get_origin(hint) is Union else (hint,)
    return tuple(get_origin(option) or option for option in options)


def type_name(hint: Any) -> str:
    names = [t.__name__ if t is not type(None) else "nil" for t in _allowed_types(hint)]
    return " or ".join(names)


@dataclass(frozen=True)
class Message:
    name: str
    code: int
    direction: str       # "client->broker", "broker->worker", ...
    fields: tuple[tuple[str, tuple[type, ...]], ...]   # ((name, allowed types), ...)
    frames: str          # what payload frames follow the header
    answer: str          # what the receiver sends back, if anything
    # list field -> the record of its entries (or int / str for plain lists)
    items: dict[str, type] = field(default_factory=dict)


_B = (bytes,)
_S = (str,)
_I = (int,)
_L = (list,)
_OFFER = (list, type(None))   # nil, or [bulk_address: str, token: bytes, sizes: list of int]

MESSAGES = (
    # --- handshake
    Message("HelloClient", 1, "client->broker", (("version", _I),), "none",
            "Welcome (Session first, from a broker with a journal), or Error(fatal) on a "
            "version mismatch"),
    Message("HelloWorker", 2, "worker->broker",
            (("version", _I), ("cpus", _I), ("data_address", _S), ("task_types", _L),
             ("hostname", _S)), "none",
            "Welcome, or Error(fatal) on a version mismatch", {"task_types": str}),
    Message("Welcome", 3, "broker->client|worker",
            (("version", _I), ("peer_number", _I), ("task_types", _L)), "none",
            "nothing; peer_number is the client number or the worker id; task_types are "
            "those some worker provides (to clients)", {"task_types": str}),
    Message("Error", 4, "broker->any",
            (("message", _S), ("fatal", (bool,))), "none",
            "nothing; fatal errors end the connection"),
    Message("Heartbeat", 5, "client|worker->broker", (), "none",
            "nothing; workers send one in every heartbeat interval they send nothing else"),
    Message("Goodbye", 6, "client|worker->broker", (), "none",
            "nothing; the peer is leaving (release everything it owns)"),
    # --- re-attaching after a lost connection or a broker restart (docs/reliability.md)
    Message("ResumeClient", 7, "client->broker",
            (("version", _I), ("client_number", _I), ("token", _B), ("waiting", _L),
             ("resend_from", _I)), "none",
            "Welcome, Accepted, then TasksFinished / TasksFailed for the waited-on results "
            "that ended meanwhile (a waiting id the broker does not know fails, unless it is "
            "at least resend_from and Accepted.next_id: its plan comes again); Error(fatal) "
            "for a session the broker does not know. resend_from: the first id of the plans "
            "the client kept unconfirmed, -1 if none. Only to a broker started with --journal",
            {"waiting": int}),
    Message("RejoinWorker", 8, "worker->broker",
            (("version", _I), ("cpus", _I), ("data_address", _S), ("task_types", _L),
             ("hostname", _S), ("worker_id", _I), ("held", _L), ("running", _L)), "none",
            "Welcome (with worker_id again if the broker expected it, else a new id); "
            "RemoveData for held objects it does not want, CancelTasks for running tasks it "
            "does not want; held results are not computed again",
            {"task_types": str, "held": FinishedTask, "running": int}),
    # --- client -> broker
    Message("Submit", 10, "client->broker",
            (("symbols", _L), ("labels", _L), ("tasks", _L), ("load", (bool,)),
             ("more", (bool,)), ("release", _L)), "none",
            "Results / TasksFinished / TasksFailed later; SubmitRefused if the plan is "
            "invalid. A big plan comes in chunks (more=True on all but the last); symbols "
            "and labels extend the tables of earlier chunks; the plan is accepted or "
            "refused whole. release: ids the client released since its last message, "
            "handled as a Release before the chunk (one message instead of two)",
            {"symbols": str, "labels": str, "tasks": SubmitTask, "release": int}),
    Message("Fetch", 11, "client->broker",
            (("request", _I), ("ids", _L), ("release", (bool,)), ("lane", (bool,))), "none",
            "Data with the same request number, once each task is done (one or more "
            "Data messages that together cover the ids); release=True also releases them; "
            "lane=True: the client can read big values from a worker's bulk lane (the "
            "broker passes it on in Upload)",
            {"ids": int}),
    Message("Release", 12, "client->broker", (("ids", _L),), "none", "nothing",
            {"ids": int}),
    Message("GetStats", 13, "client->broker", (("request", _I),), "none", "Stats"),
    Message("SetTrace", 14, "client->broker", (("path", _S),), "none",
            "nothing; Error if the path is not absolute or cannot be written"),
    Message("Terminate", 15, "client->broker", (), "none",
            "nothing; broker tells workers Shutdown and exits"),
    Message("GetSnapshot", 16, "client->broker", (("request", _I), ("since", _I)), "none",
            "Snapshot; asking makes the broker record dashboard events for a few seconds"),
    Message("AbandonPlan", 17, "client->broker", (), "none",
            "nothing; the chunks of a plan sent so far (more=True) are dropped, as if never "
            "sent: the client stopped that submit midway (an exception while it encoded or "
            "sent a later chunk). Ignored when no chunked plan is pending"),
    # --- broker -> client
    Message("TasksFinished", 20, "broker->client",
            (("ids", _L), ("done", _I), ("total", _I)), "none",
            "nothing; ids are finished results (maybe none), done/total count every task "
            "this client submitted (for progress bars). Left out when a Data sent in the "
            "same round carries the value of every id it would name: a value in Data means "
            "its task finished", {"ids": int}),
    Message("TasksFailed", 21, "broker->client", (("failures", _L),), "none", "nothing",
            {"failures": TaskFailure}),
    Message("SubmitRefused", 22, "broker->client",
            (("ids", _L), ("message", _S)), "none",
            "nothing; ids are the result tasks of the refused submit", {"ids": int}),
    Message("Data", 23, "broker->client",
            (("request", _I), ("objects", _L), ("offer", _OFFER)),
            "the objects' frames in order; none when offer is given", "nothing; with an "
            "offer (relayed from Uploaded), the client reads the objects' frames from "
            "offer's bulk_address with its token (see Bulk lane)",
            {"objects": DataEntry}),
    Message("Stats", 24, "broker->client", (("request", _I), ("stats", (dict,))), "none",
            "nothing; stats is what Client.info() returns"),
    Message("Snapshot", 25, "broker->client", (("request", _I), ("snapshot", (dict,))), "none",
            "nothing; counters now and the events after GetSnapshot.since (docs/dashboard.md)"),
    Message("Results", 27, "broker->client",
            (("objects", _L), ("done", _I), ("total", _I)), "the objects' frames in order",
            "nothing; the values of finished results of at most PUSH_RESULT_BYTES (4 KiB), "
            "sent unasked as they finish (a value here means its task finished); done/total "
            "as in TasksFinished, which is left out when this names every id it would",
            {"objects": DataEntry}),
    Message("Session", 26, "broker->client", (("client_number", _I), ("token", _B)), "none",
            "nothing; sent just before Welcome by a broker with a journal (so a client has "
            "it before its first submit, whose plan it keeps till Accepted): what "
            "ResumeClient needs to re-attach"),
    Message("Accepted", 28, "broker->client", (("next_id", _I),), "none",
            "nothing; only from a broker with a journal: the client's plans of ids below "
            "next_id are journaled (sent 20 ms after a plan's last chunk was taken in, for "
            "every plan taken in meanwhile, and after Welcome to a resumed client). A client "
            "keeps each plan it sent until then, and after a resume submits again those "
            "that next_id does not cover"),
    # --- broker -> worker
    Message("ComputeTasks", 30, "broker->worker", (("tasks", _L),), "none",
            "TasksDone later", {"tasks": ComputeTask}),
    Message("SendData", 31, "broker->worker", (("sends", _L),), "none",
            "PushData to each target", {"sends": DataSend}),
    Message("Upload", 32, "broker->worker",
            (("client", _B), ("request", _I), ("ids", _L), ("lane", (bool,))), "none",
            "Uploaded; lane as in Fetch", {"ids": int}),
    Message("RemoveData", 33, "broker->worker", (("ids", _L),), "none",
            "nothing; removals wait up to 2 ms and go out together", {"ids": int}),
    Message("CancelTasks", 34, "broker->worker", (("ids", _L),), "none", "nothing",
            {"ids": int}),
    Message("StartTrace", 35, "broker->worker", (("path", _S), ("worker_id", _I)), "none",
            "nothing"),
    Message("Shutdown", 36, "broker->worker", (), "none", "nothing; the worker exits"),
    Message("StealTasks", 37, "broker->worker", (("ids", _L),), "none",
            "TasksDone.stolen lists those the worker had not started and dropped; "
            "it runs the others as usual", {"ids": int}),
    Message("PeersGone", 38, "broker->worker", (("addresses", _L),), "none",
            "nothing; the workers at these data addresses left (goodbye or lost): close "
            "the data channels to them and drop what still waits to go there",
            {"addresses": str}),
    # --- worker -> broker
    Message("TasksDone", 40, "worker->broker",
            (("finished", _L), ("failed", _L), ("results", _L), ("stolen", _L)),
            "the inline results' frames in order",
            "nothing; stolen are ids given back after StealTasks",
            {"finished": FinishedTask, "failed": FailedTask, "results": InlineResult,
             "stolen": int}),
    Message("Uploaded", 41, "worker->broker",
            (("client", _B), ("request", _I), ("objects", _L), ("offer", _OFFER)),
            "the objects' frames in order; none when offer is given",
            "forwarded as Data to the client that asked, only as the answer to an Upload "
            "the broker sent (of the ids it named); anything else is answered with Error. "
            "offer: nil, or [bulk_address, token, sizes] when the Upload allowed the lane "
            "and a frame is of at least 32 MiB: the frames wait on this worker's bulk lane",
            {"objects": DataEntry}),
    Message("WorkerUsage", 42, "worker->broker",
            (("cpu_percent", _I), ("memory", _I)), "none",
            "nothing; the node's CPU use (whole percent) and the worker's memory (with "
            "its children), every few seconds, for dashboards"),
    Message("Retiring", 47, "worker->broker", (), "none",
            "StealTasks for its queued tasks, SendData copying what only it holds to other "
            "workers, then Shutdown; the broker places nothing more on it meanwhile"),
    # --- worker -> worker (PUSH -> PULL, never through the broker)
    Message("PushData", 50, "worker->worker", (("source", _S), ("objects", _L)),
            "the objects' frames in order", "nothing; source is the sender's data address",
            {"objects": PushedObject}),
    Message("OfferData", 51, "worker->worker",
            (("source", _S), ("objects", _L), ("bulk_address", _S), ("token", _B),
             ("sizes", _L)), "none", "nothing; the receiver fetches the frames (sizes in "
            "bytes, in order) from bulk_address with token (see Bulk lane)",
            {"objects": PushedObject, "sizes": int}),
    Message("DeclineOffer", 52, "worker->worker",
            (("source", _S), ("token", _B), ("reason", _S)), "none",
            "PushData of the offer at once; the receiver at source (its data address) could "
            "not connect to the holder's bulk_address: the holder pushes to it over ZeroMQ "
            "from then on (see Bulk lane)"),
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
GET_SNAPSHOT = BY_NAME["GetSnapshot"].code
ABANDON_PLAN = BY_NAME["AbandonPlan"].code
SNAPSHOT = BY_NAME["Snapshot"].code
WORKER_USAGE = BY_NAME["WorkerUsage"].code
TASKS_FINISHED = BY_NAME["TasksFinished"].code
TASKS_FAILED = BY_NAME["TasksFailed"].code
SUBMIT_REFUSED = BY_NAME["SubmitRefused"].code
DATA = BY_NAME["Data"].code
RESULTS = BY_NAME["Results"].code
ACCEPTED = BY_NAME["Accepted"].code
STATS = BY_NAME["Stats"].code
COMPUTE_TASKS = BY_NAME["ComputeTasks"].code
SEND_DATA = BY_NAME["SendData"].code
UPLOAD = BY_NAME["Upload"].code
REMOVE_DATA = BY_NAME["RemoveData"].code
CANCEL_TASKS = BY_NAME["CancelTasks"].code
START_TRACE = BY_NAME["StartTrace"].code
SHUTDOWN = BY_NAME["Shutdown"].code
STEAL_TASKS = BY_NAME["StealTasks"].code
PEERS_GONE = BY_NAME["PeersGone"].code
TASKS_DONE = BY_NAME["TasksDone"].code
UPLOADED = BY_NAME["Uploaded"].code
PUSH_DATA = BY_NAME["PushData"].code
OFFER_DATA = BY_NAME["OfferData"].code
DECLINE_OFFER = BY_NAME["DeclineOffer"].code
RETIRING = BY_NAME["Retiring"].code
RESUME_CLIENT = BY_NAME["ResumeClient"].code
REJOIN_WORKER = BY_NAME["RejoinWorker"].code
SESSION = BY_NAME["Session"].code

_packer = msgpack.Packer(use_bin_type=True)


def encode(code: int, *fields: Any) -> bytes:
    """The header frame of message ``code`` with ``fields`` (not checked)."""
    header: bytes = _packer.pack([code, *fields])
    return header


def decode(header: Any) -> tuple[int, list[Any]]:
    """Decode and check a header frame; return ``(code, fields)``.

    Checks the header is a msgpack list of a known code with the right number
    of fields of the right top-level types. Raises ProtocolError otherwise;
    the contents of batches are checked by the handler that uses them.
    """
    if len(header) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(header)} bytes exceeds the limit")
    try:
        # (msgpack bounds strings and binaries by the header's own size)
        value = msgpack.unpackb(header, strict_map_key=False)
    except Exception as error:
        raise ProtocolError(f"header is not valid msgpack: {error}") from None
    if type(value) is not list or not value or type(value[0]) is not int:
        raise ProtocolError("header is not a list starting with a message code")
    checked = _FIELD_TYPES.get(value[0])
    if checked is None:
        raise ProtocolError(f"unknown message code {value[0]}")
    message, field_types = checked
    fields = value[1:]
    if len(fields) != len(field_types):
        raise ProtocolError(
            f"{message.name} takes {len(message.fields)} fields, got {len(fields)}")
    # msgpack decodes to exact types (a bool is never an int here): a set lookup each
    for given, allowed in zip(fields, field_types):
        if type(given) not in allowed:
            _wrong_field(message, fields)
    return value[0], fields


def _wrong_field(message: Message, fields: list[Any]) -> None:
    for (name, types), given in zip(message.fields, fields):
        if type(given) not in types:
            raise ProtocolError(
                f"{message.name}.{name} must be {'/'.join(t.__name__ for t in types)}, "
                f"got {type(given).__name__}")


# code -> (message, the exact types each field may have)
_FIELD_TYPES = {message.code: (message, tuple(frozenset(types) for _, types in message.fields))
                for message in MESSAGES}


def name_of(code: int) -> str:
    message = BY_CODE.get(code)
    return message.name if message else f"<code {code}>"


def valid_data_address(address: str) -> bool:
    """A worker's data address must be ``tcp://HOST:PORT``: peers connect to it."""
    return host_and_port(address) is not None


def is_lane_offer(offer: object) -> bool:
    """Whether ``offer`` (Uploaded.offer, Data.offer) is ``[bulk_address: str, token:
    bytes, sizes: list of int >= 0]``."""
    return (type(offer) is list and len(offer) == 3 and type(offer[0]) is str
            and type(offer[1]) is bytes and type(offer[2]) is list
            and all(type(size) is int and size >= 0 for size in offer[2]))


def host_and_port(address: str) -> tuple[str, int] | None:
    """``(HOST, PORT)`` of ``tcp://HOST:PORT``; None if ``address`` is not of that form."""
    if not address.startswith("tcp://"):
        return None
    host, _, port = address[6:].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 \
            or any(c.isspace() for c in host):
        return None
    return host, int(port)


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

def encode_run_config(args: Any, input_names: Any, output_names: Any) -> bytes:
    config: bytes = msgpack.packb([list(args), list(input_names), list(output_names)])
    return config


def decode_run_config(config: bytes) -> tuple[list[str], list[str], list[str]]:
    try:
        args, input_names, output_names = msgpack.unpackb(config, raw=False)
        if not all(isinstance(x, str) for x in args + input_names + output_names):
            raise ValueError("names must be strings")
    except Exception as error:
        raise ProtocolError(f"invalid run configuration: {error}") from None
    return args, input_names, output_names


def encode_py_call_config(direct_args: tuple[Any, ...], context: bool) -> bytes:
    import cloudpickle
    config: bytes = cloudpickle.dumps((tuple(direct_args), bool(context)))
    return config
