# -*- test-case-name: tests.test_tap -*-
"""``twistd imapsync``: build the service from the shared command line.

twistd does not report a failed run through its exit status (and ends
by re-raising SIGTERM), so the packaged systemd units run the
``imapsync`` console script instead, whose exit status tells.
"""

from __future__ import annotations

import sys

from twisted.application.service import IService

from imapsync.options import Options

__all__ = ["Options", "makeService"]


def makeService(options: Options) -> IService:
    """The `SyncService` for ``options`` (config loaded now: errors stop twistd)."""
    from twisted.internet import reactor

    from imapsync.config import ConfigError, load_config
    from imapsync.service import SyncService

    try:
        config = load_config(options.config_path)
    except ConfigError as e:
        # One line and the documented status, as the command does.
        sys.stderr.write(f"ERROR: {e}\n")
        raise SystemExit(e.exit_code)
    return SyncService(reactor, config, options)
