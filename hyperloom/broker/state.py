"""The broker's sans-I/O core: the DAG, reference counts, and event handlers.

Handlers are ``on_<event>(peer, ..., now)``; they change state and append what
must be sent to ``self.outbox``. No sockets, no clocks: the server passes
``now`` in. Placement lives in scheduler.py; this module owns the lifecycle.

Reference counting: ``node.refs`` = unfinished consumers + 1 while the client
holds a future. When it drops to 0 the node is forgotten: its data is removed
from every worker holding it (if finished) or its execution canceled (if not).
"""

from __future__ import annotations

import logging
import os
import sys

from .. import protocol
from . import taskstate as ts
from .model import (ClientState, Node, Outbox, PendingPlan, WorkerState, add_consumer,
                    consumers_of)
from .scheduler import Scheduler
from .snapshot import DashboardFeed

log = logging.getLogger("hyperloom.broker")

# Task types every worker provides; plans may name them before workers join.
BUILTIN_TYPES = frozenset({
    protocol.TASK_CONST, protocol.TASK_MERGE, protocol.TASK_OPEN, protocol.TASK_SPLIT,
    protocol.TASK_SAVE, protocol.TASK_ARRAY_MAKE, protocol.TASK_SIZE, protocol.TASK_LENGTH,
    protocol.TASK_GET, protocol.TASK_SLICE, protocol.TASK_RUN, protocol.TASK_PY_CALL,
    protocol.TASK_PY_VALUE, protocol.TASK_DSLICE, protocol.TASK_DGET,
})


MAX_OVERBOOKING = 64        # core tasks queued per core at most
QUEUE_SECONDS = 0.02        # how much work a fast worker may have queued per core


class PlanError(Exception):
    """A submitted plan that cannot be accepted; the message names the task."""


class BrokerState:
    def __init__(self, overbooking: int = 3, max_task_losses: int = 3):
        self.max_task_losses = max_task_losses
        self.tasks: dict[int, Node] = {}
        self.workers: dict[bytes, WorkerState] = {}
        self.clients: dict[bytes, ClientState] = {}
        self.outbox = Outbox()
        self.scheduler = Scheduler(self, overbooking)
        self.state_counts = [0] * len(ts.NAMES)
        self.next_worker_id = 1
        self.next_client_number = 1
        self.provided_types = set(BUILTIN_TYPES)
        self.tracer = None            # a TraceWriter while the client asked for traces
        # Fetches of unfinished tasks: id -> (client, request, release), one tuple
        # shared by all ids of one Fetch (a list when several fetches wait on one id).
        self.pending_fetches = {}
        self.feed = DashboardFeed()   # what live dashboards ask for (snapshot.py)

    # ------------------------------------------------------------ lifecycle

    def transition(self, node: Node, new_state: int):
        old = node.state
        if new_state not in ts.ALLOWED[old]:
            raise ts.IllegalTransition(
                f"task {node.id}: {ts.NAMES[old]} -> {ts.NAMES[new_state]} is not allowed")
        counts = self.state_counts
        counts[old] -= 1
        counts[new_state] += 1
        node.state = new_state
        # Progress counts each task once: one that must run again (recomputed after a
        # worker loss) is not done any more until it finishes again.
        if (new_state >= ts.FINISHED) != (old >= ts.FINISHED):
            client = node.client
            client.n_done += 1 if new_state >= ts.FINISHED else -1
            self.outbox.progressed.add(client)
            if self.feed.active:
                self.feed.on_task_ended(node, new_state)

    def _add_node(self, node: Node):
        self.tasks[node.id] = node
        self.state_counts[node.state] += 1

    def _forget(self, first: Node):
        """Refs reached 0: drop the node, its data, or its pending execution.

        Canceling a pending node releases its inputs, which may cascade up a
        long chain: iterative, so a million-task chain needs no deep stack.
        """
        stack = [first]
        tasks = self.tasks
        while stack:
            node = stack.pop()
            state = node.state
            if state == ts.FINISHED:
                self._remove_data(node)
            elif state in (ts.WAITING, ts.READY, ts.ASSIGNED):
                self._cancel(node)
                for inp in node.inputs:
                    inp.refs -= 1
                    if inp.refs == 0 and inp.id in tasks:
                        stack.append(inp)
            self.transition(node, ts.RELEASED)
            self.state_counts[ts.RELEASED] -= 1
            del tasks[node.id]

    def _remove_data(self, node: Node):
        holders = node.holders
        if holders:
            size = node.size
            remove = self.outbox.remove
            for worker in holders:
                remove[worker].append(node.id)
                worker.bytes_held -= size
                if worker.incoming:
                    worker.incoming.pop(node.id, None)
            node.holders = None

    def _cancel(self, node: Node):
        if node.state == ts.ASSIGNED:
            worker = node.worker
            self._unassign(node, worker)
            worker.canceled.add(node.id)
            self.outbox.cancel[worker].append(node.id)
        self.transition(node, ts.CANCELED)

    def _drop_inputs(self, node: Node):
        """``node`` will never consume its inputs: release its references."""
        self.drop_inputs(node.inputs)

    def drop_inputs(self, inputs):
        for inp in inputs:
            inp.refs -= 1
            if inp.refs == 0 and inp.id in self.tasks:
                self._forget(inp)

    # ------------------------------------------------------------ plan rewriting (dynamic.py)

    def new_node(self, client, task_type, config, inputs, n_cpus, label) -> Node:
        """A task the broker creates for ``client`` (ids from its reserved range)."""
        task_id = (client.number << protocol.CLIENT_SHIFT) + protocol.BROKER_ID_BASE \
            + client.next_broker_id
        client.next_broker_id += 1
        node = Node(task_id, client, task_type, config, inputs, n_cpus, label)
        self._add_node(node)
        client.n_total += 1
        if self.feed.active:
            self.feed.on_tasks_added((node,))
        if self.tracer is not None:
            self.tracer.tasks_submitted([(task_id, task_type, label, [i.id for i in inputs])])
        return node

    def link(self, node: Node):
        """Register ``node`` as a consumer of its inputs; READY if they are all finished."""
        remaining = 0
        for inp in node.inputs:
            add_consumer(inp, node)
            inp.refs += 1
            if inp.state != ts.FINISHED:
                remaining += 1
        node.remaining = remaining
        if remaining == 0:
            self.make_ready(node)

    def make_ready(self, node: Node):
        self.transition(node, ts.READY)
        self.scheduler.add_ready([node])

    def release_node(self, node: Node):
        """Nobody refers to ``node`` any more (its readers were rewired)."""
        if node.refs == 0 and node.id in self.tasks:
            self._forget(node)

    def fail_task(self, node: Node, message: str):
        self._fail(node, [node.id, "broker", message])

    def _unassign(self, node: Node, worker: WorkerState):
        worker.assigned.pop(node, None)
        if worker.stealing:
            worker.stealing.discard(node.id)
        if node.n_cpus:
            worker.cpus_used -= node.n_cpus
        else:
            worker.n_light -= 1
        node.worker = None

    # ------------------------------------------------------------ peers

    def on_client_hello(self, identity: bytes, version: int, now: float) -> ClientState | None:
        if version != protocol.PROTOCOL_VERSION:
            self._version_mismatch(identity, "client", version)
            return None
        client = ClientState(identity, self.next_client_number, now)
        self.next_client_number += 1
        self.clients[identity] = client
        self.outbox.add_reply((identity, protocol.encode(
            protocol.WELCOME, protocol.PROTOCOL_VERSION, client.number,
            sorted(self.provided_types))))
        log.info("client %d connected", client.number)
        return client

    def on_worker_hello(self, identity, version, cpus, address, task_types, hostname, now):
        if version != protocol.PROTOCOL_VERSION:
            self._version_mismatch(identity, "worker", version)
            return None
        if cpus < 0 or not all(isinstance(t, str) for t in task_types):
            self.outbox.add_error((identity, "HelloWorker: invalid cpus or task types", True))
            return None
        if not protocol.valid_data_address(address):
            self.outbox.add_error(
                (identity, f"HelloWorker: data_address {address!r:.60} is not tcp://HOST:PORT",
                 True))
            return None
        worker = WorkerState(identity, self.next_worker_id, address, cpus, task_types,
                             hostname, now)
        self.next_worker_id += 1
        worker.overbooking = self.scheduler.overbooking
        self.workers[identity] = worker
        self.provided_types.update(task_types)
        self.outbox.add_reply((identity, protocol.encode(
            protocol.WELCOME, protocol.PROTOCOL_VERSION, worker.worker_id, [])))
        if self.tracer is not None:
            self._start_worker_trace(worker)
        log.info("worker %d joined: %s, %d cpus", worker.worker_id, address, cpus)
        self.scheduler.on_worker_joined(worker)
        return worker

    def update_overbooking(self, now: float):
        """Let workers that finish core tasks quickly queue ~QUEUE_SECONDS of them.

        Overbooking hides the round trip to the broker between tasks; 3x cores
        (the original's factor) is plenty for long tasks but leaves 1 ms tasks
        waiting on round trips. Stealing undoes it where it hurts balance.
        """
        base = self.scheduler.overbooking
        for worker in self.workers.values():
            done, since = worker.rate_mark
            if now - since < 0.5:
                continue
            rate = (worker.n_core_finished - done) / (now - since) / max(1, worker.cpus)
            worker.overbooking = max(base, min(MAX_OVERBOOKING, int(rate * QUEUE_SECONDS)))
            worker.rate_mark = (worker.n_core_finished, now)

    def start_trace(self, tracer):
        """Trace from now on: the broker into ``tracer``, every worker into its own file."""
        if self.tracer is not None:
            self.tracer.close()
        self.tracer = tracer
        for worker in self.workers.values():
            self._start_worker_trace(worker)

    def _start_worker_trace(self, worker):
        self.tracer.worker_joined(worker.worker_id, worker.address, worker.cpus)
        self.outbox.add_reply((worker.identity, protocol.encode(
            protocol.START_TRACE, os.path.dirname(self.tracer.path), worker.worker_id)))

    def _version_mismatch(self, identity, kind, version):
        message = (f"protocol version mismatch: this broker speaks version "
                   f"{protocol.PROTOCOL_VERSION}, the {kind} version {version}")
        log.warning("refused a %s: %s", kind, message)
        self.outbox.add_error((identity, message, True))

    def on_client_lost(self, client: ClientState):
        """The client disconnected: cancel its tasks and release its data."""
        del self.clients[client.identity]
        for task_id in list(client.results):
            node = self.tasks.get(task_id)
            if node is not None:
                self._release(node)
        client.results.clear()
        log.info("client %d disconnected; its tasks were released", client.number)

    # ------------------------------------------------------------ client requests

    def on_submit(self, client: ClientState, symbols, labels, entries, load: bool,
                  more: bool = False):
        """Accept a plan (all of it or nothing) and make its ready tasks READY.

        A plan may come in chunks; each is checked and built as it arrives, and
        nothing is linked into the running DAG before the last one.
        """
        plan = client.pending_plan
        if plan is None:
            plan = client.pending_plan = PendingPlan()
        if plan.error is None:
            try:
                self._build_plan(client, plan, symbols, labels, entries, load)
            except PlanError as error:
                plan.error = str(error)
                plan.result_ids = [node.id for node in plan.results]
                plan.nodes = plan.results = None
        if plan.error is not None:  # name every result of the refused plan
            seen = set(plan.result_ids)
            plan.result_ids.extend(e[0] for e in entries if isinstance(e, list) and len(e) > 5
                                   and e[5] and type(e[0]) is int and e[0] not in seen)
        if more:
            return
        client.pending_plan = None
        if plan.error is not None:
            self.outbox.add_refused((client.identity, plan.result_ids, plan.error))
            log.info("client %d: plan refused: %s", client.number, plan.error)
            return
        nodes, results = plan.nodes, plan.results
        if load:
            nodes = _reachable_from(results, nodes)
        self._link_plan(client, nodes, results)
        client.n_total += len(nodes)
        if self.feed.active:
            self.feed.on_tasks_added(nodes.values())
        if self.tracer is not None:
            self.tracer.tasks_submitted(
                (n.id, n.type, n.label, [i.id for i in n.inputs] if n.inputs else ())
                for n in nodes.values())

    def _build_plan(self, client, plan, symbols, labels, entries, load=False):
        """Pass 1: check a chunk and make its nodes, touching no existing state."""
        if not all(label is None or isinstance(label, str) for label in labels):
            raise PlanError("plan labels must be strings")
        plan.symbols.extend(self._intern_symbols(symbols))
        plan.labels.extend(labels)
        types, labels = plan.symbols, plan.labels
        tasks = self.tasks
        new = plan.nodes
        results = plan.results
        low = client.number << protocol.CLIENT_SHIFT
        high = low + protocol.BROKER_ID_BASE
        n_types, n_labels = len(types), len(labels)
        for entry in entries:
            try:
                task_id, type_index, config, input_ids, n_cpus, is_result, label_index = entry[:7]
            except (TypeError, ValueError):
                raise PlanError(f"malformed task entry {entry!r:.80}") from None
            if type(task_id) is not int or not low <= task_id < high:
                raise PlanError(f"task id {task_id!r:.40} is not in this client's range")
            if task_id in new or task_id in tasks:
                raise PlanError(f"task id={task_id - low} is submitted twice")
            if type(type_index) is not int or not 0 <= type_index < n_types:
                raise PlanError(f"task id={task_id - low} has an invalid type index")
            task_type = types[type_index]
            if task_type not in self.provided_types:
                raise PlanError(f"task id={task_id - low} has unknown task type '{task_type}':"
                                f" no connected worker provides it")
            if type(config) is not bytes or type(input_ids) is not list \
                    or type(n_cpus) is not int or n_cpus < 0:
                raise PlanError(f"task id={task_id - low} has a malformed config, inputs or cpus")
            inputs = []
            for input_id in input_ids:
                if type(input_id) is not int:
                    raise PlanError(f"task id={task_id - low} has an input id that is not an "
                                    f"integer: {input_id!r:.30}")
                node = new.get(input_id)
                if node is None:
                    node = tasks.get(input_id)
                    if node is None or node.client is not client:
                        raise PlanError(
                            f"task id={task_id - low} has input id={input_id!r:.20} that is "
                            f"not part of the plan (released, or never submitted)")
                inputs.append(node)
            label = labels[label_index] if type(label_index) is int \
                and 0 <= label_index < n_labels else None
            checkpoint = entry[7] if len(entry) > 7 else None
            if checkpoint is not None and (type(checkpoint) is not str
                                           or not os.path.isabs(checkpoint)):
                raise PlanError(f"task id={task_id - low}: checkpoint path must be absolute")
            if load and checkpoint is not None and os.path.exists(checkpoint):
                # Resume from the checkpoint: open the file instead of computing,
                # and do not plan its inputs for its sake.
                node = Node(task_id, client, protocol.TASK_OPEN, checkpoint.encode(), (), 0,
                            label)
            else:
                node = Node(task_id, client, task_type, config, tuple(inputs), n_cpus, label)
                if checkpoint is not None:
                    node.get_extra().checkpoint_path = checkpoint
            new[task_id] = node
            if is_result:
                results.append(node)

    def _intern_symbols(self, symbols):
        if not all(isinstance(s, str) for s in symbols):
            raise PlanError("plan symbols must be strings")
        return [sys.intern(s) for s in symbols]  # one str per type, however many tasks

    def _link_plan(self, client, nodes: dict, results):
        """Pass 2: wire consumers and reference counts, find what is ready."""
        add = self._add_node
        ready = []
        failed_inputs = []
        for node in nodes.values():
            add(node)
            remaining = 0
            for inp in node.inputs:
                # add_consumer(inp, node), inlined: a call per input cost 0.4 µs, about 2 % of
                # taking in a million-task plan.
                consumers = inp.consumers
                if consumers is None:
                    inp.consumers = node
                elif type(consumers) is Node:
                    inp.consumers = [consumers, node]
                else:
                    consumers.append(node)
                inp.refs += 1
                state = inp.state
                if state != ts.FINISHED:
                    remaining += 1
                    if state == ts.FAILED:
                        failed_inputs.append((node, inp))
            node.remaining = remaining
            if remaining == 0:
                ready.append(node)
        for node in results:
            node.is_result = True
            node.refs += 1
            client.results.add(node.id)
        for node in ready:
            self.transition(node, ts.READY)
        self.scheduler.add_ready(ready)
        for node, inp in failed_inputs:
            if node.state == ts.WAITING:
                self._fail(node, inp.extra.error)
        for node in nodes.values():
            # Neither a result nor anyone's input: nobody could ever use it (a client
            # never sends one; a hand-made plan may). Unforgotten, it would be held forever.
            if node.refs == 0 and node.id in self.tasks:
                self._forget(node)

    def on_release(self, client: ClientState, ids):
        bad = [task_id for task_id in ids if type(task_id) is not int]
        if bad:
            self.outbox.add_error((client.identity, f"Release: ids must be integers, got "
                                                         f"{bad[0]!r:.30}", False))
        for task_id in ids:
            node = self.tasks.get(task_id) if type(task_id) is int else None
            if node is None or node.client is not client or not node.is_result:
                continue  # already released (a Future's __del__ may race a release)
            self._release(node)

    def _release(self, node: Node):
        node.is_result = False
        node.client.results.discard(node.id)
        node.refs -= 1
        for client, request, _ in self._take_fetches(node.id):
            self.outbox.data_errors[(client.identity, request)].append(
                [node.id, None, f"task id={protocol.local_id(node.id)} was released while "
                                f"being fetched"])
        if node.refs == 0:
            self._forget(node)

    def on_fetch(self, client: ClientState, request: int, ids, release: bool):
        waiting = (client, request, release)
        for task_id in ids:
            node = self.tasks.get(task_id) if type(task_id) is int else None
            if node is None or node.client is not client or not node.is_result:
                self.outbox.data_errors[(client.identity, request)].append(
                    [task_id, None, f"Invalid id: {protocol.local_id(task_id) if type(task_id) is int else task_id!r}"
                     " (not a result held by this client; was it released?)"])
                continue
            if node.state in (ts.FINISHED, ts.FAILED):
                self._serve_fetch(node, client, request, release)
            else:
                self._park_fetch(task_id, waiting)

    def _park_fetch(self, task_id, waiting):
        parked = self.pending_fetches.get(task_id)
        if parked is None:
            self.pending_fetches[task_id] = waiting
        elif type(parked) is list:
            parked.append(waiting)
        else:
            self.pending_fetches[task_id] = [parked, waiting]

    def _take_fetches(self, task_id):
        parked = self.pending_fetches.pop(task_id, None)
        if parked is None:
            return ()
        return parked if type(parked) is list else (parked,)

    def _serve_fetch(self, node: Node, client, request, release):
        if node.state == ts.FAILED:
            self.outbox.data_errors[(client.identity, request)].append(
                [node.id, None, node.extra.error])
        elif node.extra is not None and node.extra.inline is not None:
            meta, frames = node.extra.inline
            self.outbox.data_inline[(client.identity, request)].append((node.id, meta, frames))
        else:
            holder = self._confirmed_holder(node)
            self.outbox.uploads[(holder, client.identity, request)].append(node.id)
            holder.uploads.setdefault((client.identity, request), []).append(node.id)
        if release and node.is_result:
            self._release(node)

    def _confirmed_holder(self, node: Node) -> WorkerState:
        for worker in node.holders:
            if node.id not in worker.incoming:
                return worker
        return node.holders[0]

    def on_uploaded(self, worker: WorkerState, client_identity: bytes, request: int,
                    objects, frames):
        """Relay a worker's answer to an Upload as Data to the client that asked.

        Only answers to uploads this broker ordered, of the ids it ordered, go on: a
        confused or hostile worker cannot push data into any client (or worker).
        """
        key = (client_identity, request)
        ordered = worker.uploads.get(key)
        answered = {entry[0] if type(entry) is list and entry and type(entry[0]) is int
                    else None for entry in objects}
        if ordered is None or not answered or not answered.issubset(ordered):
            self._worker_error(worker, f"Uploaded for request {request!r:.20} of "
                                       f"{client_identity!r:.40} answers no Upload of those ids")
            return
        remaining = [task_id for task_id in ordered if task_id not in answered]
        if remaining:
            worker.uploads[key] = remaining
        else:
            del worker.uploads[key]
        if client_identity in self.clients:  # else the client left meanwhile
            self.outbox.add_reply((client_identity, protocol.encode(protocol.DATA, request,
                                                                    objects), *frames))

    def stats(self) -> dict:
        counts = self.state_counts
        return {
            "n_workers": len(self.workers),
            "n_clients": len(self.clients),
            "n_tasks": len(self.tasks),
            "n_data_objects": counts[ts.FINISHED],
            "tasks": {name: counts[i] for i, name in enumerate(ts.NAMES) if i != ts.RELEASED},
            "workers": [{
                "id": w.worker_id, "address": w.address, "hostname": w.hostname,
                "cpus": w.cpus, "cpus_used": w.cpus_used, "running": len(w.assigned),
                "bytes_held": w.bytes_held, "bytes_received": w.bytes_received,
                "bytes_sent": w.bytes_sent, "tasks_finished": w.n_finished,
                "retiring": w.retiring,
            } for w in self.workers.values()],
            "unplaceable": self.scheduler.unplaceable_summary(),
        }

    # ------------------------------------------------------------ worker reports

    def on_tasks_done(self, worker: WorkerState, finished, failed, now: float,
                      results=(), frames=()):
        tasks = self.tasks
        if results:
            self._keep_inline_results(worker, results, frames)
        for entry in finished:
            try:
                task_id, size, length = entry[0], entry[1], entry[2]
            except (TypeError, IndexError, KeyError):
                self._worker_error(worker, f"malformed finished entry {entry!r:.60}")
                continue
            if type(task_id) is not int:
                self._worker_error(worker,
                                   f"malformed finished entry (id not an integer) {entry!r:.60}")
                continue
            node = tasks.get(task_id)
            if node is None or node.worker is not worker or node.state != ts.ASSIGNED:
                self._unexpected_report(worker, task_id, finished=True)
                continue
            if type(size) is not int or type(length) is not int or size < 0 or length < 0:
                self._worker_error(worker, f"task {task_id}: invalid size or length")
                continue
            self._finish(node, worker, size, length)
        for entry in failed:
            try:
                task_id, message = entry[0], str(entry[1])
            except (TypeError, IndexError, KeyError):
                self._worker_error(worker, f"malformed failed entry {entry!r:.60}")
                continue
            if type(task_id) is not int:
                self._worker_error(worker,
                                   f"malformed failed entry (id not an integer) {entry!r:.60}")
                continue
            node = tasks.get(task_id)
            if node is None or node.worker is not worker or node.state != ts.ASSIGNED:
                self._unexpected_report(worker, task_id, finished=False)
                continue
            self._unassign(node, worker)
            self._fail(node, [node.id, worker.address, message])

    def _keep_inline_results(self, worker, results, frames):
        """Small results sent along with TasksDone: kept to answer fetches at once."""
        position = 0
        tasks = self.tasks
        for entry in results:
            try:
                task_id, meta, n_frames = entry
                taken = frames[position:position + n_frames]
                position += n_frames
                if type(task_id) is not int or type(n_frames) is not int:
                    raise TypeError
            except (TypeError, ValueError):
                self._worker_error(worker, f"malformed inline result {entry!r:.60}")
                return
            node = tasks.get(task_id)
            if node is not None and node.worker is worker and node.is_result:
                node.get_extra().inline = (meta, taken)

    def on_tasks_stolen(self, worker: WorkerState, ids):
        """The worker gave back tasks it had not started: place them again."""
        returned = []
        for task_id in ids:
            if type(task_id) is not int:
                self._worker_error(worker, f"malformed stolen id (not an integer): {task_id!r:.30}")
                continue
            node = self.tasks.get(task_id)
            if node is None or node.worker is not worker or task_id not in worker.stealing:
                if task_id not in worker.canceled:
                    self._worker_error(worker, f"task {task_id!r:.30} was not asked back")
                worker.canceled.discard(task_id)
                continue
            worker.stealing.discard(task_id)
            self._unassign(node, worker)
            self.transition(node, ts.READY)
            returned.append(node)
        self.scheduler.ready.extendleft(reversed(returned))

    def _unexpected_report(self, worker, task_id, finished):
        if task_id in worker.canceled:
            worker.canceled.discard(task_id)
            if finished:  # its result is unwanted: delete it on the worker
                self.outbox.remove[worker].append(task_id)
            return
        self._worker_error(worker, f"task {task_id!r:.30} was never assigned to this worker")

    def _worker_error(self, worker, message):
        log.warning("worker %d: %s", worker.worker_id, message)
        self.outbox.add_error((worker.identity, message, False))

    def _finish(self, node: Node, worker: WorkerState, size: int, length: int):
        self._unassign(node, worker)
        if worker.incoming:  # its inputs did arrive: they are real copies now
            for inp in node.inputs:
                worker.incoming.pop(inp.id, None)
        self.transition(node, ts.FINISHED)
        node.size = size
        node.length = length
        node.holders = [worker]
        worker.bytes_held += size
        worker.n_finished += 1
        if node.n_cpus:
            worker.n_core_finished += 1
        consumers = node.consumers
        if consumers is not None:
            if type(consumers) is Node:
                consumers = (consumers,)
            ready = None
            for consumer in consumers:
                if consumer.state == ts.ASSIGNED:
                    # Recomputed after a loss: the consumer already waits on its worker.
                    self.scheduler.deliver(node, consumer.worker)
                    continue
                consumer.remaining -= 1
                if consumer.remaining == 0 and consumer.state == ts.WAITING:
                    self.transition(consumer, ts.READY)
                    if ready is None:
                        ready = [consumer]
                    else:
                        ready.append(consumer)
            if ready:
                self.scheduler.add_ready(ready)
        for inp in node.inputs:
            inp.refs -= 1
            if inp.refs == 0:
                self._forget(inp)
        if node.is_result:
            self.outbox.finished[node.client].append(node.id)
            if self.pending_fetches:
                for client, request, release in self._take_fetches(node.id):
                    self._serve_fetch(node, client, request, release)
        if node.refs == 0 and node.id in self.tasks:
            self._forget(node)

    def _fail(self, root: Node, error):
        """``root`` failed: it and everything waiting on it fail with ``error``."""
        self.feed.on_failed(root, error)
        stack = [root]
        while stack:
            node = stack.pop()
            if node.state not in (ts.WAITING, ts.READY, ts.ASSIGNED):
                continue
            self.transition(node, ts.FAILED)
            node.get_extra().error = error
            self._drop_inputs(node)
            if node.is_result:
                self.outbox.failed[node.client].append([node.id, *error])
                for client, request, release in self._take_fetches(node.id):
                    self._serve_fetch(node, client, request, release)
            stack.extend(consumers_of(node))
            if node.refs == 0 and node.id in self.tasks:
                self._forget(node)

    # ------------------------------------------------------------ worker loss

    def on_worker_lost(self, worker: WorkerState):
        """Reschedule what ran there; recompute lost data that is still needed."""
        del self.workers[worker.identity]
        self._drop_outbox_for(worker)
        self._report_peer_gone(worker)
        ready = []
        for node in list(worker.assigned):
            self._unassign(node, worker)
            extra = node.get_extra()
            extra.losses += 1
            if extra.losses >= self.max_task_losses:
                self._fail(node, [node.id, worker.address,
                                  f"Worker lost while running this task "
                                  f"{extra.losses} times; giving up"])
            else:
                self.transition(node, ts.WAITING)
                ready.append(node)
        undelivered = self._void_transfers_from(worker)
        lost = []
        for node in self.tasks.values():
            holders = node.holders
            if holders is not None and worker in holders:
                holders.remove(worker)
            if holders is not None and not holders:
                node.holders = None
                if node.state == ts.FINISHED:
                    lost.append(node)
        for node in lost:
            self._recompute(node)
        for node, target in undelivered:
            if node.holders and target.identity in self.workers:
                self.scheduler.deliver(node, target)  # again, from a live holder
        self._redo_uploads(worker)
        for node in ready:  # their inputs may have been lost too: count again
            if node.state == ts.WAITING:
                self._reacquire_inputs(node, refs=False)
        if lost:
            log.info("worker %d held %d needed objects; recomputing them",
                     worker.worker_id, len(lost))

    def _void_transfers_from(self, lost_worker):
        """Copies the lost worker was still to send will never arrive."""
        undelivered = []
        for worker in self.workers.values():
            if not worker.incoming:
                continue
            for data_id in [d for d, s in worker.incoming.items() if s is lost_worker]:
                del worker.incoming[data_id]
                node = self.tasks.get(data_id)
                if node is not None and node.holders and worker in node.holders:
                    node.holders.remove(worker)
                    worker.bytes_held -= node.size
                    undelivered.append((node, worker))
        return undelivered

    def _redo_uploads(self, lost_worker):
        """Fetches the lost worker was to answer: serve them again (or after recompute)."""
        for (client_identity, request), ids in lost_worker.uploads.items():
            client = self.clients.get(client_identity)
            for task_id in ids:
                node = self.tasks.get(task_id)
                if client is None or node is None:
                    continue
                if node.state == ts.FINISHED:
                    self._serve_fetch(node, client, request, False)
                else:
                    self._park_fetch(task_id, (client, request, False))
        lost_worker.uploads.clear()

    def _report_peer_gone(self, worker):
        """The other workers close their data channel to it (PeersGone), unless it came
        back at the same address first (re-registered before its old connection's loss
        was seen): that channel serves the new registration."""
        address = worker.address
        if any(other.address == address for other in self.workers.values()):
            return
        self.outbox.peers_gone.append(address)
        for targets in self.outbox.sends.values():  # pushes to it would reopen the channel
            targets.pop(address, None)

    def _drop_outbox_for(self, worker):
        """Nothing queued for a lost worker may be sent; queued fetches are redone."""
        out = self.outbox
        for batch in (out.compute, out.sends, out.cancel, out.remove):
            batch.pop(worker, None)
        for key in [key for key in out.uploads if key[0] is worker]:
            _, client_identity, request = key
            client = self.clients.get(client_identity)
            for task_id in out.uploads.pop(key):
                node = self.tasks.get(task_id)
                if client is not None and node is not None:
                    self._park_fetch(task_id, (client, request, False))

    def _recompute(self, first: Node):
        """Data of ``first`` is gone but needed: compute it again from its lineage."""
        stack = [first]
        while stack:
            node = stack.pop()
            if node.state == ts.RELEASED:
                self.state_counts[ts.RELEASED] += 1  # forgotten nodes are not counted
                self.transition(node, ts.WAITING)
                self.tasks[node.id] = node
            elif node.state == ts.FINISHED:
                self.transition(node, ts.WAITING)
                for consumer in consumers_of(node):
                    if consumer.state in (ts.WAITING, ts.READY):
                        consumer.remaining += 1
                        if consumer.state == ts.READY:
                            self.transition(consumer, ts.WAITING)
            else:
                continue
            stack.extend(self._reacquire_inputs(node, refs=True))

    def _reacquire_inputs(self, node: Node, refs: bool):
        """Count ``node``'s missing inputs; return those that must be recomputed."""
        missing = []
        remaining = 0
        for inp in node.inputs:
            if refs:
                inp.refs += 1
            if inp.state == ts.FINISHED and inp.holders:
                continue
            remaining += 1
            if inp.state in (ts.RELEASED, ts.FINISHED):
                missing.append(inp)
        node.remaining = remaining
        if remaining == 0:
            self.transition(node, ts.READY)
            self.scheduler.add_ready([node])
        return missing

    # ------------------------------------------------------------ invariants

    def check_invariants(self):
        """Assert the bookkeeping agrees with itself (tests call this)."""
        counts = [0] * len(ts.NAMES)
        for task_id, node in self.tasks.items():
            assert node.id == task_id
            counts[node.state] += 1
            assert node.refs > 0, f"{node} is held with no references"
            if node.state == ts.ASSIGNED:
                assert node in node.worker.assigned
            if node.state == ts.FINISHED:
                assert node.holders, f"{node} finished but held nowhere"
            live = sum(1 for c in consumers_of(node)
                       if c.state in (ts.WAITING, ts.READY, ts.ASSIGNED))
            assert node.refs == live + node.is_result, f"{node}: refs {node.refs} != {live}"
        assert counts[:ts.RELEASED] == self.state_counts[:ts.RELEASED], \
            (counts, self.state_counts)
        for worker in self.workers.values():
            assert worker.cpus_used == sum(n.n_cpus for n in worker.assigned)
            assert worker.n_light == sum(1 for n in worker.assigned if not n.n_cpus)


def _reachable_from(results, nodes: dict) -> dict:
    """The part of a new plan that results still need (after checkpoint loading)."""
    keep = {}
    stack = list(results)
    while stack:
        node = stack.pop()
        if node.id in keep or node.id not in nodes:
            continue
        keep[node.id] = node
        stack.extend(node.inputs)
    return {task_id: node for task_id, node in nodes.items() if task_id in keep}

