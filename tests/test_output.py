"""Log lines as users read them: prefixes, quiet, logfile, progress on a terminal."""

from __future__ import annotations

import io
import os
import stat
import tempfile

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from imapsync._prefix import PrefixLogger
from imapsync.output import LineObserver, open_logfile


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def emit(observer: LineObserver, *calls: tuple) -> None:
    log = PrefixLogger(namespace="imapsync", observer=observer)
    for level, fmt, fields in calls:
        getattr(log, level)(fmt, **fields)


class LineObserverTests(SynchronousTestCase):
    def test_default_prefix(self) -> None:
        out = io.StringIO()
        emit(
            LineObserver(out),
            (
                "info",
                "{prefix}Added 2 UID(s) 1:2 -> 7:8",
                {"server": "remote", "mailbox": "INBOX"},
            ),
            ("info", "{prefix}Created mailbox A", {"server": "local"}),
            ("warn", "{prefix}WARNING: careful", {}),
        )
        self.assertEqual(
            out.getvalue().splitlines(),
            [
                "remote(INBOX): Added 2 UID(s) 1:2 -> 7:8",
                "local: Created mailbox A",
                "WARNING: careful",
            ],
        )

    def test_custom_prefix_and_quiet(self) -> None:
        out = io.StringIO()
        observer = LineObserver(out, prefix="[%n] ", quiet=True)
        emit(
            observer,
            ("info", "{prefix}hidden", {"server": "local"}),
            ("error", "{prefix}ERROR: shown", {"server": "local"}),
        )
        self.assertEqual(out.getvalue(), "[local] ERROR: shown\n")

    def test_debug_only_with_debug(self) -> None:
        out = io.StringIO()
        emit(LineObserver(out), ("debug", "{prefix}C: 1 NOOP", {"server": "local"}))
        self.assertEqual(out.getvalue(), "")
        emit(LineObserver(out, debug=1), ("debug", "{prefix}C: 1 NOOP", {"server": "local"}))
        self.assertEqual(out.getvalue(), "local: C: 1 NOOP\n")

    def test_other_libraries_info_is_not_shown(self) -> None:
        out = io.StringIO()
        Logger(namespace="twisted.internet.base", observer=LineObserver(out)).info("Main loop")
        self.assertEqual(out.getvalue(), "")

    def test_progress_in_place_on_a_terminal_only(self) -> None:
        progress = (
            "debug",
            "{prefix}{done}/10 message(s) copied",
            {"server": "remote", "mailbox": "INBOX", "done": 5, "progress": True},
        )
        plain = io.StringIO()
        emit(LineObserver(plain), progress)
        self.assertEqual(plain.getvalue(), "")
        tty = TTY()
        emit(
            LineObserver(tty),
            progress,
            (
                "info",
                "{prefix}Added 5 UID(s) 1:5 -> 1:5",
                {"server": "remote", "mailbox": "INBOX"},
            ),
        )
        self.assertEqual(
            tty.getvalue(),
            "\rremote(INBOX): 5/10 message(s) copied\x1b[K\r\x1b[K"
            "remote(INBOX): Added 5 UID(s) 1:5 -> 1:5\n",
        )

    def test_logfile_gets_timestamped_lines_and_is_private(self) -> None:
        path = os.path.join(tempfile.mkdtemp(), "sub", "imapsync.log")
        logfile = open_logfile(path)
        out = io.StringIO()
        emit(LineObserver(out, logfile), ("info", "{prefix}hello", {"server": "local"}))
        logfile.close()
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            line = f.read()
        self.assertTrue(line.endswith(" local: hello\n"), line)
        self.assertEqual(out.getvalue(), "local: hello\n")
