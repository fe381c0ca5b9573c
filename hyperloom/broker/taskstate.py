"""The task lifecycle in the broker: states and the allowed transitions.

    WAITING --(all inputs finished)--> READY --(scheduled)--> ASSIGNED
    ASSIGNED --(worker reports)--> FINISHED | FAILED
    ASSIGNED --(worker lost)--> READY | WAITING          (rescheduled)
    FINISHED --(data lost with its worker, still needed)--> READY | WAITING
    WAITING | READY --(an input failed)--> FAILED
    WAITING | READY | ASSIGNED --(nobody needs it any more)--> CANCELED
    FINISHED | FAILED | CANCELED --(forgotten)--> RELEASED

Every change goes through ``BrokerState.transition`` which refuses anything
not in TRANSITIONS.
"""

WAITING, READY, ASSIGNED, FINISHED, FAILED, CANCELED, RELEASED = range(7)

NAMES = ("waiting", "ready", "assigned", "finished", "failed", "canceled", "released")

TRANSITIONS = {
    WAITING: frozenset({READY, FAILED, CANCELED}),
    READY: frozenset({ASSIGNED, FAILED, CANCELED, WAITING}),
    ASSIGNED: frozenset({FINISHED, FAILED, CANCELED, READY, WAITING}),
    FINISHED: frozenset({RELEASED, READY, WAITING}),
    FAILED: frozenset({RELEASED}),
    CANCELED: frozenset({RELEASED}),
    RELEASED: frozenset({READY, WAITING}),  # recomputed from lineage
}

# A table of tuples indexed by state, faster on the hot path than a dict.
ALLOWED = tuple(TRANSITIONS[state] for state in range(len(NAMES)))


class IllegalTransition(Exception):
    pass
