"""An example plan on the embedded local cluster: no servers to start by hand.

    python examples/hello.py
"""

from loom.client import Client, tasks


@tasks.py_task()
def shout(text):
    return text.read().upper()


def main():
    with Client() as client:   # no address: starts a local broker and workers for this client
        greeting = tasks.merge((tasks.const("Hello "), tasks.const("world!")))
        print(client.submit_one(greeting).gather())          # b'Hello world!'

        lines = tasks.const("HyperLoom\nDask\nhyperloom\n")
        grep = tasks.run("grep -i loom", stdin=lines)       # an external program
        print(client.submit_one(grep).gather())             # b'HyperLoom\nhyperloom\n'

        print(client.submit_one(shout(greeting)).gather())  # b'HELLO WORLD!'

        stats = client.get_stats()
        print(f"{stats['n_workers']} workers; {stats['n_data_objects']} objects left on them")


if __name__ == "__main__":
    main()
