"""``python -m loom.lore TRACE_DIR``: the original HyperLoom's report command, kept as an alias.

It writes ``output.html`` like the original did; everything is done by ``hyperloom.report``.
"""

from hyperloom.report import main

if __name__ == "__main__":
    raise SystemExit(main())
