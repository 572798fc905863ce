#!/usr/bin/env python3
# -*- test-case-name: tests.test_demo -*-
"""`make demo`: sync two throwaway local Dovecot stores with the real command.

Run with the project's virtualenv (`make demo` creates it); ``--keep``
keeps the stores, config file and database for a look afterwards.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path


def main() -> int:
    # Run as a script, only demo/ is on sys.path: the demo and the Dovecot
    # harness (tests/dovecot.py) are imported from the repository root.
    repository = str(Path(__file__).resolve().parent.parent)
    if repository not in sys.path:
        sys.path.insert(0, repository)
    # Output goes to a terminal or a CI log as it happens, in any locale.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True, errors="backslashreplace")
    try:
        from demo.scenario import main as demo_main
    except ImportError as e:
        print(
            f"ERROR: {e}: run `make demo`, which installs the dependencies in .venv",
            file=sys.stderr,
        )
        return 2
    return demo_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
