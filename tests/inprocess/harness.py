"""An in-process cluster: the broker core and worker cores wired by an in-memory transport.

No sockets, no processes, no threads, no clock of its own: ``Cluster`` drives
``BrokerState`` (hyperloom/broker/state.py) and one ``WorkerCore``
(hyperloom/worker/state.py) per simulated worker on a fake clock
(``cluster.now``, moved only by ``advance``). Every message is really encoded
and decoded with hyperloom.protocol and hyperloom.data, as on the wire; tasks
run inline with the real built-in task functions (hyperloom/worker/builtin.py).

The transport records every message (``cluster.transcript``) and fails the
test (``UnexpectedMessage``) on any message its receiver does not expect: an
Error to anyone (unless the test says it expects it), a kind of message a
worker or client never gets, an order to send data the worker does not hold,
a task computed twice, a message to an identity that never existed.
``check_invariants()`` of the broker and of every worker core runs after each
message the broker handles and after each round.
"""

from __future__ import annotations

import logging
from collections import deque

from hyperloom import data, protocol
from hyperloom.broker.outbox import messages
from hyperloom.broker.state import BrokerState
from hyperloom.client.plan import PlanBuilder
from hyperloom.worker.builtin import register_builtin_tasks
from hyperloom.worker.state import WorkerCore
from hyperloom.worker.taskdef import TaskContext, TaskError, TaskRegistry

log = logging.getLogger("hyperloom.inprocess")

WORKER_EXPECTS = frozenset({
    protocol.WELCOME, protocol.COMPUTE_TASKS, protocol.SEND_DATA, protocol.UPLOAD,
    protocol.REMOVE_DATA, protocol.CANCEL_TASKS, protocol.STEAL_TASKS, protocol.START_TRACE,
    protocol.SHUTDOWN, protocol.PEERS_GONE,
})
CLIENT_EXPECTS = frozenset({
    protocol.WELCOME, protocol.TASKS_FINISHED, protocol.TASKS_FAILED, protocol.DATA,
    protocol.RESULTS, protocol.SUBMIT_REFUSED, protocol.STATS, protocol.SNAPSHOT, protocol.SESSION,
    protocol.ACCEPTED,
})


class UnexpectedMessage(AssertionError):
    """The broker sent something its receiver does not expect."""


def check_entries(code, fields):
    """Every batch entry of a message matches its record in hyperloom.protocol."""
    message = protocol.BY_CODE[code]
    for (name, _), value in zip(message.fields, fields):
        record = message.items.get(name)
        if record is not None and hasattr(record, "_fields"):
            for entry in value:
                try:
                    protocol.check_entry(record, entry)
                except protocol.ProtocolError as error:
                    raise UnexpectedMessage(f"{message.name}.{name}: {error}") from None


class SimWorker:
    """One worker: a real WorkerCore, fed decoded messages, running built-ins inline.

    ``auto_run``: started tasks run at once; else they wait in ``running``
    until ``finish_running()`` (to keep tasks queued, e.g. to be stolen).
    """

    def __init__(self, cluster: Cluster, index: int, cpus: int, task_types, auto_run: bool):
        self.cluster = cluster
        self.identity = b"worker-%d" % index
        self.address = f"tcp://sim-{cluster.name}worker-{index}:1"
        self.cpus = cpus
        self.core = WorkerCore(cpus)
        self.registry = TaskRegistry()
        register_builtin_tasks(self.registry)
        self.task_types = list(task_types if task_types is not None else self.registry.symbols())
        self.auto_run = auto_run
        self.running = []             # started tasks not run yet (auto_run False)
        # their inputs, taken when they started (as the executor); by task, not id: a
        # task canceled while it runs may be started again here, under the same id
        self.inputs = {}
        self.incoming = deque()       # (data id, DataObject) pushed by peers, not yet received
        self.alive = True
        self.silent = False           # sends nothing (no heartbeats, no reports)
        self.errors = []              # Error messages it received
        self.peers_gone = []          # data addresses the broker said are gone
        self.computed = set()         # ids it was asked to compute
        self.trace_dir = None

    def hello(self):
        self.send(protocol.encode(protocol.HELLO_WORKER, protocol.PROTOCOL_VERSION, self.cpus,
                                  self.address, self.task_types, "sim-host"))

    def send(self, header, *payload):
        if self.alive and not self.silent:
            self.cluster.to_broker(self.identity, header, *payload)

    # ------------------------------------------------------------ messages from the broker

    def receive(self, code, fields, frames):
        if code not in WORKER_EXPECTS:
            if code == protocol.ERROR and self.cluster.expect_errors:
                self.errors.append(fields[0])
                return
            raise UnexpectedMessage(
                f"{self.identity!r} got {protocol.name_of(code)} {fields!r:.200}")
        handler = getattr(self, "_on_" + protocol.name_of(code).lower(), None)
        handler(*fields)

    def _on_welcome(self, version, worker_id, _types):
        self.core.on_welcome(worker_id)

    def _on_peersgone(self, addresses):
        self.peers_gone.extend(addresses)

    def _on_computetasks(self, entries):
        for entry in entries:
            if entry[0] in self.computed and entry[0] in self.core.tasks:
                raise UnexpectedMessage(f"task {entry[0]} sent twice to {self.identity!r}")
            self.computed.add(entry[0])
        self.core.on_compute(entries)

    def _on_senddata(self, targets):
        for (address, ids), (_, objects) in zip(targets, self.core.on_send_data(targets)):
            if len(objects) < len(ids):
                raise UnexpectedMessage(f"{self.identity!r} asked to send {ids}, "
                                        f"not all of which it holds")
            if address in self.peers_gone:
                raise UnexpectedMessage(f"a push to {address}, reported gone")
            target = self.cluster.worker_at(address)
            for data_id, obj in objects:  # through the wire form, as a PUSH socket carries it
                frames = []
                meta, _ = data.encode(obj, frames)
                target.incoming.append((data_id, data.decode(meta, frames)[0]))

    def _on_upload(self, client_identity, request, ids, lane):
        entries, frames = [], []
        for data_id, obj in self.core.on_upload(ids):
            if obj is None:
                entries.append([data_id, None, "the data is no longer on its worker"])
                continue
            meta, _ = data.encode(data.for_client(obj), frames)
            entries.append([data_id, meta])
        self.send(protocol.encode(protocol.UPLOADED, client_identity, request, entries, None),
                  *frames)

    def _on_removedata(self, ids):
        self.core.on_remove(ids)

    def _on_canceltasks(self, ids):
        self.core.on_cancel(ids)

    def _on_stealtasks(self, ids):
        self.core.on_steal(ids)

    def _on_starttrace(self, directory, worker_id):
        self.trace_dir = directory

    def _on_shutdown(self):
        self.core.on_shutdown()
        assert self.core.shutdown_requested
        self.send(protocol.encode(protocol.GOODBYE))   # as a real worker closes
        self.alive = False

    # ------------------------------------------------------------ work

    def work(self) -> bool:
        """Receive pushed data, start what can start, run it (auto_run), report.

        Returns whether anything happened."""
        if not self.alive:
            return False
        busy = bool(self.incoming)
        while self.incoming:
            self.core.on_data(*self.incoming.popleft())
        started = self.core.take_startable()
        busy = busy or bool(started)
        for task in started:
            self.inputs[task] = self.core.inputs_of(task)
        self.running.extend(started)
        if self.auto_run:
            self.finish_running(report=False)
        return self.report() or busy

    def finish_running(self, count=None, report=True):
        """Run ``count`` (default: all) of the started tasks, then report."""
        count = len(self.running) if count is None else count
        batch, self.running = self.running[:count], self.running[count:]
        for task in batch:
            self.core.on_task_done(task, *self._execute(task))
        if report:
            self.report()

    def _execute(self, task):
        kind = self.registry.get(task.type)
        if kind is None:
            return None, f"Task type '{task.type}' is not provided by this worker"
        ctx = TaskContext(task.id, task.type, task.config, self.inputs.pop(task),
                          task.cpu_ids, "", False, task.label)
        try:
            return kind.fn(ctx), None
        except TaskError as error:
            return None, str(error)

    def report(self) -> bool:
        if self.silent:
            return False
        finished, failed, results, stolen = self.core.take_reports()
        if not (finished or failed or stolen):
            return False
        entries, frames = [], []
        for task_id, obj in results:
            first = len(frames)
            meta, _ = data.encode(data.for_client(obj), frames)
            entries.append([task_id, meta, len(frames) - first])
        self.send(protocol.encode(protocol.TASKS_DONE, finished, failed, entries, stolen),
                  *frames)
        return True


class SimClient:
    """A client: submits plans built with the real client API, keeps what it is told."""

    def __init__(self, cluster: Cluster, identity: bytes = b"client"):
        self.cluster = cluster
        self.identity = identity
        self.number = None
        self.next_id = None
        self.finished = set()
        self.failed = {}              # id -> [failed id, worker address, message]
        self.progress = (0, 0)
        self.replies = {}             # request -> {id: (value, error)}
        self.pushed = {}              # id -> value sent unasked (Results)
        self.refused = []
        self.accepted = []            # Accepted.next_id, as they came
        self.plans = None             # a SentPlans (hyperloom.client.session) to keep up
        self.stats = {}
        self.errors = []
        self.next_request = 1
        self.connected = True         # False once its connection dropped: nothing may come

    def hello(self):
        self.send(protocol.encode(protocol.HELLO_CLIENT, protocol.PROTOCOL_VERSION))

    def send(self, header, *payload):
        self.cluster.to_broker(self.identity, header, *payload)

    def submit(self, tasks, load=False, chunk=20000) -> list:
        """Submit ``tasks`` (hyperloom.client.tasks objects); return their ids."""
        roots, headers = self.encode_plan(tasks, load, chunk)
        for header in headers:
            self.send(header)
        return roots

    def encode_plan(self, tasks, load=False, chunk=20000) -> tuple[list, list]:
        """The ids of ``tasks`` and the Submit headers that send them, not sent yet."""
        builder = PlanBuilder(self, self.next_id)
        roots = [builder.add(task) for task in tasks]
        for task_id in dict.fromkeys(roots):
            builder.mark_result(task_id)
        self.next_id = builder.next_id
        return roots, [protocol.encode(protocol.SUBMIT, *part, bool(load), part.more, [])
                       for part in builder.chunks(chunk)]

    def fetch(self, ids, release=False) -> int:
        request = self.next_request
        self.next_request += 1
        self.replies[request] = {}
        self.send(protocol.encode(protocol.FETCH, request, list(ids), release, False))
        return request

    def release(self, ids):
        self.send(protocol.encode(protocol.RELEASE, list(ids)))

    def receive(self, code, fields, frames):
        if code not in CLIENT_EXPECTS:
            if code == protocol.ERROR and self.cluster.expect_errors:
                self.errors.append(fields[0])
                return
            raise UnexpectedMessage(
                f"{self.identity!r} got {protocol.name_of(code)} {fields!r:.200}")
        if code == protocol.WELCOME:
            self.number = fields[1]
            if self.next_id is None:  # a resumed client goes on with its own ids
                self.next_id = self.number << protocol.CLIENT_SHIFT
        elif code == protocol.TASKS_FINISHED:
            self.finished.update(fields[0])
            self.progress = (fields[1], fields[2])
            if not 0 <= fields[1] <= fields[2]:
                raise UnexpectedMessage(f"progress {fields[1]}/{fields[2]}")
        elif code == protocol.TASKS_FAILED:
            for task_id, *error in fields[0]:
                self.failed[task_id] = error
        elif code == protocol.DATA:
            self._on_data(*fields, frames)
        elif code == protocol.RESULTS:
            self.progress = (fields[1], fields[2])
            position = 1
            for task_id, meta in fields[0]:
                obj, position = data.decode(meta, frames, position)
                self.pushed[task_id] = obj.to_python()
                self.finished.add(task_id)  # a value means its task finished
        elif code == protocol.SUBMIT_REFUSED:
            self.refused.append(fields)
            if self.plans is not None:
                self.plans.refused(fields[0])
        elif code in (protocol.STATS, protocol.SNAPSHOT):
            self.stats[fields[0]] = fields[1]
        elif code == protocol.SESSION:
            self.session = (fields[0], fields[1])
        elif code == protocol.ACCEPTED:
            self.accepted.append(fields[0])
            if self.plans is not None:
                self.plans.confirm(fields[0])

    def _on_data(self, request, entries, offer, frames):
        if offer is not None:   # (SimWorkers have no bulk lane)
            raise UnexpectedMessage(f"Data for request {request} with an offer")
        if request not in self.replies:
            raise UnexpectedMessage(f"Data for request {request}, which was never sent")
        position = 1
        for entry in entries:
            if entry[1] is None:
                self.replies[request][entry[0]] = (None, entry[2])
                continue
            obj, position = data.decode(entry[1], frames, position)
            self.replies[request][entry[0]] = (obj.to_python(), None)
            self.finished.add(entry[0])  # its TasksFinished may be left out


class Cluster:
    """A broker core, workers and clients, on a fake clock, in memory."""

    def __init__(self, workers=2, cpus=1, heartbeat_timeout=5.0, auto_run=True,
                 checkpoint_exists=None, open_recorder=None, max_task_losses=3,
                 broker=None, name="", client=True):
        options = {"max_task_losses": max_task_losses}
        if checkpoint_exists is not None:
            options["checkpoint_exists"] = checkpoint_exists
        if open_recorder is not None:
            options["open_recorder"] = open_recorder
        # a given broker core: e.g. one with a journal, or restored from one
        self.broker = broker or BrokerState(heartbeat_timeout=heartbeat_timeout, **options)
        # in worker addresses: a cluster after a restart must not reuse those of the
        # workers that re-attach to it from the one before
        self.name = name
        self.now = 0.0
        self.expect_errors = False
        self.transcript = []          # (sender, receiver, message name, fields)
        self.workers = []
        self.ever = set()             # every identity that said hello
        self.clients = {}             # identity -> SimClient, besides ``self.client``
        # without ``client``, self.client says nothing until a resume_client replaces it
        self.client = self.add_client(b"client") if client else SimClient(self, b"client")
        for _ in range(workers):
            self.add_worker(cpus, auto_run=auto_run)
        self.run()

    # ------------------------------------------------------------ peers

    def add_worker(self, cpus=1, task_types=None, auto_run=True) -> SimWorker:
        worker = SimWorker(self, len(self.workers), cpus, task_types, auto_run)
        self.workers.append(worker)
        worker.hello()                # Welcome comes with the next step
        return worker

    def add_client(self, identity: bytes) -> SimClient:
        client = self.clients[identity] = SimClient(self, identity)
        client.hello()
        return client

    def disconnect(self, client: SimClient):
        """The client's connection drops (a journaled broker keeps its session)."""
        client.connected = False
        self.broker.on_peer_disconnected(client.identity, self.now)
        self.check()

    def worker_at(self, address) -> SimWorker:
        for worker in self.workers:
            if worker.address == address:
                return worker
        raise UnexpectedMessage(f"data pushed to {address}, which no worker has")

    def kill(self, worker: SimWorker):
        """The worker's process dies: its connection closes."""
        worker.alive = False
        self.broker.on_peer_disconnected(worker.identity, self.now)
        self.check()

    def resume_client(self, session, waiting, identity=b"resumed", next_id=None,
                      replaces=None, resend_from=-1) -> SimClient:
        """A client of the broker before a restart (or of a connection that dropped)
        re-attaches with its ``session`` (number, token), waiting on ``waiting``; it
        takes the place of ``replaces`` (by default ``self.client``) and goes on with
        ids from ``next_id``."""
        number, token = session
        client = SimClient(self, identity)
        if replaces is None or replaces is self.client:
            self.client = client
        self.clients[identity] = client
        client.session = session
        client.next_id = next_id
        self.ever.add(identity)
        client.send(protocol.encode(protocol.RESUME_CLIENT, protocol.PROTOCOL_VERSION, number,
                                    token, list(waiting), resend_from))
        return client

    def live_workers(self):
        return [w for w in self.workers if w.alive]

    # ------------------------------------------------------------ transport

    def to_broker(self, identity, header, *payload):
        code, fields = protocol.decode(header)
        check_entries(code, fields)
        self.transcript.append((identity, b"broker", protocol.name_of(code), fields))
        if code in (protocol.HELLO_CLIENT, protocol.HELLO_WORKER):
            self.ever.add(identity)
        self.broker.on_message(identity, code, fields, [identity, header, *payload], self.now)
        self.check()

    def flush(self) -> bool:
        """Deliver what the broker's outbox holds; return whether it held anything."""
        out = self.broker.outbox
        if out.is_empty():
            return False
        batch = list(messages(out))
        out.clear()
        for identity, frames in batch:
            code, fields = protocol.decode(frames[0])
            check_entries(code, fields)
            self.transcript.append((b"broker", identity, protocol.name_of(code), fields))
            self._deliver(identity, code, fields, frames)
        return True

    def _deliver(self, identity, code, fields, frames):
        client = self.client if identity == self.client.identity else self.clients.get(identity)
        if client is not None:
            if not client.connected:
                raise UnexpectedMessage(f"{protocol.name_of(code)} to {identity!r}, whose "
                                        f"connection dropped")
            client.receive(code, fields, frames)
            return
        for worker in self.workers:
            if worker.identity == identity:
                if worker.alive:  # else lost in the network, as for a dead process
                    worker.receive(code, fields, frames)
                return
        if identity not in self.ever:
            raise UnexpectedMessage(f"{protocol.name_of(code)} to {identity!r}, who never "
                                    f"connected")

    # ------------------------------------------------------------ time and rounds

    def step(self) -> bool:
        """One round of every loop: the broker places and sends, workers work and report.

        Returns whether anything happened."""
        self.broker.on_drained(self.now)
        self.check()
        busy = self.flush()
        for worker in self.workers:
            busy = worker.work() or busy
        return busy

    def run(self, max_rounds=10000):
        """Rounds until nothing happens any more."""
        for _ in range(max_rounds):
            if self.step():
                continue
            due = self.broker.due_at()
            if due is None:
                return
            self.now = max(self.now, due)  # held removals are due (lifecycle.REMOVE_DELAY)
        raise AssertionError(f"still busy after {max_rounds} rounds")

    def advance(self, seconds, step=1.0):
        """Move the clock; live, non-silent workers send a heartbeat every ``step``."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            for worker in self.live_workers():
                worker.send(protocol.encode(protocol.HEARTBEAT))
            self.broker.on_tick(self.now)
            self.check()
            self.run()

    def check(self):
        self.broker.check_invariants()
        for worker in self.live_workers():
            worker.core.check_invariants()

    # ------------------------------------------------------------ the client's view

    def compute(self, tasks, release=True):
        """Submit, run to the end and fetch: the Python values, or raise on a failure."""
        ids = self.client.submit(tasks)
        self.run()
        values = self.gather(ids, release)
        return values

    def gather(self, ids, release=True):
        request = self.client.fetch(ids, release)
        self.run()
        replies = self.client.replies[request]
        missing = [i for i in ids if i not in replies]
        assert not missing, f"no answer for {missing} (failed: {self.client.failed})"
        errors = [replies[i][1] for i in ids if replies[i][1] is not None]
        assert not errors, errors
        return [replies[i][0] for i in ids]

    def messages_named(self, name, sender=None, receiver=None):
        return [fields for s, r, n, fields in self.transcript
                if n == name and (sender is None or s == sender)
                and (receiver is None or r == receiver)]
