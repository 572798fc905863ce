# -*- test-case-name: tests.test_main_dovecot -*-
"""The real ``imapsync`` command, run as a subprocess against two Dovecot stores.

What a user notices: both stores' contents, the log lines, the exit status,
and never a Python traceback.  Local uses ``/`` as its hierarchy delimiter,
remote ``.``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import re
import select
import shlex
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Sequence

import attrs
from twisted.trial.unittest import TestCase

from tests import certs
from tests.dovecot import (
    DovecotDaemon,
    DovecotStore,
    Snapshot,
    make_message,
    require_dovecot,
)

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A run against two small tunnel stores takes well under a second.
RUN_TIMEOUT = 60
# A --debug line: "local: C: 3 LIST ..." (the side may be repeated).
TRAFFIC = re.compile(r"(?:(?:local|remote): )+[CS]: ")


@attrs.frozen
class Run:
    """One finished ``imapsync`` process."""

    argv: List[str]
    status: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def lines(self) -> List[str]:
        return self.stderr.splitlines()

    @property
    def traffic(self) -> List[str]:
        """The --debug lines showing IMAP commands and responses."""
        return [line for line in self.lines if TRAFFIC.match(line)]

    @property
    def messages(self) -> List[str]:
        """The log lines that are not IMAP traffic."""
        return [line for line in self.lines if not TRAFFIC.match(line)]

    def __str__(self) -> str:
        return (
            f"{shlex.join(self.argv)}: exit {self.status} in {self.seconds:.2f} s\n"
            f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}---"
        )


def message(i: int, text: str = "", size: int = 0) -> bytes:
    return make_message(f"message {i}", text or f"body of message {i}", size=size)


class CommandTestCase(TestCase):
    """A fresh pair of stores, a config file and an environment per test."""

    timeout = 120

    def setUp(self) -> None:
        require_dovecot(self)
        self.tmp = tempfile.mkdtemp(prefix="imapsync-main-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.local = DovecotStore(os.path.join(self.tmp, "local"), "/", "local")
        self.remote = DovecotStore(os.path.join(self.tmp, "remote"), ".", "remote")
        self.database = os.path.join(self.tmp, "xdg-data", "imapsync", "test.db")
        self.env = dict(
            os.environ,
            XDG_CONFIG_HOME=os.path.join(self.tmp, "xdg-config"),
            XDG_DATA_HOME=os.path.join(self.tmp, "xdg-data"),
        )
        self.config = self.write_config()

    def write_config(
        self,
        default: str = "",
        local: str = "",
        remote: str = "",
        *,
        local_command: Optional[str] = None,
        remote_command: Optional[str] = None,
        remote_server: Optional[str] = None,
        name: str = "config",
    ) -> str:
        """Write a config file in the test's directory; return its path.

        Both sides are tunnels to the test's stores unless ``remote_server``
        replaces the remote's ``type`` and ``command`` lines.
        """
        local_server = f"type = tunnel\ncommand = {local_command or self.local.tunnel_command}"
        if remote_server is None:
            remote_server = (
                f"type = tunnel\ncommand = {remote_command or self.remote.tunnel_command}"
            )
        path = os.path.join(self.tmp, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                f"database = {self.database}\n{default}\n"
                f"[local]\n{local_server}\n{local}\n"
                f"[remote]\n{remote_server}\n{remote}\n"
            )
        return path

    def argv(self, *args: str, config: Optional[str] = None, oneshot: bool = True) -> List[str]:
        command = [sys.executable, "-m", "imapsync", "-c", config or self.config]
        if oneshot:
            command.append("-1")
        return command + list(args)

    def run_command(
        self,
        argv: Sequence[str],
        expect: Optional[int] = 0,
        timeout: float = RUN_TIMEOUT,
        umask: int = 0o022,
    ) -> Run:
        """Run ``argv`` from the repository root; check that no traceback shows."""
        start = time.monotonic()
        process = subprocess.run(
            list(argv),
            cwd=REPOSITORY,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            umask=umask,
        )
        run = Run(
            list(argv),
            process.returncode,
            process.stdout.decode("utf-8", "replace"),
            process.stderr.decode("utf-8", "replace"),
            time.monotonic() - start,
        )
        self.assertNotIn("Traceback", run.stderr, str(run))
        self.assertNotIn("Traceback", run.stdout, str(run))
        if expect is not None:
            self.assertEqual(run.status, expect, str(run))
        return run

    def imapsync(
        self,
        *args: str,
        expect: Optional[int] = 0,
        config: Optional[str] = None,
        oneshot: bool = True,
        timeout: float = RUN_TIMEOUT,
        umask: int = 0o022,
    ) -> Run:
        """Run ``imapsync -c CONFIG -1 ARGS``; check the status and that no traceback shows.

        The command logs to stderr only: stdout stays empty (cron mails nothing).
        """
        argv = self.argv(*args, config=config, oneshot=oneshot)
        run = self.run_command(argv, expect, timeout, umask)
        self.assertEqual(run.stdout, "", str(run))
        return run

    def run_parallel(self, commands: Sequence[tuple[List[str], int]]) -> List[Run]:
        """Run independent commands at once; check each status and for tracebacks."""
        start = time.monotonic()
        processes = [
            subprocess.Popen(
                argv,
                cwd=REPOSITORY,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for argv, _ in commands
        ]
        runs = []
        try:
            for process, (argv, expect) in zip(processes, commands, strict=True):
                stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
                run = Run(
                    argv,
                    process.returncode,
                    stdout.decode("utf-8", "replace"),
                    stderr.decode("utf-8", "replace"),
                    time.monotonic() - start,
                )
                self.assertNotIn("Traceback", run.stderr + run.stdout, str(run))
                self.assertEqual(run.status, expect, str(run))
                runs.append(run)
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        return runs

    def follow_hint(self, error: str, expect: int = 0) -> Run:
        """Run the `imapsync ...` command an ERROR line suggests."""
        match = re.search(r"`imapsync ([^`]*)`", error)
        self.assertIsNotNone(match, error)
        assert match is not None
        return self.imapsync(*shlex.split(match.group(1)), oneshot=False, expect=expect)

    def assertClean(self, run: Run) -> None:
        """A run with nothing to do: no change logged, no warning, no error."""
        self.assertNoLineMatches(
            run, r"Added|Removed|Updated flags|Created|Deleted|Subscribed|WARNING|ERROR"
        )

    def assertLine(self, run: Run, line: str) -> None:
        self.assertIn(line, run.lines, str(run))

    def assertLineMatches(self, run: Run, pattern: str) -> re.Match[str]:
        for line in run.lines:
            match = re.fullmatch(pattern, line)
            if match is not None:
                return match
        self.fail(f"no line matches {pattern!r}\n{run}")

    def assertNoLineMatches(self, run: Run, pattern: str) -> None:
        """No log line (IMAP traffic aside) matches ``pattern``."""
        for line in run.messages:
            if re.search(pattern, line):
                self.fail(f"unexpected line {line!r}\n{run}")

    def errors(self, run: Run) -> List[str]:
        return [line for line in run.messages if "ERROR:" in line]

    def assertInSync(self, internaldate: bool = False) -> Snapshot:
        """Both stores hold the same mailboxes, messages and flags; return that."""
        local = self.local.snapshot(internaldate=internaldate)
        remote = self.remote.snapshot(internaldate=internaldate)
        self.assertEqual(local, remote)
        return local

    def selectable(self, store: DovecotStore) -> set[tuple[str, ...]]:
        return {info.path for info in store.list_mailboxes().values() if info.selectable}

    def db(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.database)
        self.addCleanup(connection.close)
        return connection


class SyncTests(CommandTestCase):
    """Both ways, three runs: first sync, nothing to do, changes on both sides."""

    def test_first_second_and_third_run(self) -> None:
        local, remote = self.local, self.remote
        local.append_many("INBOX", [message(1), (message(2), ["\\Seen"], None), message(3)])
        local.create_mailbox("Work", subscribe=True)
        local.create_mailbox("Work/Projects", subscribe=True)
        local.append_many(
            "Work/Projects",
            [(message(i), ["\\Seen", "$Label1"], None) for i in (10, 11)],
        )
        remote.append_many("INBOX", [message(4), message(5)])
        remote.create_mailbox("Archive", subscribe=True)
        remote.append("Archive", message(20), ["\\Answered"])
        remote.create_mailbox("Lists")
        remote.append("Lists", message(21))

        first = self.imapsync()
        for line in (
            "local: Created mailbox Archive",
            "local: Created mailbox Lists",
            "remote: Created mailbox Work",
            "remote: Created mailbox Work/Projects",
            "remote(INBOX): Added 3 UID(s) 1:3 -> 3:5",
            "local(INBOX): Added 2 UID(s) 4:5 <- 1:2",
            "remote(Work/Projects): Added 2 UID(s) 1:2 -> 1:2",
            "local(Archive): Added 1 UID(s) 1 <- 1",
            "local(Lists): Added 1 UID(s) 1 <- 1",
        ):
            self.assertLine(first, line)
        self.assertEqual(self.errors(first), [])
        snapshot = self.assertInSync()
        self.assertEqual(len(snapshot[("INBOX",)]), 5)
        # The hierarchy is translated: Work/Projects is Work.Projects remotely.
        self.assertIn("Work.Projects", {i.raw.decode() for i in remote.list_mailboxes().values()})
        self.assertEqual(
            [m.flags for m in remote.messages("Work.Projects")],
            [frozenset({"\\Seen", "$Label1"})] * 2,
        )
        # Subscriptions follow; an unsubscribed mailbox stays unsubscribed.
        subscribed = {("Work",), ("Work", "Projects"), ("Archive",)}
        self.assertEqual(local.subscriptions(), subscribed)
        self.assertEqual(remote.subscriptions(), subscribed)

        # Nothing to do: LIST-STATUS tells that no mailbox changed, no SELECT.
        second = self.imapsync("--debug")
        self.assertClean(second)
        sent = [line for line in second.traffic if re.search(r"\bC: ", line)]
        self.assertTrue(any(re.search(r"C: \S+ LIST .*STATUS", line) for line in sent), second)
        self.assertEqual([line for line in sent if re.search(r"C: \S+ SELECT ", line)], [])
        self.assertInSync()

        # Changes on both sides, while imapsync is not running.
        local.append("INBOX", message(6))  # local UID 6
        remote.append("Work.Projects", message(12), ["$Label1"])  # remote UID 3
        local.set_flags("INBOX", 1, ["\\Seen", "$Label1"])  # remote UID 3
        local.expunge("INBOX", 2)  # remote UID 4
        remote.expunge("INBOX", 1)  # local UID 4
        local.set_flags("INBOX", 3, ["\\Flagged"])  # remote UID 5 ...
        remote.set_flags("INBOX", 5, ["$Label2"])  # ... changed differently: a conflict

        third = self.imapsync("--debug")
        for line in (
            "remote(INBOX): Removed 1 UID(s) 4",
            "local(INBOX): Removed 1 UID(s) 4",
            "remote(INBOX): Updated flags ($Label1 \\Seen) for UID 3",
            "WARNING: Conflicting flag update in INBOX for local UID 3 (\\Flagged)"
            " and remote UID 5 ($Label2). Setting both to the union ($Label2 \\Flagged).",
            "local(INBOX): Updated flags ($Label2 \\Flagged) for UID 3",
            "remote(INBOX): Updated flags ($Label2 \\Flagged) for UID 5",
            "remote(INBOX): Added 1 UID(s) 6 -> 6",
            "local(Work/Projects): Added 1 UID(s) 3 <- 3",
        ):
            self.assertLine(third, line)
        self.assertEqual(self.errors(third), [])
        # Only the changed mailboxes were selected.
        selected = {
            match.group(1)
            for line in third.traffic
            if (match := re.search(r"C: \S+ SELECT (\S+)", line))
        }
        self.assertEqual(selected, {"INBOX", "Work/Projects", "Work.Projects"})
        snapshot = self.assertInSync()
        self.assertEqual(len(snapshot[("INBOX",)]), 4)
        flags = {m.uid: m.flags for m in local.messages("INBOX")}
        self.assertEqual(flags[1], {"\\Seen", "$Label1"})
        self.assertEqual(flags[3], {"\\Flagged", "$Label2"})
        self.assertNotIn(2, flags)
        self.assertNotIn(4, flags)
        self.assertEqual(
            {m.uid: m.flags for m in remote.messages("INBOX")}[5], {"\\Flagged", "$Label2"}
        )

        # What the third run stored itself is not a change for the fourth,
        # which logs its totals and nothing else.
        fourth = self.imapsync()
        self.assertEqual(
            [re.sub(r"recv .*", "recv ...", line) for line in fourth.lines],
            [
                "local: 0 message(s) added (0), 0 removed, 0 flag update(s);"
                " IMAP traffic (bytes): recv ...",
                "remote: 0 message(s) added (0), 0 removed, 0 flag update(s);"
                " IMAP traffic (bytes): recv ...",
            ],
        )
        self.assertInSync()

    def test_subscriptions_follow_the_side_that_changed(self) -> None:
        for name in ("A", "B"):
            self.local.create_mailbox(name, subscribe=True)
        self.remote.create_mailbox("C")
        self.imapsync()
        self.assertEqual(self.remote.subscriptions(), {("A",), ("B",)})

        self.remote.unsubscribe("A")
        self.local.subscribe("C")
        run = self.imapsync()
        self.assertLine(run, "local: Unsubscribed from A")
        self.assertLine(run, "remote: Subscribed to C")
        self.assertEqual(self.local.subscriptions(), {("B",), ("C",)})
        self.assertEqual(self.remote.subscriptions(), {("B",), ("C",)})
        self.assertClean(self.imapsync())


class MessageContentTests(CommandTestCase):
    """Messages arrive byte for byte, with their flags and INTERNALDATE."""

    def test_bodies_flags_and_internaldates(self) -> None:
        header = b"From: alice@example.org\r\nSubject: %s\r\n\r\n"
        bodies = [
            header % b"8bit"
            + "Grüße, naïve café\r\n".encode()
            + "Latin-1: \xe9t\xe9\r\n".encode("latin-1"),
            # Every byte but NUL (IMAP literals may not hold NUL).
            header % b"binary" + bytes(range(1, 256)) + b"\r\n" + bytes(range(255, 0, -1)),
            b"From: alice@example.org\nSubject: bare LF\n\nline\nline\n",
            header % b"bare CR" + b"a\rb\r\nc\n\r\n",
            header % b"long line" + b"y" * 300_000 + b"\r\n",
            header % b"no final line end" + b"end",
        ]
        dates = [
            "03-Feb-2001 04:05:06 -0500",
            "01-Jan-1999 00:00:00 +1300",
            "31-Dec-2020 23:59:59 +0000",
        ]
        uids = self.local.append_many(
            "INBOX",
            [(body, ["\\Seen"], dates[i % len(dates)]) for i, body in enumerate(bodies)],
        )
        [remote_uid] = self.remote.append_many(
            "INBOX", [(header % b"remote" + b"\xff\xfe\x80\r\n", ["$Label1"], dates[1])]
        )
        self.imapsync()
        self.assertInSync(internaldate=True)
        # What the remote returns is what the local one returns, byte for byte.
        remote_uids = self.remote.messages("INBOX")
        self.assertEqual(len(remote_uids), len(bodies) + 1)
        for uid, target in zip(
            uids, [m.uid for m in remote_uids if m.uid != remote_uid], strict=True
        ):
            self.assertEqual(self.remote.body("INBOX", target), self.local.body("INBOX", uid))
        [copied] = [m for m in self.local.messages("INBOX") if m.uid not in uids]
        self.assertEqual(
            self.local.body("INBOX", copied.uid), self.remote.body("INBOX", remote_uid)
        )
        self.assertEqual(copied.flags, {"$Label1"})

    def test_50_mib_message(self) -> None:
        line = bytes(33 + i % 90 for i in range(998)) + b"\r\n"
        head = make_message("50 MiB", "big")
        size = 50 * 1024 * 1024
        big = head + line * ((size - len(head)) // len(line))
        big += b"z" * (size - len(big) - 2) + b"\r\n"
        self.assertEqual(len(big), size)
        self.local.append("INBOX", big, ["\\Seen"], "13-Feb-2025 10:00:00 +0100")
        run = self.imapsync()
        self.assertLine(run, "remote(INBOX): Added 1 UID(s) 1 -> 1")
        self.assertLess(run.seconds, 30, run)
        [copied] = self.remote.messages("INBOX")
        self.assertEqual(copied.sha256, hashlib.sha256(big).hexdigest())
        self.assertEqual(copied.size, size)
        self.assertEqual(copied.flags, {"\\Seen"})
        self.assertEqual(
            copied.internaldate, datetime.datetime(2025, 2, 13, 9, tzinfo=datetime.UTC)
        )


class SpooledMessageTests(CommandTestCase):
    """Messages of 1 MiB and more go through a file, over TLS and COMPRESS too."""

    def test_large_messages_both_ways_over_tls_and_compress(self) -> None:
        ca = certs.make_ca()
        server = ca.issue(["localhost"], ["127.0.0.1"])
        pems = certs.write_pem_files(os.path.join(self.tmp, "pki"), server, ca)
        daemon = DovecotDaemon(
            os.path.join(self.tmp, "daemon"), certificate=server.cert_pem, key=server.key_pem
        )
        daemon.start()
        self.addCleanup(daemon.stop)
        remote = daemon.store("alice")
        spool = os.path.join(self.tmp, "spool")
        os.mkdir(spool)
        self.env["TMPDIR"] = spool
        line = bytes(33 + i % 90 for i in range(998)) + b"\r\n"

        def big(name: str, size: int) -> bytes:
            head = make_message(name, name)
            body = head + line * ((size - len(head)) // len(line))
            return body + b"x" * (size - len(body) - 2) + b"\r\n"

        common = (
            "host = localhost\nusername = alice\npassword = secret\n"
            f"SSL_CAfile = {pems.ca}\ncompress = YES\n"
        )
        expected = {}
        for n, remote_server in enumerate(
            (
                f"type = imaps\nport = {daemon.imaps_port}\n{common}",
                f"type = imap\nport = {daemon.imap_port}\nSTARTTLS = YES\n{common}",
            )
        ):
            up, down = big(f"up{n}", (3 << 20) + n), big(f"down{n}", (5 << 20) + 17 * n)
            self.local.append("INBOX", up, ["\\Seen"])
            remote.append("INBOX", down, ["$Label1"])
            expected[hashlib.sha256(up).hexdigest()] = {"\\Seen"}
            expected[hashlib.sha256(down).hexdigest()] = {"$Label1"}
            config = self.write_config(remote_server=remote_server, name=f"tls{n}.conf")
            os.chmod(config, 0o600)
            run = self.imapsync(config=config)
            self.assertEqual(self.errors(run), [])
            self.assertLine(run, f"remote(INBOX): Added 1 UID(s) {2 * n + 1} -> {2 * n + 2}")
            for store in (self.local, remote):
                self.assertEqual({m.sha256: m.flags for m in store.messages("INBOX")}, expected)
            # The spool files have no name: nothing is left behind.
            self.assertEqual(os.listdir(spool), [])


class MailboxNameTests(CommandTestCase):
    """Names with spaces, quotes, backslashes, non-ASCII; delimiters translated."""

    def test_names_and_delimiters(self) -> None:
        names = ["My Folder", 'Say "hi"', "back\\slash", "Entwürfe", "Tom&Jerry", "a/b"]
        for i, name in enumerate(names):
            self.local.create_mailbox(name, subscribe=True)
            self.local.append(name, message(i, name))
        self.remote.create_mailbox("x.y")
        self.remote.append("x.y", message(99))
        run = self.imapsync()
        for line in (
            "remote: Created mailbox My Folder",
            'remote: Created mailbox Say "hi"',
            "remote: Created mailbox back\\slash",
            "remote: Created mailbox Entwürfe",
            "remote: Created mailbox a/b",
            "local: Created mailbox x/y",
            "remote(Entwürfe): Added 1 UID(s) 1 -> 1",
        ):
            self.assertLine(run, line)
        snapshot = self.assertInSync()
        self.assertEqual(
            set(snapshot),
            {("INBOX",), ("x", "y"), ("a", "b")} | {(n,) for n in names if n != "a/b"},
        )
        raw = {info.raw for info in self.remote.list_mailboxes().values()}
        self.assertTrue(
            {b"Entw&APw-rfe", b"Tom&-Jerry", b"a.b", b'Say "hi"', b"back\\slash"} <= raw, raw
        )
        self.assertEqual(self.remote.subscriptions(), self.local.subscriptions())

        # A non-ASCII name on the command line (UTF-8): only that mailbox.
        self.local.append("Entwürfe", message(100))
        self.local.append("My Folder", message(101))
        run = self.imapsync("Entwürfe")
        self.assertLine(run, "remote(Entwürfe): Added 1 UID(s) 2 -> 2")
        self.assertNoLineMatches(run, r"My Folder")
        self.assertLine(self.imapsync(), "remote(My Folder): Added 1 UID(s) 2 -> 2")
        self.assertInSync()

    def test_local_name_holding_the_remote_delimiter(self) -> None:
        self.local.create_mailbox("v1.2")
        self.local.append("v1.2", message(1))
        self.local.create_mailbox("Other")
        self.local.append("Other", message(2))
        self.local.append("INBOX", message(3))
        run = self.imapsync(expect=1)
        [error] = self.errors(run)
        self.assertTrue(error.startswith("ERROR: "), error)
        self.assertIn("v1.2", error)
        self.assertIn("'.'", error)
        self.assertLine(run, "remote(Other): Added 1 UID(s) 1 -> 1")
        self.assertLine(run, "remote(INBOX): Added 1 UID(s) 1 -> 1")
        self.assertEqual(self.selectable(self.remote), {("INBOX",), ("Other",)})
        # Still refused, still alone: the rest stays in sync.
        self.local.append("Other", message(4))
        run = self.imapsync(expect=1)
        self.assertEqual(len(self.errors(run)), 1, run)
        self.assertLine(run, "remote(Other): Added 1 UID(s) 2 -> 2")


class MailboxSelectionTests(CommandTestCase):
    """Which mailboxes a run covers: arguments, list-mailbox, select options, ignores."""

    def make_mailboxes(self, store: DovecotStore, names: Sequence[str]) -> None:
        for i, name in enumerate(names):
            store.create_mailbox(name)
            store.append(name, message(i, name))

    def test_mailbox_arguments(self) -> None:
        self.make_mailboxes(self.local, ["Work", "Work/Projects", "Work/Other", "Misc"])
        self.local.append("INBOX", message(50))
        self.make_mailboxes(self.remote, ["Archive"])
        run = self.imapsync("INBOX", "Work/Projects")
        self.assertLine(run, "remote: Created mailbox Work/Projects")
        self.assertLine(run, "remote(INBOX): Added 1 UID(s) 1 -> 1")
        self.assertNoLineMatches(run, r"Archive|Misc|Work/Other|Created mailbox Work$")
        self.assertEqual(
            self.selectable(self.remote), {("INBOX",), ("Archive",), ("Work", "Projects")}
        )
        self.assertNotIn(("Archive",), self.selectable(self.local))
        # A pattern, as LIST takes it.
        run = self.imapsync("Work/*")
        self.assertLine(run, "remote: Created mailbox Work/Other")
        self.assertNoLineMatches(run, r"Archive|Misc|Created mailbox Work$")

    def test_list_mailbox(self) -> None:
        self.make_mailboxes(
            self.local, ["My Folder", "Work", "Work/Projects", "Work/Other", "Misc"]
        )
        self.make_mailboxes(self.remote, ["Remote Only", "Work.Plans"])
        config = self.write_config('list-mailbox = INBOX "My Folder" "Work\\0P*"')
        run = self.imapsync(config=config)
        self.assertEqual(self.errors(run), [])
        expected = {("INBOX",), ("My Folder",), ("Work", "Projects"), ("Work", "Plans")}
        self.assertEqual(self.selectable(self.remote), expected | {("Remote Only",)})
        self.assertEqual(
            self.selectable(self.local), expected | {("Work",), ("Work", "Other"), ("Misc",)}
        )
        self.assertEqual(
            {k: v for k, v in self.local.snapshot().items() if k in expected},
            {k: v for k, v in self.remote.snapshot().items() if k in expected},
        )

    def test_list_select_opts_subscribed(self) -> None:
        self.make_mailboxes(self.local, ["Sub", "Unsub"])
        self.local.subscribe("Sub")
        self.make_mailboxes(self.remote, ["RSub", "RUnsub"])
        self.remote.subscribe("RSub")
        self.local.append("INBOX", message(50))
        config = self.write_config("list-select-opts = SUBSCRIBED")
        run = self.imapsync(config=config)
        self.assertEqual(self.errors(run), [])
        self.assertEqual(
            self.selectable(self.local), {("INBOX",), ("Sub",), ("Unsub",), ("RSub",)}
        )
        self.assertEqual(
            self.selectable(self.remote), {("INBOX",), ("RSub",), ("RUnsub",), ("Sub",)}
        )
        self.assertEqual(self.local.subscriptions(), {("Sub",), ("RSub",)})
        self.assertEqual(self.remote.subscriptions(), {("Sub",), ("RSub",)})
        # INBOX is not subscribed: not listed, not synced.
        self.assertEqual(self.remote.messages("INBOX"), [])
        self.assertEqual(self.local.snapshot()[("RSub",)], self.remote.snapshot()[("RSub",)])

    def test_ignore_mailbox(self) -> None:
        self.make_mailboxes(self.local, ["Trash", "TrashCan", "Work", "Work/Old", "Work/New"])
        self.make_mailboxes(self.remote, ["Spam"])
        config = self.write_config("ignore-mailbox = ^(?:Trash|Work\\0Old|Spam)$")
        run = self.imapsync(config=config)
        self.assertEqual(self.errors(run), [])
        self.assertNoLineMatches(run, r"Created mailbox (Trash|Work/Old|Spam)$")
        self.assertEqual(
            self.selectable(self.remote),
            {("INBOX",), ("TrashCan",), ("Work",), ("Work", "New"), ("Spam",)},
        )
        self.assertNotIn(("Spam",), self.selectable(self.local))

    def test_list_reference(self) -> None:
        self.make_mailboxes(self.local, ["Work", "Work/Sub"])
        self.make_mailboxes(self.remote, ["Backup.Old", "Other"])
        self.remote.append("INBOX", message(60))
        # INBOX left out: see test_list_reference_inbox.
        config = self.write_config("ignore-mailbox = ^INBOX$", remote="list-reference = Backup.")
        before = self.remote.snapshot()
        run = self.imapsync(config=config)
        self.assertLine(run, "remote: Created mailbox Work")
        self.assertLine(run, "remote: Created mailbox Work/Sub")
        self.assertLine(run, "local: Created mailbox Old")
        self.assertEqual(
            self.selectable(self.remote),
            {
                ("INBOX",),
                ("Other",),
                ("Backup", "Old"),
                ("Backup", "Work"),
                ("Backup", "Work", "Sub"),
            },
        )
        local, remote = self.local.snapshot(), self.remote.snapshot()
        for name in (("Work",), ("Work", "Sub"), ("Old",)):
            self.assertEqual(local[name], remote[("Backup", *name)])
        # Outside the reference, nothing changed.
        self.assertEqual(remote[("Other",)], before[("Other",)])
        self.assertEqual(remote[("INBOX",)], before[("INBOX",)])
        self.assertEqual(local[("INBOX",)], [])

    def test_list_reference_inbox(self) -> None:
        self.local.append("INBOX", message(1))
        self.remote.append("INBOX", message(2))
        config = self.write_config(remote="list-reference = Backup.")
        run = self.imapsync(config=config, expect=None)
        self.assertEqual(self.errors(run), [])
        self.assertEqual(run.status, 0, run)
        # As interimap: INBOX is Backup.INBOX below the reference.
        remote = self.remote.snapshot()
        self.assertEqual(self.local.snapshot()[("INBOX",)], remote[("Backup", "INBOX")])
        self.assertEqual(len(remote[("INBOX",)]), 1)


class ErrorTests(CommandTestCase):
    """Each failure: one ERROR line naming the problem and the fix, nothing deleted."""

    def synced(self, names: Sequence[str]) -> None:
        for i, name in enumerate(names):
            self.local.create_mailbox(name)
            self.local.append_many(name, [message(i * 10 + 1), message(i * 10 + 2)])
        self.imapsync()

    def test_uidvalidity_changed(self) -> None:
        self.synced(["A", "B"])
        self.remote.delete_mailbox("A")
        self.remote.create_mailbox("A")
        self.remote.append("A", message(3))
        self.local.append("B", message(4))
        before = (self.local.snapshot(), self.remote.snapshot())
        run = self.imapsync(expect=1)
        [error] = self.errors(run)
        self.assertRegex(
            error, r"^ERROR: UIDVALIDITY of remote mailbox A changed \(was \d+, now \d+\)"
        )
        self.assertIn("`imapsync --target=database --delete A`", error)
        # The other mailbox is synced all the same; A is left alone.
        self.assertLine(run, "remote(B): Added 1 UID(s) 3 -> 3")
        self.assertEqual(self.local.snapshot()[("A",)], before[0][("A",)])
        self.assertEqual(self.remote.snapshot()[("A",)], before[1][("A",)])
        # Following the hint: A's messages are copied anew, both ways.
        self.assertLine(self.follow_hint(error), "database: Removed mailbox A")
        run = self.imapsync()
        self.assertLine(run, "remote(A): Added 2 UID(s) 1:2 -> 2:3")
        self.assertLine(run, "local(A): Added 1 UID(s) 3 <- 1")
        self.assertInSync()

    def test_mailbox_deleted_offline(self) -> None:
        self.synced(["A", "B"])
        self.local.delete_mailbox("A")
        self.local.append("B", message(4))
        before = self.remote.snapshot()
        run = self.imapsync(expect=1)
        [error] = self.errors(run)
        self.assertRegex(error, r"^ERROR: A: mailbox exists on remote but no longer on local")
        self.assertIn("`imapsync --target=remote,database --delete A`", error)
        self.assertIn("--rename", error)
        self.assertLine(run, "remote(B): Added 1 UID(s) 3 -> 3")
        self.assertEqual(self.remote.snapshot()[("A",)], before[("A",)])
        self.assertNotIn(("A",), self.selectable(self.local))
        run = self.follow_hint(error)
        self.assertLine(run, "remote: Deleted mailbox A")
        self.assertClean(self.imapsync())
        self.assertEqual(set(self.assertInSync()), {("INBOX",), ("B",)})

    def test_server_without_qresync(self) -> None:
        self.local.append("INBOX", message(1))
        config = self.write_config(
            remote_command=self.remote.tunnel_command_without(["QRESYNC", "CONDSTORE"])
        )
        run = self.imapsync(config=config, expect=1)
        [error] = self.errors(run)
        self.assertIn("QRESYNC", error)
        self.assertEqual(self.remote.messages("INBOX"), [])
        self.assertEqual(len(self.local.messages("INBOX")), 1)

    def test_server_without_qresync_is_named(self) -> None:
        config = self.write_config(
            remote_command=self.remote.tunnel_command_without(["QRESYNC", "CONDSTORE"])
        )
        run = self.imapsync(config=config, expect=1)
        [error] = self.errors(run)
        # interimap: "remote: ERROR: Server did not advertise QRESYNC (RFC 7162) capability."
        self.assertIn("remote", error)

    def test_configuration_and_usage_errors(self) -> None:
        bad = self.write_config("bogus-key = 1", name="bad")
        missing = os.path.join(self.tmp, "no-such-config")
        runs = self.run_parallel(
            [
                (self.argv(config=bad), 78),
                (self.argv(config=missing), 2),
                (self.argv("--bogus"), 64),
                (self.argv("--rename", "A", oneshot=False), 64),
                (self.argv("--target=local", oneshot=False), 64),
                (self.argv("--watch=5"), 64),
                (self.argv("--delete", "--rename", "A", "B", oneshot=False), 64),
            ]
        )
        bad_key, no_file, *usage = runs
        [error] = self.errors(bad_key)
        self.assertIn(f"{bad} line 2", error)
        self.assertIn("bogus-key", error)
        [error] = self.errors(no_file)
        self.assertIn(missing, error)
        self.assertIn("--config", error)
        for run in usage:
            [error] = self.errors(run)
            self.assertIn("imapsync --help", error)
        self.assertIn("--bogus", self.errors(usage[0])[0])
        # Nothing was created: no database, no mailbox.
        self.assertFalse(os.path.exists(self.database))
        self.assertEqual(self.selectable(self.remote), {("INBOX",)})


class RepairTests(CommandTestCase):
    """--repair lists what the database got wrong and fixes it."""

    def test_repair(self) -> None:
        self.local.append_many("INBOX", [message(i) for i in range(1, 6)])
        self.imapsync()
        with self.db() as db:
            # A lost mapping, and changes the database says were seen already.
            db.execute("DELETE FROM mapping WHERE lUID = 2")
        self.remote.set_flags("INBOX", 3, ["\\Flagged", "$Label1"])
        self.local.expunge("INBOX", 4)
        with self.db() as db:
            for side, store in (("local", self.local), ("remote", self.remote)):
                modseq = store.status("INBOX")["HIGHESTMODSEQ"]
                db.execute(f"UPDATE {side} SET HIGHESTMODSEQ = ?", (modseq,))
        self.assertClean(self.imapsync())
        self.assertNotEqual(self.local.snapshot(), self.remote.snapshot())

        run = self.imapsync("--repair")
        for line in (
            "WARNING: Missed flag update in INBOX for (lUID,rUID) = (3,3). Repairing.",
            # Nothing says the user deleted it: the survivor comes back (as interimap).
            "WARNING: local UID 4 of INBOX disappeared. Copying remote UID 4 again.",
            "local(INBOX): Updated flags ($Label1 \\Flagged) for UID 3",
            "local(INBOX): WARNING: 1 message(s) not in the database: copying them (2)",
            "remote(INBOX): WARNING: 2 message(s) not in the database: copying them (2,4)",
            "remote(INBOX): Added 1 UID(s) 2 -> 6",
            "local(INBOX): Added 2 UID(s) 6:7 <- 2,4",
        ):
            self.assertLine(run, line)
        self.assertEqual(self.errors(run), [])
        snapshot = self.assertInSync()
        # The unmapped message is now on both sides twice (the manual says
        # so), and the lost one is back.
        self.assertEqual(len(snapshot[("INBOX",)]), 6)
        self.assertEqual(
            {m.uid: m.flags for m in self.local.messages("INBOX")}[3], {"\\Flagged", "$Label1"}
        )
        # Nothing left for another full comparison to find.
        self.assertClean(self.imapsync("--repair"))

    def test_repair_lists_only_what_it_copies(self) -> None:
        self.local.append_many("INBOX", [message(i) for i in range(1, 5)])
        self.imapsync()
        with self.db() as db:
            db.execute("DELETE FROM mapping WHERE lUID = 2")
        self.local.expunge("INBOX", 4)
        with self.db() as db:
            modseq = self.local.status("INBOX")["HIGHESTMODSEQ"]
            db.execute("UPDATE local SET HIGHESTMODSEQ = ?", (modseq,))
        run = self.imapsync("--repair")
        self.assertNotIn("Removed", run.stderr)
        # Every UID listed is one that is copied.
        self.assertLine(
            run, "remote(INBOX): WARNING: 2 message(s) not in the database: copying them (2,4)"
        )
        self.assertLine(run, "local(INBOX): Added 2 UID(s) 5:6 <- 2,4")


class MailboxCommandTests(CommandTestCase):
    """--delete and --rename, with --target; a normal sync is clean after each."""

    def setUp(self) -> None:
        super().setUp()
        for i, name in enumerate(["Old", "Keep", "P", "P/C", "P/C/D", "Taken"]):
            self.local.create_mailbox(name, subscribe=True)
            self.local.append(name, message(i, name))
        self.local.append("INBOX", message(99))
        self.imapsync()

    def test_delete(self) -> None:
        run = self.imapsync("--delete", "Old", "inbox", oneshot=False, expect=64)
        [error] = self.errors(run)
        self.assertIn("INBOX cannot be deleted", error)
        self.assertEqual(len(self.remote.messages("INBOX")), 1)
        self.assertIn(("Old",), self.selectable(self.remote))

        # Not recursive: P's children stay, and stay in sync.
        run = self.imapsync("--delete", "Old", "P", oneshot=False)
        self.assertEqual(
            run.messages[:6],
            [
                "local: Deleted mailbox Old",
                "remote: Deleted mailbox Old",
                "database: Removed mailbox Old",
                "local: Deleted mailbox P",
                "remote: Deleted mailbox P",
                "database: Removed mailbox P",
            ],
        )
        self.assertClean(self.imapsync())
        self.assertEqual(
            set(self.assertInSync()),
            {("INBOX",), ("Keep",), ("P", "C"), ("P", "C", "D"), ("Taken",)},
        )

        # One side at a time: the sync in between says what is left to do.
        run = self.imapsync("--target=remote", "--delete", "Keep", oneshot=False)
        self.assertEqual(run.messages[:1], ["remote: Deleted mailbox Keep"])
        [error] = self.errors(self.imapsync(expect=1))
        self.assertIn("`imapsync --target=local,database --delete Keep`", error)
        run = self.imapsync(
            "--target=local", "--target=database", "--delete", "Keep", oneshot=False
        )
        self.assertEqual(
            run.messages[:2], ["local: Deleted mailbox Keep", "database: Removed mailbox Keep"]
        )
        self.assertClean(self.imapsync())
        self.assertEqual(
            set(self.assertInSync()), {("INBOX",), ("P", "C"), ("P", "C", "D"), ("Taken",)}
        )

    def test_rename(self) -> None:
        run = self.imapsync("--rename", "P", "Q", oneshot=False)
        self.assertEqual(
            run.messages[:3],
            [
                "local: Renamed mailbox P to Q",
                "remote: Renamed mailbox P to Q",
                "database: Renamed mailbox P to Q",
            ],
        )
        # Children follow, on both servers and in the database.
        self.local.append("Q/C/D", message(50))
        run = self.imapsync()
        self.assertEqual(
            [line for line in run.messages if "IMAP traffic" not in line],
            ["remote(Q/C/D): Added 1 UID(s) 2 -> 2"],
        )
        snapshot = self.assertInSync()
        self.assertTrue({("Q",), ("Q", "C"), ("Q", "C", "D")} <= set(snapshot), snapshot)
        self.assertFalse({("P",), ("P", "C")} & set(snapshot), snapshot)

        # Refused, before anything changes, when DEST exists anywhere.
        self.remote.create_mailbox("OnRemote")
        with self.db() as db:
            db.execute("INSERT INTO mailboxes (mailbox, subscribed) VALUES (?, 0)", (b"Ghost",))
        for destination, where in (
            ("Taken", "on local"),
            ("OnRemote", "on remote"),
            ("Ghost", "in the database"),
        ):
            run = self.imapsync("--rename", "Q", destination, oneshot=False, expect=1)
            [error] = self.errors(run)
            self.assertIn(f"mailbox {destination} exists {where}", error)
            self.assertIn(f" --delete {destination}`", error)
            self.assertNoLineMatches(run, "Renamed")
        run = self.imapsync()
        self.assertLine(run, "database: Removed mailbox Ghost (gone from both servers)")
        self.assertLine(run, "local: Created mailbox OnRemote")
        self.assertEqual(self.errors(run), [])
        self.assertTrue({("Q",), ("Q", "C"), ("Q", "C", "D")} <= set(self.assertInSync()))


class OptionOrderTests(CommandTestCase):
    """Options may follow mailbox names, as with interimap (Getopt::Long)."""

    def test_options_after_mailbox_names(self) -> None:
        for name in ("Old", "Other"):
            self.local.create_mailbox(name)
            self.local.append(name, message(1, name))
        self.imapsync()
        run = self.imapsync("--delete", "Old", "--target=local", oneshot=False, expect=None)
        # Only on local: remote and the database keep Old.
        self.assertIn(("Old",), self.selectable(self.remote))
        self.assertEqual(run.status, 0, run)
        self.assertEqual(run.messages[:1], ["local: Deleted mailbox Old"])


class DatabaseTests(CommandTestCase):
    """The database: where it lives, who may read it, one instance at a time."""

    def test_default_locations_and_modes(self) -> None:
        config_dir = os.path.join(self.env["XDG_CONFIG_HOME"], "imapsync")
        os.makedirs(config_dir)
        with open(self.config) as f:
            text = f.read()
        with open(os.path.join(config_dir, "config"), "w") as f:
            f.write(text.replace(f"database = {self.database}\n", ""))
        self.local.append("INBOX", message(1))
        # No --config, a permissive umask: the modes are imapsync's own.
        run = self.run_command([sys.executable, "-m", "imapsync", "-1"], umask=0)
        self.assertLine(run, "remote(INBOX): Added 1 UID(s) 1 -> 1")
        database = os.path.join(self.env["XDG_DATA_HOME"], "imapsync", "localhost.db")
        self.assertEqual(stat.S_IMODE(os.stat(database).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(database)).st_mode), 0o700)
        self.assertInSync()
        # Relative paths: the config from XDG_CONFIG_HOME, the database from
        # XDG_DATA_HOME/imapsync.
        with open(os.path.join(self.env["XDG_CONFIG_HOME"], "relative.conf"), "w") as f:
            f.write(text.replace(self.database, "sub/relative.db"))
        self.local.append("INBOX", message(2))
        run = self.run_command([sys.executable, "-m", "imapsync", "-1", "-c", "relative.conf"])
        # A new database: everything is copied again (a duplicate, as documented).
        self.assertLine(run, "remote(INBOX): Added 2 UID(s) 1:2 -> 2:3")
        database = os.path.join(os.path.dirname(database), "sub", "relative.db")
        self.assertEqual(stat.S_IMODE(os.stat(database).st_mode), 0o600)

    def test_second_instance(self) -> None:
        self.local.append_many("INBOX", [message(i) for i in range(1, 21)])
        # The first instance's remote tunnel waits (20 s at most) for this file.
        go = os.path.join(self.tmp, "go")
        slow = os.path.join(self.tmp, "slow-tunnel.sh")
        with open(slow, "w") as f:
            f.write(
                "#!/bin/sh\ni=0\n"
                f"while [ ! -e {go} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done\n"
                f"exec {self.remote.tunnel_command}\n"
            )
        config = self.write_config(remote_command=f"/bin/sh {slow}", name="slow")
        first = subprocess.Popen(
            self.argv(config=config),
            cwd=REPOSITORY,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert first.stderr is not None
            # Its first line comes once it holds the database.
            ready = select.select([first.stderr], [], [], RUN_TIMEOUT)[0]
            self.assertTrue(ready, "the first instance printed nothing")
            line = first.stderr.readline().decode()
            self.assertIn("Creating new schema", line)
            second = self.imapsync(expect=2)
            self.assertEqual(second.lines, [f"ERROR: another imapsync is using {self.database}"])
            self.assertIsNone(first.poll(), "the first instance did not wait")
            with open(go, "w"):
                pass
            _, stderr = first.communicate(timeout=RUN_TIMEOUT)
        finally:
            with open(go, "w"):
                pass
            if first.poll() is None:
                first.kill()
                first.wait()
        log = line + stderr.decode()
        self.assertEqual(first.returncode, 0, log)
        self.assertNotIn("Traceback", log)
        self.assertIn("remote(INBOX): Added 20 UID(s) 1:20 -> 1:20", log.splitlines())
        self.assertInSync()


class LoggingTests(CommandTestCase):
    """-q, logfile, log-prefix and --debug."""

    def test_quiet(self) -> None:
        self.local.append_many("INBOX", [message(1), message(2)])
        self.remote.create_mailbox("Sub", subscribe=True)
        run = self.imapsync("-q")
        self.assertEqual((run.stdout, run.stderr), ("", ""))
        self.assertInSync()
        # Warnings and errors still show.
        self.local.set_flags("INBOX", 1, ["\\Seen"])
        self.remote.set_flags("INBOX", 1, ["\\Flagged"])
        self.local.delete_mailbox("Sub")
        run = self.imapsync("-q", expect=1)
        self.assertEqual(len(run.lines), 2, run)
        error, warning = sorted(run.lines)
        self.assertTrue(error.startswith("ERROR: Sub: mailbox exists on remote"), run)
        self.assertTrue(warning.startswith("WARNING: Conflicting flag update in INBOX"), run)

    def test_logfile_and_log_prefix(self) -> None:
        self.local.append_many("INBOX", [message(1), message(2)])
        logfile = os.path.join(self.tmp, "logs", "imapsync.log")
        config = self.write_config(f"logfile = {logfile}\nlog-prefix = %?n?%n%?m?/%m?> ?")
        run = self.imapsync(config=config, umask=0)
        self.assertLine(run, "remote/INBOX> Added 2 UID(s) 1:2 -> 1:2")
        self.assertLine(run, "database> Created mailbox INBOX")
        self.assertLineMatches(run, r"local> 0 message\(s\) added .*")
        self.assertEqual(stat.S_IMODE(os.stat(logfile).st_mode), 0o600)
        with open(logfile) as f:
            logged = f.read().splitlines()
        stamp = r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)? "
        self.assertEqual(len(logged), len(run.lines), logged)
        for line, shown in zip(logged, run.lines, strict=True):
            self.assertRegex(line, "^" + stamp + re.escape(shown) + "$")
        # Appended to, not replaced.
        self.local.append("INBOX", message(3))
        self.imapsync(config=config)
        with open(logfile) as f:
            again = f.read().splitlines()
        self.assertEqual(again[: len(logged)], logged)
        self.assertLess(len(logged), len(again))

    def test_debug(self) -> None:
        marker = "body-that-must-not-be-logged"
        self.local.append("INBOX", message(1, marker))
        self.remote.append("INBOX", message(2, marker))
        run = self.imapsync("--debug")
        self.assertNotIn(marker, run.stderr)
        sent = [line for line in run.traffic if re.search(r"\bC: ", line)]
        for command in ("ENABLE QRESYNC", "SELECT INBOX", "UID FETCH", "APPEND INBOX", "LOGOUT"):
            self.assertTrue(any(command in line for line in sent), f"no {command}\n{run}")
        self.assertTrue(all(line.startswith(("local: ", "remote: ")) for line in run.traffic))
        # The rest of the log is as without --debug.
        self.assertLine(run, "remote(INBOX): Added 1 UID(s) 1 -> 2")
        self.assertLine(run, "local(INBOX): Added 1 UID(s) 2 <- 1")
        self.assertInSync()

    def test_debug_lines_name_the_server_once(self) -> None:
        run = self.imapsync("--debug")
        self.assertTrue(run.traffic, run)
        for line in run.traffic:
            self.assertRegex(line, r"^(local|remote): [CS]: \S")
            self.assertNotRegex(line, r"^(local|remote): (local|remote): ")

    def test_debug_shows_server_responses_as_sent(self) -> None:
        self.local.append("INBOX", message(1))
        run = self.imapsync("--debug")
        received = [line for line in run.traffic if re.search(r"\bS: ", line)]
        self.assertTrue(received, run)
        # interimap: "remote: S: * 1 EXISTS", the line as the server sent it.
        for line in received:
            self.assertRegex(line, r"\bS: (\* |\+|[^\s(]+ (OK|NO|BAD)\b)")
        self.assertFalse([line for line in received if "Response(" in line], run)

    def test_debug_password(self) -> None:
        password = "s3cret-Pa55word"
        daemon = DovecotDaemon(os.path.join(self.tmp, "daemon"), users={"alice": password})
        daemon.start()
        self.addCleanup(daemon.stop)
        daemon.store("alice").append("INBOX", message(1))
        config = self.write_config(
            remote_server=(
                f"type = imap\nhost = 127.0.0.1\nport = {daemon.imap_port}\nSTARTTLS = NO\n"
                f"username = alice\npassword = {password}"
            ),
            name="daemon.conf",
        )
        credentials = [
            password,
            base64.b64encode(f"\0alice\0{password}".encode()).decode(),
            base64.b64encode(password.encode()).decode(),
        ]
        once = self.imapsync("--debug", config=config)
        self.assertLine(once, "local(INBOX): Added 1 UID(s) 1 <- 1")
        self.assertTrue([line for line in once.traffic if "REDACTED" in line], once)
        for secret in credentials:
            self.assertNotIn(secret, once.stderr)
        twice = self.imapsync("--debug", "--debug", config=config)
        self.assertTrue(any(secret in twice.stderr for secret in credentials), twice)


class EntryPointTests(CommandTestCase):
    """``python -m imapsync`` and ``twistd imapsync``."""

    def twistd(self, *args: str) -> List[str]:
        # Not the venv's bin/twistd: it may not exist for the interpreter in use.
        return [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "--nodaemon",
            "--pidfile=",
            "imapsync",
            *args,
        ]

    def test_version_and_help(self) -> None:
        version, usage, short = self.run_parallel(
            [
                ([sys.executable, "-m", "imapsync", "--version"], 0),
                ([sys.executable, "-m", "imapsync", "--help"], 0),
                ([sys.executable, "-m", "imapsync", "-h"], 0),
            ]
        )
        self.assertRegex(version.stdout, r"^imapsync \d+\.\d+\S*\n$")
        self.assertEqual(version.stderr, "")
        self.assertTrue(usage.stdout.startswith("Usage: imapsync [OPTION...] [MAILBOX...]\n"))
        for option in ("--oneshot", "--repair", "--delete", "--rename", "--target", "--debug"):
            self.assertIn(option, usage.stdout)
        self.assertEqual(short.stdout, usage.stdout)

    def test_twistd_oneshot(self) -> None:
        self.local.append_many("INBOX", [message(1), message(2)])
        self.remote.create_mailbox("Sub", subscribe=True)
        self.remote.append("Sub", message(3))
        run = self.run_command(self.twistd("-c", self.config, "--oneshot"))
        self.assertIn("Added 2 UID(s) 1:2 -> 1:2", run.stdout)
        self.assertIn("Added 1 UID(s) 1 <- 1", run.stdout)
        self.assertInSync()
        self.assertEqual(self.local.subscriptions(), {("Sub",)})
        # The command agrees that nothing is left to do.
        self.assertClean(self.imapsync())

    def test_twistd_log_names_server_and_mailbox(self) -> None:
        self.local.append_many("INBOX", [message(1), message(2)])
        run = self.run_command(self.twistd("-c", self.config, "--oneshot"))
        self.assertIn("remote(INBOX): Added 2 UID(s) 1:2 -> 1:2", run.stdout)

    def test_twistd_configuration_errors(self) -> None:
        missing = os.path.join(self.tmp, "no-such-config")
        bad = self.write_config("bogus-key = 1", name="bad")
        for config, error in ((missing, "no configuration file"), (bad, "bogus-key")):
            run = self.run_command(self.twistd("-c", config, "--oneshot"), expect=None)
            self.assertNotEqual(run.status, 0)
            self.assertIn(error, run.stderr + run.stdout)
