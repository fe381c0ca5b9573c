"""The trace file format's constants, shared by the writer and the reader.

The format is specified in ``docs/trace-format.md``; in short: a msgpack stream whose
first object is a header map, followed by *blocks*, each holding many events of one kind
as one flat array of integers (strings are indices into a table the file defines).
"""

from __future__ import annotations

FORMAT_NAME = "hyperloom-trace"
FORMAT_VERSION = 2
SUFFIX = ".ltrace"
BROKER_NAME = "broker"
STRINGS = "$"  # the kind of the blocks that define strings

# The integer fields of each kind's events, in order.  The first is always the time (the
# writer's monotonic clock in ns; the header's clock_ns/wall_ns place it on the wall clock).
# "name$": an index into the file's string table, -1 for none.  "name*": how many integers
# of the block's extra list belong to this event (its cpu ids, its inputs).
SCHEMAS = {
    "W": ("t", "worker", "cpus", "address$"),
    "T": ("t", "task", "type$", "label$", "inputs*"),
    "S": ("t", "task", "cpus*"),
    "F": ("t", "task", "size", "ok"),
    "X": ("t", "task", "end", "size", "ok", "cpus*"),
    "D": ("t", "data", "bytes", "target$"),
    "R": ("t", "data", "bytes", "duration", "source$"),
    "M": ("t", "cpu_tenths", "memory"),
}


def label_group(label: str) -> str:
    """A label's colour group: the prefix before the first ':' (whole label if none), stripped."""
    return label.split(":", 1)[0].strip()
