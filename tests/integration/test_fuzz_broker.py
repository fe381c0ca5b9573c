"""Fuzz a live broker with malformed and adversarial messages while a real plan runs.

Raw DEALER sockets play several kinds of peer at once: ``anon`` peers that
never say hello, ``client`` peers that say HelloClient and then misbehave,
``worker`` peers that say HelloWorker and report tasks they were never given,
and two long-lived *thief* workers that advertise the built-in task types, so
the broker really schedules tasks of the real plan onto them; they never
compute anything and disconnect after a while, so the broker must reschedule
what they held. Meanwhile a normal Client runs plans of about 2,000 tasks
(consts, merges, chains of merges, ``run`` tasks) in a thread, over and over,
and checks every result.

Answers are checked with an oracle of the protocol rules (docs/protocol.md):
every message a rule says is due an ``Error`` must get exactly one, in order,
and nothing else may get one. Bursts are not sent in lock-step: each peer
sends its whole burst, then a *sync* message (an unknown message code that
names the burst), and the answers are read up to the sync's ``Error``.

Inputs the fuzz once found mishandled are in the random stream like any other
(unhashable task ids in Submit inputs, TasksDone and Release; ``Hello`` again
on a connection that said ``Goodbye``; worker data addresses that are not
ZeroMQ endpoints), and each also has a regression test at the end of this
module that sends exactly that input and checks the broker's answer.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from hyperloom import protocol
from hyperloom.broker.state import BUILTIN_TYPES
from hyperloom.client import tasks
from hyperloom.protocol import ProtocolError

from ..conftest import wait_until

MAX_EXAMPLES = int(os.environ.get("HYPERLOOM_FUZZ_EXAMPLES", "100"))
SYNC_BASE = 70000           # sync messages use unknown codes SYNC_BASE + n
ANSWER_TIMEOUT = 20.0       # seconds to wait for a burst's answers
HEARTBEAT_EVERY = 1.0       # thief heartbeat (the broker allows 5 s of silence)
STEAL_TASKS = getattr(protocol, "STEAL_TASKS", None)

DEFAULTS = {list: [], bool: False, int: 0, str: "", bytes: b"", dict: {}}


def header(name, **values):
    """A header for message ``name``: fields by name, defaults for those not given.

    Built from protocol.MESSAGES, so fields added to the protocol get a default
    and the fuzz keeps sending well-formed messages where it means to.
    """
    message = protocol.BY_NAME[name]
    return msgpack.packb([message.code, *(
        values[field] if field in values else DEFAULTS[types[0]]
        for field, types in message.fields)], use_bin_type=True)


# ------------------------------------------------------------------ strategies

CLIENT_CODES = (protocol.SUBMIT, protocol.FETCH, protocol.RELEASE, protocol.GET_STATS,
                protocol.SET_TRACE, protocol.HEARTBEAT, protocol.GOODBYE, protocol.GET_SNAPSHOT,
                protocol.ABANDON_PLAN)
WORKER_CODES = (protocol.TASKS_DONE, protocol.UPLOADED, protocol.HEARTBEAT, protocol.GOODBYE,
                protocol.WORKER_USAGE, protocol.RETIRING)
ALL_CODES = tuple(m.code for m in protocol.MESSAGES)
FUZZ_TYPES = ("fuzz/alpha", "fuzz/beta", "fuzz/gamma")   # types only fake workers offer

# a fixed alphabet: hypothesis' default text alphabet costs ~10 s to set up on this machine
ALPHABET = "az09 /.:*?-_\x00\x01\n\t\\\"'%{}é€ÿĀ中\u2028\U0001f600\U0010ffff"


def texts(max_size):
    return st.text(alphabet=ALPHABET, max_size=max_size)


scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1),
    st.floats(allow_nan=True), texts(12), st.binary(max_size=12),
)
msgpack_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(texts(5), st.integers(-5, 5)), children,
                        max_size=4)),
    max_leaves=6)
# task ids: mostly plausible ints, sometimes other hashable scalars
task_ids = st.one_of(
    st.integers(min_value=0, max_value=2 ** 64 - 1),
    st.integers(min_value=1, max_value=40).map(lambda c: (c << protocol.CLIENT_SHIFT) + 3),
    st.integers(min_value=-(2 ** 63), max_value=-1),
    st.none(), texts(4), st.floats(allow_nan=False), st.booleans(),
)
sizes = st.one_of(st.integers(min_value=0, max_value=2 ** 64 - 1),
                  st.integers(min_value=-(2 ** 63), max_value=-1),
                  st.just(2 ** 64 - 1), st.floats(), texts(3), st.none())

TYPE_OF = {bytes: st.binary(max_size=16), str: texts(16),
           int: st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1),
           list: st.lists(msgpack_values, max_size=4), bool: st.booleans(),
           dict: st.dictionaries(texts(4), scalars, max_size=3),
           type(None): st.none()}


FIELDS_OF = {m.code: st.tuples(*(TYPE_OF[types[0]] for _, types in m.fields))
             for m in protocol.MESSAGES}   # right arity and top-level types, random content
UNKNOWN_CODE = st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1)


@st.composite
def raw_header(draw):
    """A header frame that protocol.decode must refuse (or accept by luck)."""
    kind = draw(st.sampled_from(["bytes", "msgpack", "arity", "types", "unknown", "huge",
                                 "nonlist"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "msgpack":
        return msgpack.packb(draw(msgpack_values), use_bin_type=True)
    if kind == "nonlist":
        return msgpack.packb(draw(st.one_of(scalars, st.just([]), st.just(["x"]),
                                            st.just([True]), st.just([1.5]))),
                             use_bin_type=True)
    if kind == "unknown":
        code = draw(UNKNOWN_CODE)
        if code in protocol.BY_CODE or SYNC_BASE <= code < SYNC_BASE + 10 ** 7:
            code = -code - 1
        return msgpack.packb([code, *draw(st.lists(scalars, max_size=3))])
    if kind == "huge":
        # declared lengths far beyond what follows: bin32, str32, array32, map32
        prefix = draw(st.sampled_from([b"\xc6", b"\xdb", b"\xdd", b"\xdf"]))
        length = draw(st.sampled_from([2 ** 32 - 1, 2 ** 31, 10 ** 9, 300 * 2 ** 20]))
        tail = draw(st.binary(max_size=16))
        return b"\x95\x28" + prefix + length.to_bytes(4, "big") + tail
    message = draw(st.sampled_from(protocol.MESSAGES))
    if kind == "arity":
        n = draw(st.integers(0, 6))
        if n >= len(message.fields):
            n += 1
        return msgpack.packb([message.code, *draw(st.lists(scalars, min_size=n, max_size=n))])
    # "types": right arity, a wrong type somewhere (or right by luck)
    fields = [draw(scalars) for _ in message.fields]
    return msgpack.packb([message.code, *fields], use_bin_type=True)


def typed_message(codes):
    """A known code with fields of the right arity and top-level types."""
    @st.composite
    def build(draw):
        code = draw(st.sampled_from(codes))
        return msgpack.packb([code, *draw(FIELDS_OF[code])], use_bin_type=True)
    return build()


@st.composite
def submit_spec(draw):
    """A plan for a fuzz client: valid tasks, sometimes one corrupted entry."""
    n = draw(st.integers(1, 6))
    entries = []
    for i in range(n):
        kind = draw(st.sampled_from(["const", "merge", "run", "unprovided"]))
        inputs = draw(st.lists(st.integers(0, i - 1), max_size=3)) if i and kind != "const" \
            else []
        if kind == "run":
            config = draw(st.sampled_from([
                b"", b"\xc1", msgpack.packb([1, 2, 3]),
                protocol.encode_run_config(["true"], [], ["+out"]),
                protocol.encode_run_config(["cat"], ["+in"], ["+out"])]))
            n_cpus = draw(st.sampled_from([1, 1, 2, 0]))
        else:
            config = draw(st.binary(max_size=20))
            n_cpus = draw(st.sampled_from([0, 0, 1]))
        entries.append([kind, config, inputs, n_cpus, draw(st.booleans())])
    corrupt = draw(st.one_of(st.none(), st.tuples(
        st.integers(0, n - 1),
        st.sampled_from(["id_range", "reuse", "input", "type", "cpus", "arity", "checkpoint",
                         "label"]))))
    # load=True: checkpoints (none here); more=True: a chunk the plan's last part never follows
    return entries, corrupt, draw(st.booleans()), draw(st.integers(0, 3)) == 0


def client_message():
    submits = submit_spec().map(lambda spec: ("submit", spec))
    return st.one_of(
        typed_message(CLIENT_CODES),
        submits, submits, submits,
        st.tuples(st.just("fetch"), st.lists(st.integers(0, 8), max_size=4),
                  st.lists(task_ids, max_size=3), st.booleans()),
        st.tuples(st.just("release"), st.lists(st.integers(0, 8), max_size=4)),
        typed_message(tuple(c for c in ALL_CODES if c not in CLIENT_CODES)),
        raw_header(),
    )


TASKS_DONE_FIELDS = tuple(name for name, _ in protocol.BY_NAME["TasksDone"].fields)
REPORT_LISTS = ("finished", "failed", "stolen")   # every entry of these is due an answer


def tasks_done_header(**lists):
    """A TasksDone header with the given lists, [] for the other fields."""
    return header("TasksDone", **lists)


@st.composite
def tasks_done(draw):
    """TasksDone from a worker that was given nothing: garbage sizes, wrong ids, junk."""
    strategies = {
        "finished": st.lists(st.one_of(st.tuples(task_ids, sizes, sizes).map(list),
                                       st.lists(scalars, max_size=4), scalars), max_size=6),
        "failed": st.lists(st.one_of(
            st.tuples(task_ids, st.one_of(texts(20), scalars)).map(list),
            st.lists(scalars, max_size=3), scalars), max_size=4),
        "results": st.lists(st.one_of(
            st.tuples(task_ids, msgpack_values, st.integers(0, 3)).map(list),
            st.lists(scalars, max_size=4), scalars), max_size=2),
        "stolen": st.lists(task_ids, max_size=4),
    }
    return tasks_done_header(**{name: draw(strategies.get(name, TYPE_OF[list]))
                                for name in TASKS_DONE_FIELDS})


def worker_message():
    return st.one_of(
        tasks_done(),
        st.tuples(st.just("uploaded"), st.sampled_from(["peer", "unknown"]),
                  st.integers(-5, 2 ** 40), st.lists(msgpack_values, max_size=3)),
        typed_message(WORKER_CODES),
        typed_message(tuple(c for c in ALL_CODES if c not in WORKER_CODES)),
        raw_header(),
    )


def anon_message():
    return st.one_of(raw_header(), typed_message(ALL_CODES),
                     st.tuples(st.just("hello_client"),
                               st.one_of(st.just(protocol.PROTOCOL_VERSION),
                                         st.integers(2, 2 ** 32))),
                     st.tuples(st.just("hello_worker"), st.integers(-5, 2 ** 32)),
                     st.just(("goodbye",)))   # then Hello again, when the burst repeats


# payload frames after the header: mostly none, sometimes junk, rarely 1 MiB
@st.composite
def extra_frames(draw):
    r = draw(st.integers(0, 99))
    if r < 80:
        return []
    if r < 99:
        return draw(st.lists(st.binary(max_size=24), min_size=1, max_size=3))
    return [b"\0" * (1 << 20)]


def with_extra(messages):
    return st.tuples(messages, extra_frames())


peer = st.one_of(
    st.tuples(st.just("anon"), st.lists(with_extra(anon_message()), min_size=1, max_size=12)),
    st.tuples(st.just("client"), st.lists(with_extra(client_message()), max_size=12)),
    st.tuples(st.just("worker"), st.lists(with_extra(worker_message()), max_size=12),
              st.integers(0, 2 ** 62), texts(30),
              st.lists(st.sampled_from(FUZZ_TYPES), max_size=3)),
)
example_strategy = st.fixed_dictionaries({
    "peers": st.lists(peer, min_size=1, max_size=6),
    "repeat": st.integers(1, 16),      # each peer sends its burst this many times
    "thief_claims": st.lists(st.tuples(st.integers(0, 10 ** 6), sizes, sizes), max_size=8),
})

# ------------------------------------------------------------------ the oracle

ANON, CLIENT, WORKER, LEFT = "anon", "client", "worker", "left"


def _unhashable(value):
    try:
        hash(value)
        return False
    except TypeError:
        return True


def has_unhashable_id(head):
    """Whether a header carries a task id that cannot be a dict key (a list, a map)."""
    try:
        code, fields = protocol.decode(head)
    except ProtocolError:
        return False
    if code == protocol.RELEASE:
        return any(_unhashable(i) for i in fields[0])
    if code == protocol.SUBMIT:
        return any(isinstance(entry, list) and len(entry) > 3 and isinstance(entry[3], list)
                   and any(_unhashable(i) for i in entry[3]) for entry in fields[2])
    if code == protocol.TASKS_DONE:
        for name, batch in zip(TASKS_DONE_FIELDS, fields):
            if name == "stolen" and any(_unhashable(i) for i in batch):
                return True
            for entry in batch:   # an entry's id is its first item (or key 0 of a map)
                first = entry[0] if isinstance(entry, list) and entry else \
                    entry.get(0) if isinstance(entry, dict) else None
                if _unhashable(first):
                    return True
    return False


def sanitize(head, state):
    """Keep Terminate, real trace paths and built-in task types out of the stream."""
    try:
        code, fields = protocol.decode(head)
    except ProtocolError:
        return head
    if code == protocol.TERMINATE and state == CLIENT:
        return msgpack.packb([protocol.TERMINATE, "not now"])   # wrong arity instead
    if code == protocol.SET_TRACE:
        # a valid SetTrace makes the broker and workers write trace files there: only
        # relative paths (refused with an Error) are sent
        fields[0] = "fuzz-trace/" + fields[0].lstrip("/")
    if code in (protocol.HELLO_WORKER, protocol.REJOIN_WORKER) \
            and fields[0] == protocol.PROTOCOL_VERSION:
        # a fake worker offering built-in types would be given tasks of the real plan
        # that it never computes (the thieves do that, on purpose and under control)
        fields[3] = [t for t in fields[3] if t not in BUILTIN_TYPES]
    if code == protocol.REJOIN_WORKER:
        # it holds and runs nothing: claims on the real plan's ids are the broker's to
        # reconcile (tests/inprocess/test_journal.py), not this oracle's
        fields[6], fields[7] = [], []
    return msgpack.packb([code, *fields], use_bin_type=True)


def expect(head, state):
    """What a header from a peer in ``state`` is owed: ``(new state, error, reply)``.

    ``error``: None (no Error), ("error", test of its text, fatal) for exactly one, or
    ("tasks_done", n, results) for one per report entry (+1 if an inline result is
    malformed). ``reply``: another answer due at once ("welcome", "stats", "snapshot") or None.
    """
    try:
        code, fields = protocol.decode(head)
    except ProtocolError as error:
        text = str(error)
        return state, ("error", lambda m: m == text, False), None
    name = protocol.name_of(code)
    if state in (ANON, LEFT):
        if code in (protocol.HELLO_CLIENT, protocol.HELLO_WORKER, protocol.RESUME_CLIENT,
                    protocol.REJOIN_WORKER):
            version = fields[0]
            if version != protocol.PROTOCOL_VERSION:
                return state, ("error", lambda m: "protocol version mismatch" in m
                               and str(version) in m
                               and str(protocol.PROTOCOL_VERSION) in m, True), None
            if code == protocol.RESUME_CLIENT:   # this broker has no journal: no sessions
                return state, ("error", lambda m: "is not known to this broker" in m,
                               True), None
            if code in (protocol.HELLO_WORKER, protocol.REJOIN_WORKER) and (
                    fields[1] < 0 or not all(isinstance(t, str) for t in fields[3])
                    or not protocol.valid_data_address(fields[2])):
                return state, ("error", lambda m: "HelloWorker" in m, True), None
            return (CLIENT if code == protocol.HELLO_CLIENT else WORKER), None, "welcome"
        if code in (protocol.GOODBYE, protocol.HEARTBEAT):
            return state, None, None
        return state, ("error", lambda m: name in m and "before Hello" in m, True), None
    handled = CLIENT_CODES if state == CLIENT else WORKER_CODES
    if code not in handled and not (state == CLIENT and code == protocol.TERMINATE):
        return state, ("error", lambda m: name in m and f"not expected from a {state}" in m,
                       False), None
    if code == protocol.GOODBYE:
        return LEFT, None, None
    if code == protocol.TASKS_DONE:
        lists = dict(zip(TASKS_DONE_FIELDS, fields))
        due = sum(len(lists.get(name, ())) for name in REPORT_LISTS)
        return state, ("tasks_done", due, bool(lists["results"])), None
    if code == protocol.UPLOADED:   # fuzz workers are never sent an Upload to answer
        return state, ("error", lambda m: "answers no Upload" in m, False), None
    if code == protocol.GET_STATS:
        return state, None, "stats"
    if code == protocol.GET_SNAPSHOT:
        return state, None, "snapshot"
    if code == protocol.SET_TRACE:   # always relative here (see sanitize)
        return state, ("error", lambda m: "SetTrace.path" in m, False), None
    if code == protocol.RELEASE and any(type(i) is not int for i in fields[0]):
        return state, ("error", lambda m: "Release: ids must be integers" in m, False), None
    if code == protocol.SUBMIT and any(type(i) is not int for i in fields[5]):
        return state, ("error", lambda m: "Submit.release: ids must be integers" in m,
                       False), None
    return state, None, None


def match_errors(owed, errors):
    """Check the Errors a peer received against what it was owed; '' if they agree."""
    position = 0
    for index, spec in enumerate(owed):
        if spec is None:
            continue
        if spec[0] == "error":
            if position >= len(errors):
                return f"message {index}: no Error received (owed {len(owed)} answers)"
            message, fatal = errors[position]
            if not spec[1](message) or fatal != spec[2]:
                return f"message {index}: unexpected Error {message!r} (fatal={fatal})"
            position += 1
        else:
            _, n_entries, results = spec
            if results and position < len(errors) and "inline result" in errors[position][0]:
                position += 1
            for _ in range(n_entries):
                if position >= len(errors):
                    return f"message {index} (TasksDone): too few Errors"
                message, fatal = errors[position]
                if fatal or not any(word in message for word in (
                        "never assigned", "malformed", "not asked back")):
                    return f"message {index} (TasksDone): unexpected Error {message!r}"
                position += 1
    if position != len(errors):
        return f"{len(errors) - position} Errors nobody owed: {errors[position:][:3]}"
    return ""


# ------------------------------------------------------------------ the real plan

def real_plan(round_number):
    """~1,900 tasks: consts, merges, run tasks and chains of merges; results and expected."""
    values = [f"{round_number}:{i};" for i in range(200)]
    consts = [tasks.const(v) for v in values]
    pairs = [tasks.merge((consts[2 * j], consts[2 * j + 1])) for j in range(100)]
    pair_values = [values[2 * j] + values[2 * j + 1] for j in range(100)]
    results, expected = [], []
    for k in range(20):
        results.append(tasks.run("cat", stdin=tasks.merge(pairs[5 * k:5 * k + 5])))
        expected.append("".join(pair_values[5 * k:5 * k + 5]))
    for chain in range(40):
        task, value = pairs[chain], pair_values[chain]
        for step in range(39):
            i = (chain * 7 + step) % 200
            task = tasks.merge((task, consts[i]), "|")
            value += "|" + values[i]
        results.append(task)
        expected.append(value)
    n_tasks = 200 + 100 + 40 + 40 * 39
    return results, [v.encode() for v in expected], n_tasks


class PlanRunner(threading.Thread):
    """Runs real plans with a normal Client until told to stop; checks every result."""

    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.stop_event = threading.Event()
        self.rounds = 0
        self.tasks_done = 0
        self.error = None
        self.first_round_started = threading.Event()

    def run(self):
        try:
            client = self.cluster.client()
            try:
                while True:
                    results, expected, n_tasks = real_plan(self.rounds)
                    futures = client.submit(results)
                    self.first_round_started.set()
                    got = client.gather(futures)
                    assert got == expected, f"round {self.rounds}: wrong results"
                    self.rounds += 1
                    self.tasks_done += n_tasks
                    if self.stop_event.is_set():
                        return
            finally:
                client.close()
        except BaseException as error:
            self.error = error
            self.first_round_started.set()


# ------------------------------------------------------------------ fake peers

class Fuzzer:
    def __init__(self, cluster):
        self.cluster = cluster
        self.context = zmq.Context()
        self.endpoint = f"tcp://{cluster.host}:{cluster.port}"
        self.ids = itertools.count()
        self.sync = itertools.count()
        self.sent = 0
        self.owed_errors = 0
        self.thief = None
        self.thieves = []     # summaries of finished thieves
        self.io_seconds = 0.0
        self.answers = {"TasksFinished": 0, "TasksFailed": 0, "SubmitRefused": 0,
                        "Data": 0, "Results": 0}   # what fuzz clients were sent
        # inputs that once broke the broker, sent as part of the stream
        self.inputs = {"unhashable task id": 0, "Hello after Goodbye": 0}

    def socket(self, identity=None):
        socket = self.context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        if identity is not None:
            socket.setsockopt(zmq.ROUTING_ID, identity)
        socket.connect(self.endpoint)
        return socket

    def send(self, socket, frames):
        socket.send_multipart(frames)
        self.sent += 1

    def read_until_sync(self, socket, sync_code, deadline):
        """Every message up to the Error answering the sync message; as (code, fields)."""
        received = []
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and socket.poll(int(remaining * 1000)), \
                f"no answer to sync {sync_code} within {ANSWER_TIMEOUT} s (broker stuck?)"
            frames = socket.recv_multipart()
            code, fields = protocol.decode(frames[0])
            if code == protocol.ERROR and fields[0] == f"unknown message code {sync_code}":
                return received
            received.append((code, fields))

    def hello(self, socket, header):
        self.send(socket, [header])
        assert socket.poll(int(ANSWER_TIMEOUT * 1000)), "no Welcome"
        code, fields = protocol.decode(socket.recv())
        assert code == protocol.WELCOME, (code, fields)
        return fields[1]

    # -------------------------------------------------------------- one example

    def run_example(self, example, example_number):
        self.thief_tick(example_number)
        peers = []
        try:
            for spec in example["peers"]:
                role = spec[0]
                identity = b"fuzz-%d" % next(self.ids)
                socket = self.socket(identity)
                peers.append({"role": role, "spec": spec, "socket": socket,
                              "identity": identity, "state": ANON, "number": None,
                              "owed": [], "replies": [], "headers": []})
            for p in peers:
                if p["role"] == "client":
                    p["number"] = self.hello(p["socket"], header(
                        "HelloClient", version=protocol.PROTOCOL_VERSION))
                    p["state"] = CLIENT
                elif p["role"] == "worker":
                    _, _, cpus, address, types = p["spec"]
                    if not protocol.valid_data_address(address):
                        address = "tcp://127.0.0.1:1"   # registration must succeed here
                    self.hello(p["socket"], header(
                        "HelloWorker", version=protocol.PROTOCOL_VERSION, cpus=cpus,
                        data_address=address, task_types=list(types), hostname="fuzz-host"))
                    p["state"] = WORKER
            identities = [p["identity"] for p in peers]
            bursts = [[frames for _ in range(example["repeat"])
                       for frames in self.materialize(p, identities)] for p in peers]
            # interleave the bursts: round robin over peers, each peer's order kept
            for batch in itertools.zip_longest(*bursts):
                for p, frames in zip(peers, batch):
                    if frames is not None:
                        self.send(p["socket"], frames)
            if self.thief is not None:
                self.thief_claims(example["thief_claims"])
            syncs = []
            for p in peers:
                code = SYNC_BASE + next(self.sync)
                self.send(p["socket"], [msgpack.packb([code])])
                syncs.append(code)
            deadline = time.monotonic() + ANSWER_TIMEOUT
            for p, code in zip(peers, syncs):
                p["replies"] = self.read_until_sync(p["socket"], code, deadline)
            if self.thief is not None:
                self.thief_check(deadline)
            for p in peers:
                self.check_peer(p)
        finally:
            for p in peers:
                p["socket"].close(linger=0)

    def materialize(self, p, identities):
        """Frames of each message of a peer's burst; records what each is owed."""
        messages = p["spec"][1]
        burst = []
        base = (p["number"] or 0) << protocol.CLIENT_SHIFT
        for message, extra in messages:
            if isinstance(message, tuple):
                header = self.build(message, base, p, identities)
            else:
                header = message
            header = sanitize(header, p["state"])
            before = p["state"]
            p["state"], owed, reply = expect(header, p["state"])
            self.inputs["unhashable task id"] += has_unhashable_id(header)
            self.inputs["Hello after Goodbye"] += before == LEFT and reply == "welcome"
            p["owed"].append(owed)
            if owed is not None:
                self.owed_errors += 1
            p["headers"].append((header, reply))
            burst.append([header, *extra])
        return burst

    @staticmethod
    def build(message, base, p, identities):
        kind = message[0]
        if kind == "hello_client":
            return header("HelloClient", version=message[1])
        if kind == "goodbye":
            return header("Goodbye")
        if kind == "hello_worker":
            return header("HelloWorker", version=protocol.PROTOCOL_VERSION, cpus=message[1],
                          data_address="tcp://127.0.0.1:1", task_types=["fuzz/alpha", 5],
                          hostname="h")
        if kind == "fetch":
            _, own, other, release = message
            return header("Fetch", request=7, ids=[base + i for i in own] + list(other),
                          release=release)
        if kind == "release":
            return header("Release", ids=[base + i for i in message[1]])
        if kind == "uploaded":
            _, target, request, objects = message   # payload frames: see extra_frames
            client = identities[0] if target == "peer" else b"\x00\x01nobody"
            return msgpack.packb([protocol.UPLOADED, client, request, objects, None],
                                 use_bin_type=True)
        if kind == "submit":
            entries, corrupt, load, more = message[1]
            symbols = [protocol.TASK_CONST, protocol.TASK_MERGE, protocol.TASK_RUN,
                       "fuzz/nobody-provides-this"]
            kinds = {"const": 0, "merge": 1, "run": 2, "unprovided": 3}
            first = base + 1000 + len(p["headers"]) * 10   # fresh ids per submit
            wire = []
            for i, (task_kind, config, inputs, n_cpus, is_result) in enumerate(entries):
                wire.append([first + i, kinds[task_kind], config,
                             [first + j for j in inputs], n_cpus, is_result or i == 0,
                             0, None])
            if corrupt is not None:
                index, how = corrupt
                entry = wire[index]
                if how == "id_range":
                    entry[0] = base - 1
                elif how == "reuse":
                    entry[0] = wire[0][0] if index else first + 99
                elif how == "input":
                    entry[3] = entry[3] + [base + 999_999]
                elif how == "type":
                    entry[1] = 17
                elif how == "cpus":
                    entry[4] = -1
                elif how == "arity":
                    del entry[2:]
                elif how == "checkpoint":
                    entry[7] = "relative/path"
                elif how == "label":
                    entry[6] = 5   # out of range: no label
            return header("Submit", symbols=symbols, labels=["fuzz"], tasks=wire, load=load,
                          more=more)
        raise AssertionError(kind)

    def check_peer(self, p):
        errors = [(fields[0], fields[1]) for code, fields in p["replies"]
                  if code == protocol.ERROR]
        problem = match_errors(p["owed"], errors)
        headers = [h for h, _ in p["headers"]]
        assert not problem, f"{p['role']} peer: {problem}\nheaders sent: {headers!r:.3000}"
        welcomes = sum(1 for code, _ in p["replies"] if code == protocol.WELCOME)
        stats = sum(1 for code, _ in p["replies"] if code == protocol.STATS)
        assert welcomes == sum(1 for _, r in p["headers"] if r == "welcome"), \
            f"{p['role']} peer: {welcomes} Welcome(s) for {headers!r:.2000}"
        assert stats == sum(1 for _, r in p["headers"] if r == "stats"), \
            f"{p['role']} peer: {stats} Stats for {headers!r:.2000}"
        snapshots = sum(1 for code, _ in p["replies"] if code == protocol.SNAPSHOT)
        assert snapshots == sum(1 for _, r in p["headers"] if r == "snapshot"), \
            f"{p['role']} peer: {snapshots} Snapshot(s) for {headers!r:.2000}"
        for code, _ in p["replies"]:
            if code in (protocol.TASKS_FINISHED, protocol.TASKS_FAILED, protocol.SUBMIT_REFUSED,
                        protocol.DATA, protocol.RESULTS):
                self.answers[protocol.name_of(code)] += 1
        if p["role"] == "anon" and not welcomes:
            others = [code for code, _ in p["replies"] if code != protocol.ERROR]
            assert not others, f"an unregistered peer got {others}"

    # -------------------------------------------------------------- thieves

    def thief_tick(self, example_number):
        """Thief 1 lives through examples [0, N/4), thief 2 through [N/3, N/2)."""
        n = MAX_EXAMPLES
        windows = ((0, n // 4), (n // 3, n // 2))
        active = any(start <= example_number < end for start, end in windows)
        if active and self.thief is None:
            self.start_thief()
        elif not active and self.thief is not None:
            self.stop_thief()
        if self.thief is not None and time.monotonic() - self.thief["beat"] > HEARTBEAT_EVERY:
            self.send(self.thief["socket"], [header("Heartbeat")])
            self.thief["beat"] = time.monotonic()

    def start_thief(self):
        pull = self.context.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        socket = self.socket(b"thief-%d" % next(self.ids))
        worker_id = self.hello(socket, header(
            "HelloWorker", version=protocol.PROTOCOL_VERSION, cpus=1,
            data_address=f"tcp://127.0.0.1:{port}", task_types=sorted(BUILTIN_TYPES),
            hostname="thief"))
        self.thief = {"socket": socket, "pull": pull, "given": set(), "seen_inputs": [],
                      "worker_id": worker_id,
                      "asked_back": [], "returned": 0,
                      "owed": [], "beat": time.monotonic(), "pushes": 0, "claims": 0}

    def stop_thief(self):
        thief, self.thief = self.thief, None
        self.drain_thief(thief)
        self.thieves.append({"worker_id": thief["worker_id"], "stolen": len(thief["given"]),
                             "pushes": thief["pushes"],
                             "claims": thief["claims"], "given_back": thief["returned"]})
        thief["socket"].close(linger=0)
        thief["pull"].close(linger=0)

    def drain_thief(self, thief, until_sync=None, deadline=None):
        """Take what the broker sent the thief; with until_sync, up to that sync's Error."""
        errors = []
        while True:
            if until_sync is None:
                if not thief["socket"].poll(0):
                    break
            else:
                remaining = deadline - time.monotonic()
                assert remaining > 0 and thief["socket"].poll(int(remaining * 1000)), \
                    "thief: no answer to its sync"
            code, fields = protocol.decode(thief["socket"].recv_multipart()[0])
            if code == protocol.COMPUTE_TASKS:
                for entry in fields[0]:
                    thief["given"].add(entry[0])
                    thief["seen_inputs"].extend(entry[3])
            elif code == STEAL_TASKS:
                thief["asked_back"].extend(fields[0])
            elif code == protocol.ERROR:
                if until_sync is not None and fields[0] == f"unknown message code {until_sync}":
                    break
                errors.append((fields[0], fields[1]))
        while thief["pull"].poll(0):
            thief["pull"].recv_multipart()
            thief["pushes"] += 1
        return errors

    def thief_claims(self, claims):
        """Report tasks the thief was never given (inputs of its tasks, random ids)."""
        thief = self.thief
        self.drain_thief(thief)
        candidates = [i for i in thief["seen_inputs"] if i not in thief["given"]]
        finished = []
        for pick, size, length in claims:
            if candidates and pick % 2:
                task_id = candidates[pick % len(candidates)]
            else:
                task_id = pick + 17
            if task_id in thief["given"]:
                continue   # a report of its own task would be believed: a lie, not a fuzz
            finished.append([task_id, size, length])
        # it never started what it was given: what the broker asks back, it gives back
        stolen, thief["asked_back"] = thief["asked_back"], []
        thief["returned"] += len(stolen)
        self.send(thief["socket"], [tasks_done_header(finished=finished, stolen=stolen)])
        thief["owed"].append(("tasks_done", len(finished), False))
        thief["claims"] += len(finished)
        self.owed_errors += len(finished)

    def thief_check(self, deadline):
        thief = self.thief
        code = SYNC_BASE + next(self.sync)
        self.send(thief["socket"], [msgpack.packb([code])])
        errors = self.drain_thief(thief, until_sync=code, deadline=deadline)
        owed, thief["owed"] = thief["owed"], []
        problem = match_errors(owed, errors)
        assert not problem, f"thief: {problem}"

    def close(self):
        if self.thief is not None:
            self.stop_thief()
        self.context.term()


# ------------------------------------------------------------------ the test

@pytest.mark.timeout(150)
def test_broker_survives_fuzzing_while_a_real_plan_runs(make_cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # whatever a fuzzed message makes the broker write lands here
    # The oracle does not model heartbeat expiry: a fake worker that stays silent
    # through a slow example must not be dropped for it (that rule has its own test).
    cluster = make_cluster(workers=2, cpus=1, broker_args=("--heartbeat-misses", "600"))
    client = cluster.client()
    runner = PlanRunner(cluster)
    runner.start()
    assert runner.first_round_started.wait(30)
    fuzzer = Fuzzer(cluster)
    examples = itertools.count()
    n_examples = 0
    started = time.monotonic()

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              phases=(Phase.generate,),   # no shrinking against a live, stateful broker
              suppress_health_check=list(HealthCheck))
    @given(example=example_strategy)
    def fuzz(example):
        assert runner.error is None, f"the real plan failed: {runner.error!r}"
        nonlocal n_examples
        n_examples = next(examples) + 1
        t0 = time.monotonic()
        fuzzer.run_example(example, n_examples - 1)
        fuzzer.io_seconds += time.monotonic() - t0

    try:
        fuzz()
        fuzz_seconds = time.monotonic() - started
        # the broker is alive, answers, and the real plan completes with right results
        assert cluster.broker.poll() is None, "the broker exited"
        runner.stop_event.set()
        runner.join(60)
        assert not runner.is_alive(), "the real plan did not complete"
        assert runner.error is None, f"the real plan failed: {runner.error!r}"
    finally:
        runner.stop_event.set()
        fuzzer.close()
    stats = client.get_stats()
    assert stats["n_workers"] >= 2
    assert all(w.poll() is None for w in cluster.workers), "a real worker died"
    # every fake peer is gone: only the two real workers and this client remain
    wait_until(lambda: client.info()["n_workers"] == 2, timeout=15,
               message="fake workers to be dropped")
    wait_until(lambda: client.info()["n_clients"] == 1, timeout=15,
               message="fake clients to be dropped")
    wait_until(lambda: client.get_stats()["n_tasks"] == 0, timeout=15,
               message="fake clients' tasks to be released")
    results, expected, _ = real_plan(10_000)
    assert client.gather(client.submit(results)) == expected
    stolen = sum(t["stolen"] for t in fuzzer.thieves)
    print(f"\nfuzz: {n_examples} examples, {fuzzer.sent} messages sent "
          f"({fuzzer.owed_errors} owed an Error) in {fuzz_seconds:.1f} s "
          f"({fuzzer.io_seconds:.1f} s sending and checking); "
          f"real plan: {runner.rounds} rounds, {runner.tasks_done} tasks; "
          f"thieves: {fuzzer.thieves}; answers to fuzz clients: {fuzzer.answers}; "
          f"inputs that once broke the broker: {fuzzer.inputs}")
    assert fuzzer.sent >= 2000, "the fuzz sent too few messages to mean much"
    assert all(fuzzer.inputs.values()), f"the stream missed some of {fuzzer.inputs}"
    assert len(fuzzer.thieves) == 2 and stolen > 0, \
        "the thieves were never given a task of the real plan"
    assert runner.rounds >= 2
    # fuzz clients' plans were both refused and run (their Submits were well-formed)
    assert fuzzer.answers["SubmitRefused"] > 0
    # and the fuzz's well-formed Submits are accepted and run (not all refused as malformed)
    raw = RawPeer(cluster)
    try:
        base = raw.hello_client()
        spec = ([["const", b"ab", [], 0, True], ["merge", b"-", [0, 0], 0, True]], None, False,
                False)
        raw.send(Fuzzer.build(("submit", spec), base, {"headers": []}, []))
        finished = []
        while len(finished) < 2:   # small values come unasked (Results)
            answer = raw.recv_code((protocol.TASKS_FINISHED, protocol.RESULTS), timeout=10)
            assert answer is not None, "a well-formed fuzz Submit did not run"
            finished += [entry[0] if answer[0] == protocol.RESULTS else entry
                         for entry in answer[1][0]]
        raw.send(header("Fetch", request=1, ids=sorted(finished), release=True))
        _, fields = raw.recv_code(protocol.DATA)
        assert len(fields[1]) == 2
    finally:
        raw.close()
    with open(os.path.join(cluster.log_dir, "broker.log")) as log:
        text = log.read()
    assert "error while handling a message" not in text, \
        "a handler raised (see the broker log):\n" + text[text.find("Traceback"):][:3000]
    for thief in fuzzer.thieves:   # gone with its connection: what it held was rescheduled
        # (a new connection on the closed one's fd can report the loss first: "replaced")
        assert re.search(rf"worker {thief['worker_id']} lost \(connection (closed|replaced)\)",
                         text), f"thief {thief['worker_id']} was never noticed gone"


# ------------------------------------------------------------------ regressions
# Inputs the fuzz found that the broker once mishandled, each sent on its own here
# (they are in the random stream above too).

class RawPeer:
    """A DEALER speaking the raw protocol to a cluster's broker."""

    def __init__(self, cluster):
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(f"tcp://{cluster.host}:{cluster.port}")

    def send(self, header, *frames):
        self.socket.send_multipart([header, *frames])

    def recv(self, timeout=5.0):
        """The next message as (code, fields), or None after ``timeout`` seconds."""
        if not self.socket.poll(int(timeout * 1000)):
            return None
        return protocol.decode(self.socket.recv_multipart()[0])

    def recv_code(self, code, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            message = self.recv(max(0.0, deadline - time.monotonic()))
            if message is None or message[0] in (code if type(code) is tuple else (code,)):
                return message

    def answers_until_sync(self, timeout=5.0):
        """Send a sync (an unknown code) and return every message answered before it."""
        sync = SYNC_BASE + 10 ** 7 - 1
        self.send(msgpack.packb([sync]))
        received = []
        while True:
            message = self.recv(timeout)
            assert message is not None, "the broker did not answer the sync message"
            if message[0] == protocol.ERROR and message[1][0] == f"unknown message code {sync}":
                return received
            received.append(message)

    def hello_client(self):
        self.send(header("HelloClient", version=protocol.PROTOCOL_VERSION))
        code, fields = self.recv()
        assert code == protocol.WELCOME
        return fields[1] << protocol.CLIENT_SHIFT

    def hello_worker(self, address="tcp://127.0.0.1:1", types=("fuzz/alpha",), cpus=1):
        self.send(header("HelloWorker", version=protocol.PROTOCOL_VERSION, cpus=cpus,
                         data_address=address, task_types=list(types), hostname="raw"))
        code, fields = self.recv()
        assert code == protocol.WELCOME, fields

    def close(self):
        self.socket.close(linger=0)
        self.context.term()


@pytest.fixture
def raw_peers(shared_cluster):
    peers = []

    def make():
        peers.append(RawPeer(shared_cluster))
        return peers[-1]
    yield make
    for peer in peers:
        peer.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("field", REPORT_LISTS + ("results",))
def test_unhashable_task_id_in_tasks_done_is_answered(raw_peers, field):
    worker = raw_peers()
    worker.hello_worker()
    entry = {"finished": [[1], 0, 0], "failed": [[1], "x"], "results": [[1], [0], 0],
             "stolen": [1]}[field]
    worker.send(tasks_done_header(**{field: [entry]}))
    answers = worker.answers_until_sync()
    assert [code for code, _ in answers] == [protocol.ERROR]


@pytest.mark.timeout(30)
def test_submit_with_an_unhashable_input_id_is_refused(raw_peers):
    client = raw_peers()
    base = client.hello_client()
    client.send(header("Submit", symbols=[protocol.TASK_CONST],
                       tasks=[[base, 0, b"x", [[1]], 0, True, -1, None]]))
    answers = client.answers_until_sync()
    assert [(code, fields[0]) for code, fields in answers] == [(protocol.SUBMIT_REFUSED, [base])]


@pytest.mark.timeout(30)
def test_release_with_an_unhashable_id_still_releases_the_others(raw_peers, client):
    raw = raw_peers()
    base = raw.hello_client()
    raw.send(header("Submit", symbols=[protocol.TASK_CONST],
                    tasks=[[base, 0, b"held", [], 0, True, -1, None]]))
    assert raw.recv_code((protocol.TASKS_FINISHED, protocol.RESULTS)) is not None
    held = client.get_stats()["n_data_objects"]
    raw.send(header("Release", ids=[[1], base]))
    raw.send(header("GetStats", request=1))
    assert raw.recv_code(protocol.STATS) is not None
    assert client.get_stats()["n_data_objects"] == held - 1


@pytest.mark.timeout(30)
def test_hello_again_after_goodbye_then_disconnect_drops_the_client(raw_peers, client):
    before = client.info()["n_clients"]
    raw = raw_peers()
    raw.hello_client()
    raw.send(header("Goodbye"))
    raw.hello_client()
    assert client.info()["n_clients"] == before + 1
    raw.socket.close(linger=0)
    wait_until(lambda: client.info()["n_clients"] == before, timeout=3,
               message="the broker to drop the disconnected client")


@pytest.mark.timeout(60)
def test_a_worker_with_a_bogus_data_address_is_refused_and_real_workers_go_on(make_cluster):
    # Were it let in, real workers would be told to push data to "not an address"
    # (which once crashed them): it must be refused at the door, by name.
    cluster = make_cluster(workers=1, cpus=1)
    client = cluster.client()
    source = client.submit_one(tasks.const("x" * 100))
    client.wait([source])
    fake = RawPeer(cluster)
    try:
        fake.send(header("HelloWorker", version=protocol.PROTOCOL_VERSION, cpus=100,
                         data_address="not an address", task_types=[protocol.TASK_RUN],
                         hostname="fake"))
        code, fields = fake.recv()
        assert code == protocol.ERROR, (protocol.name_of(code), fields)
        message, fatal = fields[0], fields[1]
        assert "data_address" in message and "not an address" in message and fatal
        assert client.get_stats()["n_workers"] == 1     # the fake never joined
        # the real worker (1 cpu, overbooking 3) gets all four; the fake gets none
        futures = client.submit([tasks.run("cat", stdin=source) for _ in range(4)])
        assert client.gather(futures) == [b"x" * 100] * 4
        assert fake.recv_code(protocol.COMPUTE_TASKS, timeout=0.5) is None
    finally:
        fake.close()
    assert client.get_stats()["n_workers"] == 1 and cluster.workers[0].poll() is None
