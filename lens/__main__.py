"""Command line: ``lens demo`` (also ``python -m lens demo``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lens", description="lens: a hooked transformer for interpretability")
    sub = parser.add_subparsers(dest="command")
    from lens import demo

    demo.add_arguments(sub.add_parser("demo", help=demo.__doc__.splitlines()[0], description=demo.__doc__))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return demo.run(args)


if __name__ == "__main__":
    sys.exit(main())
