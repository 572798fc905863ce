# -*- test-case-name: tests.test_security_dovecot -*-
"""What a user's secrets and state need, end to end against real Dovecot.

The real command runs as a subprocess: the password of a login stays out
of the process titles and command lines (of imapsync and of what it
starts) and out of the log unless ``--debug --debug`` asks for it; a
config file readable by others that holds a password is warned about; a
second instance on the same database stops at once, also while the first
is in the middle of copying.  (``tests.test_main_dovecot`` covers
``--debug`` once and twice on a one-shot run, and a second instance while
the first is still connecting.)
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import List

from tests.dovecot import DovecotDaemon, make_message
from tests.test_watch_dovecot import REPOSITORY, RUN_TIMEOUT, LiveTestCase, _descendants

PASSWORD = "Zq8-s3cret-Pa55word"
# The forms a password can take on the wire: AUTHENTICATE PLAIN's and LOGIN's.
SECRETS = (
    PASSWORD,
    base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode(),
    base64.b64encode(PASSWORD.encode()).decode(),
)
# How long a second instance may take to give up (a Python start included).
PROMPT = 10.0


def message(i: int, size: int = 0) -> bytes:
    return make_message(f"message {i}", f"body of message {i}", size=size)


class CredentialTests(LiveTestCase):
    """A remote that needs a password: a Dovecot daemon on 127.0.0.1."""

    def setUp(self) -> None:
        super().setUp()
        self.daemon = DovecotDaemon(self.directory / "daemon", users={"alice": PASSWORD})
        self.daemon.start()
        self.addCleanup(self.daemon.stop)
        self.remote = self.daemon.store("alice")
        self.logfile = self.directory / "imapsync.log"
        self.config = self.write_config(
            remote_server=(
                f"type = imap\nhost = 127.0.0.1\nport = {self.daemon.imap_port}\n"
                f"STARTTLS = NO\nusername = alice\npassword = {PASSWORD}"
            ),
            name="daemon.conf",
        )
        # A logfile too, in the default section (before [local]).
        text = Path(self.config).read_text()
        Path(self.config).write_text(f"logfile = {self.logfile}\n" + text)

    def assertNoSecret(self, text: str, where: str) -> None:
        for secret in SECRETS:
            self.assertNotIn(secret, text, f"the password shows in {where}")

    def test_not_in_process_titles_nor_logs(self) -> None:
        """Live mode, logged in: /proc/PID/cmdline, comm and each thread's
        comm of imapsync and its children never hold the password; nor does
        its log, at the default level, with -q or --debug; --debug twice
        shows it."""
        self.local.append("INBOX", message(1))
        self.remote.append("INBOX", message(2))
        run = self.start()
        self.wait_in_sync(run, timeout=RUN_TIMEOUT)
        run.wait_quiet()
        self.assertIsNone(run.proc.poll(), run.describe())
        pids = [run.proc.pid] + [pid for pid, _ in _descendants(run.proc.pid)]
        looked = 0
        for pid in pids:
            proc = Path(f"/proc/{pid}")
            try:
                titles = [
                    (proc / "cmdline").read_bytes(),
                    (proc / "comm").read_bytes(),
                    *((task / "comm").read_bytes() for task in (proc / "task").iterdir()),
                ]
            except OSError:
                continue  # already gone
            looked += 1
            for title in titles:
                self.assertNoSecret(title.decode("utf-8", "replace"), f"{proc}: {title!r}")
        self.assertGreaterEqual(looked, 2, "imapsync and its local tunnel")
        self.assertStopsCleanly(run)
        self.assertTrue(run.matching(r"local\(INBOX\): Added 1 UID"), run.describe())
        self.assertNoSecret(run.text, "the log (default level)")
        # -q: warnings and errors only, never the password.
        self.local.append("INBOX", message(3))
        quiet = self.oneshot("-q")
        self.assertEqual(quiet.proc.returncode, 0, quiet.describe())
        self.assertEqual(quiet.lines, [])
        self.assertEqual(self.local.snapshot(), self.remote.snapshot())
        self.assertNoSecret(self.logfile.read_text(), "the logfile")
        # With a logfile, --debug's traffic goes there (test_main_dovecot
        # checks stderr without one): the login REDACTED, shown with --debug
        # twice only.
        size = self.logfile.stat().st_size
        once = self.oneshot("--debug")
        self.assertEqual(once.proc.returncode, 0, once.describe())
        logged = self.logfile.read_text()[size:]
        self.assertRegex(logged, r"remote: C: \S+ (AUTHENTICATE|LOGIN) .*REDACTED")
        self.assertNoSecret(logged + once.text, "the log with --debug")
        size = self.logfile.stat().st_size
        twice = self.oneshot("--debug", "--debug")
        self.assertEqual(twice.proc.returncode, 0, twice.describe())
        logged = self.logfile.read_text()[size:]
        self.assertTrue(any(secret in logged for secret in SECRETS), logged)

    def test_readable_config_warns(self) -> None:
        """A config file holding a password, readable by others: the command
        says so (also with -q), then syncs; mode 0600: not a word."""
        self.local.append("INBOX", message(1))
        os.chmod(self.config, 0o644)
        warning = (
            f"WARNING: config file {self.config} is readable by others and holds a password;"
            f" chmod 600 {self.config}"
        )
        for args in ((), ("-q",)):
            run = self.oneshot(*args)
            self.assertEqual(run.proc.returncode, 0, run.describe())
            self.assertEqual(run.matching("WARNING"), [warning], run.describe())
        self.assertEqual(self.local.snapshot(), self.remote.snapshot())
        os.chmod(self.config, 0o600)
        run = self.oneshot()
        self.assertEqual(run.proc.returncode, 0, run.describe())
        self.assertEqual(run.matching("WARNING|readable"), [], run.describe())


class SecondInstanceTests(LiveTestCase):
    """One imapsync per database."""

    def test_second_instance_while_the_first_copies(self) -> None:
        """The first is copying (its log shows a first batch added): a second
        one on the same database exits at once with status 2 and one
        ``ERROR:`` line naming the database; the first finishes and the
        stores converge."""
        self.local.append_many("INBOX", [message(i, 3000) for i in range(3000)])
        self.remote.append_many("INBOX", [message(i, 3000) for i in range(3000, 3500)])
        first = self.start("--oneshot")
        first.wait_for(r"\): Added \d+ UID", timeout=RUN_TIMEOUT)
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "imapsync", "-c", self.config, "--oneshot"],
            cwd=REPOSITORY,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=RUN_TIMEOUT,
        )
        took = time.monotonic() - started
        still_copying = first.proc.poll() is None
        lines: List[str] = second.stderr.decode().splitlines()
        self.assertEqual(second.returncode, 2, lines)
        self.assertEqual(
            lines, [f"ERROR: another imapsync is using {self.directory / 'state.db'}"]
        )
        self.assertEqual(second.stdout, b"")
        self.assertLess(took, PROMPT)
        self.assertTrue(still_copying, f"the first had finished:\n{first.describe()}")
        self.assertEqual(first.wait(), 0, first.describe())
        added = sum(
            int(m.group(1))
            for line in first.lines
            if (m := re.search(r"\): Added (\d+) UID", line))
        )
        self.assertEqual(added, 3500, first.describe())
        self.assertEqual(first.matching(r"ERROR|WARNING|Traceback"), [], first.describe())
        local = self.local.snapshot()
        self.assertEqual(local, self.remote.snapshot())
        self.assertEqual(len(local[("INBOX",)]), 3500)
        again = self.oneshot()
        self.assertEqual(again.proc.returncode, 0, again.describe())
        self.assertEqual(again.matching(r"Added|Removed|Updated|ERROR|WARNING"), [])
