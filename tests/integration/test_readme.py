"""The README's Python examples run, against a real local cluster."""

import os
import re

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def python_blocks():
    with open(README) as f:
        text = f.read()
    return [block for block in re.findall(r"```python\n(.*?)```", text, re.S)
            if "/shared/" not in block]   # the tracing snippet names a shared file system


def test_readme_python_examples_run(shared_cluster, capsys):
    namespace = {}
    for block in python_blocks():
        code = block.replace('Client("localhost", 9010)',
                             f'Client({shared_cluster.host!r}, {shared_cluster.port})')
        exec(compile(code, README, "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "b'Hello world!'",
        "[b'a', b'b', b'a!']",
        "[b'HyperLoom\\n', b'AB', [b'x\\n', b'y\\n']]",
        "b'Hello world'",
        "b'ABCABC'",
    ]
    namespace["client"].close()
