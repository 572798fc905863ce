# -*- test-case-name: tests.test_main -*-
"""The ``imapsync`` command: parse options, load the config, run, exit.

Exit status (the manual's EXIT STATUS): 0 success, 1 an error during the
run, 2 no config file or the database cannot be opened, 64 usage error,
75 temporary failure in watch mode, 78 configuration error.
"""

from __future__ import annotations

import sys
from typing import Any, List, NoReturn, Optional, Sequence

from twisted.python import usage

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NO_INPUT = 2
EXIT_USAGE = 64
EXIT_TEMPFAIL = 75
EXIT_CONFIG = 78


def error(message: str) -> None:
    sys.stderr.write(f"ERROR: {message}\n")
    sys.stderr.flush()


def main(argv: Sequence[str]) -> int:
    """Run imapsync with ``argv``; return the exit status."""
    from imapsync.config import ConfigError, load_config
    from imapsync.options import Options

    options = Options()
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as e:
        error(f"{e} (see imapsync --help)")
        return EXIT_USAGE
    try:
        config = load_config(options.config_path)
    except ConfigError as e:
        error(str(e))
        return getattr(e, "exit_code", EXIT_CONFIG)
    from imapsync.service import run_once, start_logging

    try:
        start_logging(config, options)
    except OSError as e:
        error(f"cannot open the logfile: {e}")
        return EXIT_NO_INPUT
    from twisted.internet import task
    from twisted.internet.defer import Deferred

    status: List[int] = []

    def go(reactor: Any) -> Deferred[None]:
        async def body() -> None:
            status.append(await run_once(reactor, config, options))

        return Deferred.fromCoroutine(body())

    try:
        task.react(go)
    except SystemExit:
        pass
    return status[0] if status else EXIT_ERROR


def run(argv: Optional[Sequence[str]] = None) -> NoReturn:
    """Console-script entry point."""
    sys.exit(main(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    run()
