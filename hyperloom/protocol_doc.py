"""docs/protocol.md's tables, generated from hyperloom.protocol so the two cannot drift.

``python -m hyperloom.protocol_doc docs/protocol.md`` rewrites the generated sections
(between ``<!-- generated:NAME -->`` and ``<!-- end:NAME -->``); without an argument it
prints them. tests/unit/test_protocol_and_data.py checks the document is up to date.
"""

from __future__ import annotations

import inspect
import re
import sys
from typing import Any

from . import protocol


def _field_type(message: protocol.Message, name: str, types: tuple[type, ...]) -> str:
    item = message.items.get(name)
    if item is not None:
        return f"list of {item.__name__}"
    return "/".join(t.__name__ for t in types)


def messages_table() -> str:
    rows = ["| message | code | direction | fields | payload frames | expected answer |",
            "| --- | --- | --- | --- | --- | --- |"]
    for message in protocol.MESSAGES:
        fields = ", ".join(f"{name}: {_field_type(message, name, types)}"
                           for name, types in message.fields) or "—"
        cells = (message.name, str(message.code), message.direction, fields, message.frames,
                 message.answer)
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def _records() -> dict[Any, list[str]]:
    seen: dict[Any, list[str]] = {}
    for message in protocol.MESSAGES:
        for name, item in message.items.items():
            if isinstance(item, type) and issubclass(item, tuple):
                seen.setdefault(item, []).append(f"{message.name}.{name}")
    return seen


def _field_comments(record: type) -> dict[str, str]:
    """The ``# comment`` after each field in the record's source: its description."""
    comments = {}
    for line in inspect.getsource(record).splitlines():
        match = re.match(r"\s+(\w+): [^#]+#\s*(.*)$", line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return comments


def entries_tables() -> str:
    parts = []
    for record, used_in in _records().items():
        doc = " ".join(record.__doc__.split())
        parts.append(f"### {record.__name__} (in {', '.join(used_in)})\n\n{doc}\n")
        parts.append("| # | field | type | meaning |\n| --- | --- | --- | --- |")
        comments = _field_comments(record)
        for position, name in enumerate(record._fields):
            hint = protocol.type_name(protocol.field_types(record)[name])
            parts.append(f"| {position} | {name} | {hint} | {comments.get(name, '')} |")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


SECTIONS = {"messages": messages_table, "entries": entries_tables}


def _replacement(text: str) -> Any:
    return lambda match: match.group(1) + text + match.group(2)


def render(document: str) -> str:
    """``document`` with every generated section replaced by its current text."""
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(\n<!-- end:{name} -->)", re.S)
        if not pattern.search(document):
            raise ValueError(f"the document has no generated:{name} section")
        document = pattern.sub(_replacement(make().rstrip("\n")), document)
    version = protocol.PROTOCOL_VERSION   # named in the title and in the first rule
    document = re.sub(r"^(# .*\(version )\d+\)", rf"\g<1>{version})", document, count=1,
                      flags=re.M)
    return re.sub(r"(`version == )\d+`", rf"\g<1>{version}`", document, count=1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        for make in SECTIONS.values():
            print(make())
        return 0
    with open(argv[0], encoding="utf-8") as f:
        text = f.read()
    with open(argv[0], "w", encoding="utf-8") as f:
        f.write(render(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
