"""Trace files: the batched binary writer each process uses, and the reader that merges them.

Each process (the broker, every worker) owns one ``<name>.ltrace`` file in a shared trace
directory and is the only writer of it (``writer.py``); ``read_trace`` merges a
directory's files into one time-aligned ``Trace`` (``reader.py``, ``model.py``);
``format.py`` holds what both agree on (the format is specified in ``docs/trace-format.md``).
``python -m hyperloom.trace PATH`` prints a file (or a directory of them) as text, an
event a line.
"""

from .format import (BROKER_NAME, FORMAT_NAME, FORMAT_VERSION, SCHEMAS, STRINGS, SUFFIX,
                     label_group)
from .model import Sample, Trace, TracedTask, TracedWorker, Transfer
from .reader import TraceFile, dump, read_file, read_trace, worker_id_of
from .writer import TraceWriter

__all__ = [
    "BROKER_NAME", "FORMAT_NAME", "FORMAT_VERSION", "SCHEMAS", "STRINGS", "SUFFIX",
    "Sample", "Trace", "TraceFile", "TraceWriter", "TracedTask", "TracedWorker", "Transfer",
    "dump", "label_group", "read_file", "read_trace", "worker_id_of",
]
