"""Client requests: Release, Fetch (and the Upload/Uploaded relay serving it), stats.

A mixin of ``BrokerState``. A fetch of a finished result is answered at once
(its small value kept from TasksDone, or an Upload ordered from a holder whose
Uploaded the broker relays as Data); a fetch of an unfinished one is parked
until the task ends.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .base import CoreBase, Fetch
from .. import protocol
from . import taskstate as ts
from .model import ClientRecord, Node, WorkerRecord
from .scheduler import why_unplaceable

log = logging.getLogger("hyperloom.broker")


class ClientRequests(CoreBase):
    def on_client_lost(self, client: ClientRecord) -> None:
        """The client disconnected: cancel its tasks and release its data."""
        del self.clients[client.identity]
        self.peers.pop(client.identity, None)
        for task_id in list(client.results):
            node = self.tasks.get(task_id)
            if node is not None:
                self._release(node)
        client.results.clear()
        log.info("client %d disconnected; its tasks were released", client.number)

    def on_release(self, client: ClientRecord, ids: list[Any], field: str = "Release") -> None:
        bad = [task_id for task_id in ids if type(task_id) is not int]
        if bad:
            self.outbox.add_error((client.identity, f"{field}: ids must be integers, got "
                                                         f"{bad[0]!r:.30}", False))
        for task_id in ids:
            node = self.tasks.get(task_id) if type(task_id) is int else None
            if node is None or node.client is not client or not node.is_result:
                continue  # already released (a Future's __del__ may race a release)
            self._release(node)

    def _release(self, node: Node) -> None:
        self.journal.released(node.id)
        node.is_result = False
        node.client.results.discard(node.id)
        node.refs -= 1
        for client, request, _ in self._take_fetches(node.id):
            self.outbox.data_errors[(client.identity, request)].append(
                [node.id, None, f"task id={protocol.local_id(node.id)} was released while "
                                f"being fetched"])
        if node.refs == 0:
            self._forget(node)

    def on_fetch(self, client: ClientRecord, request: int, ids: list[Any],
                 release: bool, lane: bool = False) -> None:
        client.lane = lane   # its latest word: a client that failed to reach a lane says no
        waiting = (client, request, release)
        for task_id in ids:
            node = self.tasks.get(task_id) if type(task_id) is int else None
            if node is None or node.client is not client or not node.is_result:
                shown = protocol.local_id(task_id) if type(task_id) is int else repr(task_id)
                self.outbox.data_errors[(client.identity, request)].append(
                    [task_id, None, f"Invalid id: {shown}"
                     " (not a result held by this client; was it released?)"])
                continue
            if node.state == ts.FAILED or (node.state == ts.FINISHED and not self.restoring):
                self._serve_fetch(node, client, request, release)
            else:
                self._park_fetch(task_id, waiting)

    def _park_fetch(self, task_id: int, waiting: Fetch) -> None:
        parked = self.pending_fetches.get(task_id)
        if parked is None:
            self.pending_fetches[task_id] = waiting
        elif type(parked) is list:
            parked.append(waiting)
        else:
            # (a Fetch: mypy does not narrow on ``type(x) is``)
            self.pending_fetches[task_id] = [parked, waiting]  # type: ignore[list-item]

    def _take_fetches(self, task_id: int) -> Sequence[Fetch]:
        parked = self.pending_fetches.pop(task_id, None)
        if parked is None:
            return ()
        return parked if type(parked) is list else (parked,)  # type: ignore[return-value]

    def _serve_fetch(self, node: Node, client: ClientRecord, request: int,
                     release: bool) -> None:
        if node.state == ts.FAILED:
            assert node.extra is not None  # FAILED: it holds the error (taskstate.py)
            self.outbox.data_errors[(client.identity, request)].append(
                [node.id, None, node.extra.error])
        elif node.extra is not None and node.extra.inline is not None:
            meta, frames = node.extra.inline
            self.outbox.data_inline[(client.identity, request)].append((node.id, meta, frames))
        else:
            holder = self._confirmed_holder(node)
            self.outbox.uploads[(holder, client.identity, request, client.lane)].append(node.id)
            holder.uploads.setdefault((client.identity, request), []).append(node.id)
        if release and node.is_result:
            self._release(node)

    def _confirmed_holder(self, node: Node) -> WorkerRecord:
        holders = node.holders
        assert holders, f"{node} is fetched but held nowhere"
        for worker in holders:
            if node.id not in worker.incoming:
                return worker
        return holders[0]

    def on_uploaded(self, worker: WorkerRecord, client_identity: bytes, request: int,
                    objects: list[Any], offer: list[Any] | None,
                    frames: Sequence[Any]) -> None:
        """Relay a worker's answer to an Upload as Data to the client that asked (with
        the worker's bulk-lane offer of the frames, if it made one).

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
        if offer is not None and (frames or not protocol.is_lane_offer(offer)):
            self._worker_error(worker, f"Uploaded for request {request!r:.20}: a malformed "
                                       f"offer {offer!r:.60} (or frames beside it)")
            return
        remaining = [task_id for task_id in ordered if task_id not in answered]
        if remaining:
            worker.uploads[key] = remaining
        else:
            del worker.uploads[key]
        if client_identity in self.clients:  # else the client left meanwhile
            self.outbox.add_reply((client_identity, protocol.encode(protocol.DATA, request,
                                                                    objects, offer), *frames))

    def stats(self) -> dict[str, Any]:
        counts = self.state_counts
        stats = self._stats(counts)
        if self.journaling:
            stats["journal"] = self.journal_stats()
        return stats

    def _stats(self, counts: list[int]) -> dict[str, Any]:
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
            "unplaceable": [{"id": node.id, "n_cpus": node.n_cpus, "type": node.type,
                             "reason": why_unplaceable(node, self.workers.values())}
                            for node in self.unplaceable if node.state == ts.READY],
        }
