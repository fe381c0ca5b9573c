"""An example plan on the embedded local cluster: no servers to start by hand.

    python examples/hello.py [--trace DIR]

With ``--trace DIR`` the broker and workers write trace files into DIR; ``loom-report DIR``
then turns them into an HTML report.
"""

import argparse
import os

from loom.client import Client, tasks


@tasks.py_task()
def shout(text):
    return text.read().upper()


def main():
    parser = argparse.ArgumentParser(description="Run an example plan on a local cluster.")
    parser.add_argument("--trace", metavar="DIR", help="write trace files into DIR")
    args = parser.parse_args()
    with Client() as client:   # no address: starts a local broker and workers for this client
        if args.trace:
            client.set_trace(os.path.abspath(args.trace))
        greeting = tasks.merge((tasks.const("Hello "), tasks.const("world!")))
        print(client.submit_one(greeting).gather())          # b'Hello world!'

        lines = tasks.const("HyperLoom\nDask\nhyperloom\n")
        grep = tasks.run("grep -i loom", stdin=lines)       # an external program
        print(client.submit_one(grep).gather())             # b'HyperLoom\nhyperloom\n'

        print(client.submit_one(shout(greeting)).gather())  # b'HELLO WORLD!'

        stats = client.get_stats()
        print(f"{stats['n_workers']} workers; {stats['n_data_objects']} objects left on them")
    if args.trace:  # the cluster has stopped: every trace file is complete
        print(f"traced into {args.trace}; for the report: loom-report {args.trace} -o report.html")


if __name__ == "__main__":
    main()
