"""Command line: ``lens demo`` (also ``python -m lens demo``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lens", description="lens: a hooked transformer for interpretability")
    sub = parser.add_subparsers(dest="command")
    from lens import demo

    demo_parser = sub.add_parser("demo", help=demo.__doc__.splitlines()[0], description=demo.__doc__)
    demo.add_arguments(demo_parser)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return demo.run(args)
    except demo.UsageError as e:  # a bad value found after parsing: the same usage error, exit code 2
        demo_parser.error(str(e))


if __name__ == "__main__":
    sys.exit(main())
