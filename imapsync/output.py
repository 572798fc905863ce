# -*- test-case-name: tests.test_output -*-
"""Turn log events into the lines users read: ``local(INBOX): Added ...``.

Messages go to stderr (warnings and errors only with --quiet) and, when
``logfile`` is set, also to that file with a timestamp; debug messages
(--debug: IMAP traffic) go to the logfile if there is one, else stderr.
"""

from __future__ import annotations

import os
import time
from typing import IO, Optional, TextIO

from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent
from zope.interface import implementer

from imapsync.config import format_log_prefix

DEFAULT_LOG_PREFIX = "%?n?%?m?%n(%m)&%n?: ?"


def open_logfile(path: str) -> TextIO:
    """Open ``path`` for appending, creating it private to the user (0600)."""
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8", errors="replace", buffering=1)


@implementer(ILogObserver)
class LineObserver:
    """Write imapsync's log events as single lines."""

    def __init__(
        self,
        stderr: IO[str],
        logfile: Optional[IO[str]] = None,
        prefix: Optional[str] = None,
        quiet: bool = False,
        debug: int = 0,
    ) -> None:
        self.stderr = stderr
        self.logfile = logfile
        self.prefix = prefix if prefix is not None else DEFAULT_LOG_PREFIX
        self.quiet = quiet
        self.debug = debug
        # Progress lines are drawn in place on a terminal only.
        self.tty = bool(getattr(stderr, "isatty", lambda: False)())
        self._progress_shown = False

    def __call__(self, event: LogEvent) -> None:
        if event.get("progress"):
            self._progress(event)
            return
        level = event.get("log_level", LogLevel.info)
        namespace = event.get("log_namespace", "") or ""
        ours = namespace.startswith("imapsync") or "server" in event
        if not ours and level < LogLevel.warn and not self.debug:
            return
        if level == LogLevel.debug and not self.debug:
            return
        if level == LogLevel.info and self.quiet:
            return
        # Our events carry a default {prefix}; ours replaces it.
        text = formatEvent({**event, "prefix": ""})

        failure = event.get("log_failure")
        if failure is not None and not ours:
            text = f"{text}: {failure.getErrorMessage()}"
        prefix = format_log_prefix(self.prefix, event.get("server"), event.get("mailbox"))
        line = prefix + text
        if self.logfile is not None:
            stamp = time.strftime("%b %e %H:%M:%S", time.localtime(event.get("log_time")))
            self.logfile.write(f"{stamp} {line}\n")
            if failure is not None and self.debug:
                self.logfile.write(failure.getTraceback())
            self.logfile.flush()
            if level == LogLevel.debug:
                return
        if self._progress_shown:
            # Clear the progress line before a normal one.
            self.stderr.write("\r\x1b[K")
            self._progress_shown = False
        self.stderr.write(line + "\n")
        self.stderr.flush()

    def _progress(self, event: LogEvent) -> None:
        if not self.tty or self.quiet:
            return
        prefix = format_log_prefix(self.prefix, event.get("server"), event.get("mailbox"))
        text = formatEvent({**event, "prefix": ""})
        self.stderr.write("\r" + (prefix + text)[:200] + "\x1b[K")
        self.stderr.flush()
        self._progress_shown = True
