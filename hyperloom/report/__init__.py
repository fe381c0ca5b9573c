"""The HTML report (``loom-report`` / ``python -m hyperloom.report TRACE_DIR``): CLI entry point.

Reads a trace directory written by the broker and workers (see ``hyperloom.trace``) and writes one
self-contained HTML file that needs neither a server nor the network to open.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional
from collections.abc import Sequence

from hyperloom.errors import LoomException
from hyperloom.trace import read_trace

DEFAULT_OUTPUT = "output.html"  # the name the original's `python3 -m loom.lore` used


class MissingExtra(LoomException, ImportError):
    """An optional dependency of the report is not installed; the message says how to get it."""


def write_report(trace_dir: str, output: str = DEFAULT_OUTPUT, title: Optional[str] = None) -> dict:
    """Render the report of ``trace_dir`` into ``output``; returns the embedded summary."""
    # Imported here so that `hyperloom.trace` users never pay for importing Bokeh, and a
    # runtime installed without the report extra still says what is missing.
    try:
        from hyperloom.report import page, stats
    except ImportError as error:
        raise MissingExtra(f"the report needs Bokeh, which is not installed ({error}); "
                           f"install it with: pip install 'hyperloom[report]'") from None

    trace = read_trace(trace_dir)
    title = title or f"hyperloom report: {os.path.basename(os.path.abspath(trace_dir))}"
    summary = stats.summary(trace)
    text = page.build_html(trace, title, summary)
    with open(output, "w", encoding="utf-8") as file:
        file.write(text)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="loom-report",
        description="Write a self-contained HTML report of a hyperloom trace directory.")
    parser.add_argument("trace_dir", metavar="TRACE_DIR",
                        help="directory given to Client.set_trace (holds *.ltrace files)")
    parser.add_argument("-o", "--output", default=DEFAULT_OUTPUT,
                        help=f"HTML file to write (default: ./{DEFAULT_OUTPUT})")
    parser.add_argument("--title", help="page title (default: derived from TRACE_DIR)")
    args = parser.parse_args(argv)
    try:
        summary = write_report(args.trace_dir, args.output, args.title)
    except (OSError, ValueError, MissingExtra) as error:
        print(f"loom-report: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {summary['n_tasks']} tasks on {summary['n_workers']} workers")
    return 0
