"""Plan intake: check a submitted plan (whole or in chunks) and link it into the DAG.

A mixin of ``BrokerState``. A plan is accepted whole or refused whole: each
chunk is checked and built as it arrives (pass 1, touching no existing
state), and linked into the running DAG after the last one (pass 2).

Checkpoints: with ``load``, a task whose checkpoint file exists is replaced by
``open`` of that file and its inputs are not planned for its sake. Whether
the file exists is asked through ``checkpoint_exists``, a function given to
the core (the server passes ``os.path.exists``): the answer decides which
tasks exist at all, so it is needed while the plan is taken in.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

from .base import CoreBase
from .. import protocol
from . import taskstate as ts
from .model import ClientRecord, Node, PendingPlan

log = logging.getLogger("hyperloom.broker")


class PlanError(Exception):
    """A submitted plan that cannot be accepted; the message names the task."""


class PlanIntake(CoreBase):
    def on_submit(self, client: ClientRecord, symbols: list[Any], labels: list[Any],
                  entries: list[Any], load: bool, more: bool = False) -> None:
        """Accept a plan (all of it or nothing) and make its ready tasks READY.

        A plan may come in chunks; each is checked and built as it arrives, and
        nothing is linked into the running DAG before the last one. The fields are as
        msgpack decoded them (SubmitTask entries as lists): checked here.
        """
        plan = client.pending_plan
        if plan is None:
            plan = client.pending_plan = PendingPlan()
        if plan.error is None:
            try:
                self._build_plan(client, plan, symbols, labels, entries, load)
            except PlanError as error:
                plan.error = str(error)
                plan.result_ids = [node.id for node in plan.results or ()]
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
        assert nodes is not None and results is not None  # not refused
        if self.journaling and nodes:  # what a resumed client need not send again
            self._accepted(client, nodes)
        if load:
            nodes = _reachable_from(results, nodes)
        self._link_plan(client, nodes, results)
        client.n_total += len(nodes)
        if self.feed.active:
            self.feed.on_tasks_added(nodes.values())
        if self.tracing:
            self.recorder.tasks_submitted(
                (n.id, n.type, n.label, [i.id for i in n.inputs] if n.inputs else ())
                for n in nodes.values())

    def on_abandon_plan(self, client: ClientRecord) -> None:
        """The client stopped submitting its chunked plan midway: the chunks it sent are
        dropped, so its next plan starts afresh instead of extending this one's tables."""
        if self.drop_pending_plan(client):
            log.info("client %d abandoned the plan it was submitting", client.number)

    def drop_pending_plan(self, client: ClientRecord) -> bool:
        """Drop the chunks of a plan whose last chunk has not come (abandoned, or cut by a
        dropped connection), journaled as a cut, which replay drops the same way."""
        if client.pending_plan is None:
            return False
        client.pending_plan = None
        self.journal.plan_cut(client.number)
        return True

    def _accepted(self, client: ClientRecord, nodes: dict[int, Node]) -> None:
        """Its plans' ids grow: what a resumed client need not send again is below the
        highest id taken in (Accepted). Only ids the client chose count: a compacted
        journal's plan also holds tasks the broker made for it (dslice, from the top half
        of its range), which would cover plans it never got."""
        top = max(nodes)
        broker_made = (client.number << protocol.CLIENT_SHIFT) + protocol.BROKER_ID_BASE
        if top >= broker_made:
            top = max((i for i in nodes if i < broker_made), default=-1)
        if top >= client.accepted_until:
            client.accepted_until = top + 1
        self.accepted_owed.setdefault(client, None)   # sent a while later (sessions.py)

    def _build_plan(self, client: ClientRecord, plan: PendingPlan, symbols: list[Any],
                    labels: list[Any], entries: list[Any], load: bool = False) -> None:
        """Pass 1: check a chunk and make its nodes, touching no existing state.

        One loop over every entry, kept whole on purpose: it runs a million times for
        a million-task plan, and a helper call per entry would cost ~2 % of intake."""
        if not all(label is None or isinstance(label, str) for label in labels):
            raise PlanError("plan labels must be strings")
        plan.symbols.extend(self._intern_symbols(symbols))
        plan.labels.extend(labels)
        types, labels = plan.symbols, plan.labels
        tasks = self.tasks
        new = plan.nodes
        results = plan.results
        assert new is not None and results is not None  # a refused plan builds nothing
        low = client.number << protocol.CLIENT_SHIFT
        # (a compacted journal's plan holds the tasks the broker made too: restore.py)
        high = low + (1 << protocol.CLIENT_SHIFT if self.replaying else protocol.BROKER_ID_BASE)
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
            if checkpoint is None:
                node = Node(task_id, client, task_type, config, tuple(inputs), n_cpus, label)
            else:
                node = self._checkpointed_node(client, task_id - low, entry, task_type,
                                               tuple(inputs), label, checkpoint, load)
            new[task_id] = node
            if is_result:
                results.append(node)

    def _checkpointed_node(self, client: ClientRecord, local_id: int, entry: list[Any],
                           task_type: str, inputs: tuple[Node, ...], label: str | None,
                           checkpoint: object, load: bool) -> Node:
        if type(checkpoint) is not str or not os.path.isabs(checkpoint):
            raise PlanError(f"task id={local_id}: checkpoint path must be absolute")
        task_id, _, config, _, n_cpus = entry[:5]
        if load and self.checkpoint_exists(checkpoint):
            # Resume from the checkpoint: open the file instead of computing,
            # and do not plan its inputs for its sake.
            return Node(task_id, client, protocol.TASK_OPEN, checkpoint.encode(), (), 0, label)
        node = Node(task_id, client, task_type, config, inputs, n_cpus, label)
        node.get_extra().checkpoint_path = checkpoint
        return node

    def _intern_symbols(self, symbols: list[Any]) -> list[str]:
        if not all(isinstance(s, str) for s in symbols):
            raise PlanError("plan symbols must be strings")
        return [sys.intern(s) for s in symbols]  # one str per type, however many tasks

    def _link_plan(self, client: ClientRecord, nodes: dict[int, Node],
                   results: list[Node]) -> None:
        """Pass 2: wire consumers and reference counts, find what is ready."""
        tasks = self.tasks
        ready = []
        failed_inputs = []
        for node in nodes.values():
            tasks[node.id] = node  # enters WAITING: counted by state_counts without a move
            remaining = 0
            for inp in node.inputs:
                # add_consumer(inp, node), inlined: a call per input cost 0.4 µs, about 2 % of
                # taking in a million-task plan.
                consumers = inp.consumers
                if consumers is None:
                    inp.consumers = node
                elif type(consumers) is Node:
                    inp.consumers = [consumers, node]
                else:  # a list (mypy does not narrow on ``type(x) is``)
                    consumers.append(node)  # type: ignore[union-attr]
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
        self.add_ready(ready)
        for node, inp in failed_inputs:
            if node.state == ts.WAITING:
                assert inp.extra is not None and inp.extra.error is not None  # FAILED
                self._fail(node, inp.extra.error)
        for node in nodes.values():
            # Neither a result nor anyone's input: nobody could ever use it (a client
            # never sends one; a hand-made plan may). Unforgotten, it would be held forever.
            if node.refs == 0 and node.id in self.tasks:
                self._forget(node)


def _reachable_from(results: Iterable[Node], nodes: dict[int, Node]) -> dict[int, Node]:
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

