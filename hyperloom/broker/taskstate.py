"""The task lifecycle in the broker: states, the data each one owns, transitions.

    WAITING --(all inputs finished)--> READY --(scheduled)--> ASSIGNED
    ASSIGNED --(worker reports)--> FINISHED | FAILED
    ASSIGNED --(given back by a StealTasks)--> READY
    ASSIGNED --(worker lost)--> WAITING                   (inputs counted again)
    READY --(an input's data was lost)--> WAITING
    FINISHED --(data lost with its worker, still needed)--> WAITING
    WAITING | READY --(an input failed)--> FAILED
    WAITING | READY | ASSIGNED --(nobody needs it any more)--> CANCELED
    FINISHED | FAILED | CANCELED --(forgotten)--> RELEASED
    RELEASED --(needed again to recompute lost data)--> WAITING

Data that belongs to one state (``check_invariants`` asserts it):

    WAITING    ``remaining`` > 0 inputs not finished (0 only while being linked)
    ASSIGNED   ``worker``: the WorkerRecord running it (None in every other state)
    FINISHED   ``holders``: the workers holding (or receiving) its data, never empty
    FAILED     ``extra.error``: [failed id, worker address, message]

A node enters the DAG in WAITING; RELEASED nodes are out of it (``tasks``
no longer maps them). Every change goes through ``BrokerState.transition``,
which refuses anything not in TRANSITIONS and is the only place that changes
the per-state counts.

``TaskState`` is an IntEnum and names the states (``TaskState(node.state).name``);
nodes hold, and the hot path uses, the plain int values below. Measured: with
IntEnum members in ``node.state`` a transition cost 0.1 µs more (each list
index goes through ``__index__``), 0.4 µs a task, ~4 % of the broker core's CPU
per task (``python benchmarks/broker_core.py``).
"""

from enum import IntEnum


class TaskState(IntEnum):
    WAITING = 0
    READY = 1
    ASSIGNED = 2
    FINISHED = 3
    FAILED = 4
    CANCELED = 5
    RELEASED = 6


# The values nodes hold: equal to the members (an IntEnum compares as an int).
WAITING, READY, ASSIGNED, FINISHED, FAILED, CANCELED, RELEASED = (int(s) for s in TaskState)

NAMES = tuple(state.name.lower() for state in TaskState)   # indexed by state

TRANSITIONS = {
    WAITING: frozenset({READY, FAILED, CANCELED}),
    READY: frozenset({ASSIGNED, FAILED, CANCELED, WAITING}),
    ASSIGNED: frozenset({FINISHED, FAILED, CANCELED, READY, WAITING}),
    FINISHED: frozenset({RELEASED, WAITING}),
    FAILED: frozenset({RELEASED}),
    CANCELED: frozenset({RELEASED}),
    RELEASED: frozenset({WAITING}),
}

# A table of sets of ints indexed by state, faster on the hot path than a dict.
ALLOWED = tuple(frozenset(int(new) for new in TRANSITIONS[state]) for state in TaskState)

# States whose task may still run (it has not ended).
PENDING = frozenset({WAITING, READY, ASSIGNED})


class IllegalTransition(Exception):
    pass
