"""The ``planlagt conformance`` command: run the backend conformance suite against one URL."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]

MISSING_PYTEST_STATUS = 2
MISSING_PYTEST_MESSAGE = (
    'planlagt conformance needs pytest, which is not installed; install it with `pip install "planlagt[conformance]"`'
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="planlagt conformance",
        description=(
            "Run planlagt's backend contract cases against a backend URL. The cases write "
            "under random prefixes and leave some records behind: use a server or database kept for testing."
        ),
    )
    parser.add_argument("url", metavar="URL", help="backend URL to test, for example redis://localhost:6379/15")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON object with every case's outcome on standard output; pytest's report goes to standard error",
    )
    parser.add_argument(
        "-k", dest="pattern", metavar="PATTERN", help="run only cases matching this pytest -k expression"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="list every case as it runs")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the suite as ``planlagt conformance`` would and return its exit status.

    Returns 0 when every selected case passed or was skipped, 1 when any failed, and 2 for
    an invalid URL or when pytest is not installed.
    """
    args = build_parser().parse_args(argv)

    try:
        import pytest  # noqa: F401 - only checks that the suite can run
    except ImportError:
        print(MISSING_PYTEST_MESSAGE, file=sys.stderr)
        return MISSING_PYTEST_STATUS

    from planlagt_conformance import run

    return run(args.url, json=args.json, pattern=args.pattern, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
