"""``python -m hyperloom.trace PATH``: print a trace file (or a directory of them) as text."""

import argparse
import sys

from .reader import dump


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hyperloom.trace", description=dump.__doc__)
    parser.add_argument("path", help="a .ltrace file or a directory given to set_trace")
    try:
        dump(parser.parse_args(argv).path)
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
