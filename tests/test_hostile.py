# -*- test-case-name: tests.test_hostile -*-
"""Hostile or broken servers: the real command against a scripted remote.

The local side is a real Dovecot tunnel store, the remote a
`tests.scriptedserver` (an in-memory QRESYNC server kept in a pickle
between runs) that injects one fault: malformed data, unknown response
codes, data about another mailbox, a 4 GiB literal, a literal that lies,
VANISHED or FETCH for UIDs it never had, a bad APPENDUID, NO or BAD for
each command, BYE half way, a response before the greeting, bytes after
the STARTTLS OK.  Each run must end quickly, with one ``ERROR:`` line
naming the remote and what was wrong (or succeed, where the fault is one
a client must tolerate), with no traceback, nothing changed on the local
store that a correct sync would not change, no database row that the
remote did not confirm, and a clean run afterwards must converge.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

from twisted.trial.unittest import TestCase

from tests.dovecot import DovecotStore, Snapshot, make_message, require_dovecot
from tests.fakeserver import MailStore
from tests.scriptedserver import SCRIPT, load_store, save_store, script_command
from tests.test_main_dovecot import REPOSITORY, Run

# A hostile run must end by itself well within this (no hang, no 120 s timeout).
FAST = 15.0
# Peak RSS of the command and its children (Dovecot, the scripted server).
MAX_RSS_KIB = 200 * 1024


def _rss_kib(pid: int) -> int:
    """The current RSS of ``pid`` in KiB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


ERROR_LINE = re.compile(r"^(?:(\w+)(?:\(([^)]*)\))?: )?ERROR: (.*)$")


_WORKDIR: List[str] = []


def _workdir() -> str:
    """This process's working directory for the tests (its template beside it)."""
    if not _WORKDIR:
        root = tempfile.mkdtemp(prefix="imapsync-hostile-")
        atexit.register(shutil.rmtree, root, True)
        _WORKDIR.append(os.path.join(root, "test"))
    return _WORKDIR[0]


def body(name: str) -> bytes:
    return make_message(name, f"the body of {name}\n")


class HostileTestCase(TestCase):
    """Local: a Dovecot store; remote: the scripted server; synced once."""

    timeout = 120

    def setUp(self) -> None:
        require_dovecot(self)
        # Every test starts from a copy of one synced pair, made once, at
        # the same place (Dovecot's configuration holds absolute paths):
        # a first sync per test would double the module's run time.
        self.tmp = _workdir()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        template = self.tmp + ".template"
        if os.path.exists(template):
            subprocess.run(["cp", "-a", template, self.tmp], check=True)
        self.local = DovecotStore(os.path.join(self.tmp, "local"), "/", "local")
        self.state = os.path.join(self.tmp, "remote.pickle")
        self.log = os.path.join(self.tmp, "commands.log")
        self.database = os.path.join(self.tmp, "imapsync.db")
        self.env = dict(
            os.environ,
            XDG_CONFIG_HOME=os.path.join(self.tmp, "xdg-config"),
            XDG_DATA_HOME=os.path.join(self.tmp, "xdg-data"),
        )
        if not os.path.exists(template):
            self.local.append("INBOX", body("local 1"), flags=["\\Seen"])
            self.local.append("INBOX", body("local 2"), flags=["\\Flagged"])
            remote = MailStore(separator=b".")
            remote.append(b"INBOX", body("remote 1"), [b"\\Answered"])
            remote.append(b"INBOX", body("remote 2"))
            save_store(self.state, remote)
            self.imapsync()
            subprocess.run(["cp", "-a", self.tmp, template], check=True)
        self.assertConverged()

    # -- running ------------------------------------------------------------

    def config(self, remote_server: str) -> str:
        path = os.path.join(self.tmp, "config")
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                f"database = {self.database}\n"
                f"[local]\ntype = tunnel\ncommand = {self.local.tunnel_command}\n"
                f"[remote]\n{remote_server}\n"
            )
        os.chmod(path, 0o600)
        return path

    def imapsync(
        self,
        scenario: Optional[Dict[str, Any]] = None,
        expect: int = 0,
        remote_server: Optional[str] = None,
        timeout: float = 60.0,
    ) -> Run:
        """Run ``imapsync -1`` with the remote scripted by ``scenario``.

        Checks the status, that no traceback shows, that stdout is empty;
        records in ``self.rss`` the command's peak RSS (KiB), sampled from
        /proc every 20 ms: ``ru_maxrss`` would count the RSS this (large)
        test process had when it forked the command.
        """
        if remote_server is None:
            remote_server = "type = tunnel\ncommand = " + script_command(
                self.state, scenario, self.log
            )
        argv = [sys.executable, "-m", "imapsync", "-c", self.config(remote_server), "-1"]
        out_path = os.path.join(self.tmp, "stdout")
        err_path = os.path.join(self.tmp, "stderr")
        start = time.monotonic()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            process = subprocess.Popen(
                argv,
                cwd=REPOSITORY,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
            deadline = start + timeout
            peak = 0
            while True:
                peak = max(peak, _rss_kib(process.pid))
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    process.kill()
                    pid, status, usage = os.wait4(process.pid, 0)
                    self.fail(f"imapsync still running after {timeout} s")
                time.sleep(0.02)
        # Keep Popen from waiting for a process already reaped.
        process.returncode = os.waitstatus_to_exitcode(status)
        self.rss = peak
        with open(out_path, "rb") as out, open(err_path, "rb") as err:
            run = Run(
                argv,
                process.returncode,
                out.read().decode("utf-8", "replace"),
                err.read().decode("utf-8", "replace"),
                time.monotonic() - start,
            )
        self.assertNotIn("Traceback", run.stderr, str(run))
        self.assertEqual(run.stdout, "", str(run))
        self.assertEqual(run.status, expect, str(run))
        return run

    # -- checks ---------------------------------------------------------------

    def hostile(self, scenario: Dict[str, Any], *keywords: str) -> str:
        """Run against ``scenario``: exit 1, fast, one ERROR line naming the
        remote and ``keywords`` (regular expressions); no damage.  Returns the line."""
        before = self.local.snapshot()
        run = self.imapsync(scenario, expect=1)
        self.assertLess(run.seconds, FAST, str(run))
        errors = [line for line in run.lines if "ERROR" in line]
        self.assertEqual(len(errors), 1, str(run))
        [error] = errors
        match = ERROR_LINE.match(error)
        self.assertIsNotNone(match, str(run))
        assert match is not None
        self.assertEqual(match.group(1), "remote", str(run))
        for keyword in keywords:
            self.assertRegex(error, keyword, str(run))
        self.assertNoDamage(before)
        return error

    def assertNoDamage(self, before: Snapshot) -> None:
        """Local changed only as a sync would; every mapping is a real pair."""
        after = self.local.snapshot()
        remote = load_store(self.state).snapshot()
        legit = {entry[0] for entries in remote.values() for entry in entries}
        old = {entry[0]: entry for entries in before.values() for entry in entries}
        for path, entries in after.items():
            counts = Counter(entry[0] for entry in entries)
            self.assertEqual([h for h, n in counts.items() if n > 1], [], f"duplicates in {path}")
            for entry in entries:
                if entry[0] in old:
                    self.assertEqual(entry, old[entry[0]], f"flags changed in {path}")
                else:
                    self.assertIn(entry[0], legit, f"message from nowhere in {path}")
        self.assertMappingsReal()

    def assertMappingsReal(self) -> None:
        """Each (lUID, rUID) in the database: both exist and hold the same message."""
        remote = load_store(self.state)
        local = {m.uid: m.sha256 for m in self.local.messages("INBOX")}
        remote_inbox = {
            uid: hashlib.sha256(m.body).hexdigest() for uid, m in remote.messages(b"INBOX").items()
        }
        for luid, ruid in self.mapping():
            self.assertIn(luid, local)
            self.assertIn(ruid, remote_inbox, f"mapping to remote UID {ruid} never confirmed")
            self.assertEqual(local[luid], remote_inbox[ruid])

    def mapping(self) -> List[Tuple[int, int]]:
        db = sqlite3.connect(self.database)
        try:
            return list(db.execute("SELECT lUID, rUID FROM mapping ORDER BY lUID"))
        finally:
            db.close()

    def remote_state(self) -> Tuple[int, int, int]:
        db = sqlite3.connect(self.database)
        try:
            row = db.execute("SELECT UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ FROM remote").fetchone()
        finally:
            db.close()
        return tuple(row)  # type: ignore[return-value]

    def assertConverged(self) -> Snapshot:
        """Both sides hold the same messages, each once, with the same flags."""
        local = self.local.snapshot()
        remote = load_store(self.state).snapshot()
        self.assertEqual(local, remote)
        for entries in local.values():
            hashes = [entry[0] for entry in entries]
            self.assertEqual(len(hashes), len(set(hashes)))
        self.assertMappingsReal()
        self.assertEqual(len(self.mapping()), len(local[("INBOX",)]))
        return local

    def converge(self) -> None:
        """A clean run afterwards syncs everything, without duplicates."""
        self.imapsync()
        self.assertConverged()

    def new_messages(self) -> None:
        """Something to do both ways on the next run (FETCH and APPEND on each side)."""
        self.added = getattr(self, "added", 2) + 1
        self.local.append("INBOX", body(f"local {self.added}"))
        remote = load_store(self.state)
        remote.append(b"INBOX", body(f"remote {self.added}"), [b"\\Seen"])
        save_store(self.state, remote)

    def new_remote_uid(self) -> int:
        return load_store(self.state).mailbox(b"INBOX").uidnext - 1

    def commands(self) -> List[str]:
        with open(self.log, encoding="ascii") as f:
            return f.read().splitlines()


class MalformedTests(HostileTestCase):
    def test_malformed_response(self) -> None:
        """An unbalanced FETCH response: a protocol error, quoted."""
        self.new_messages()
        uid = self.new_remote_uid()
        self.hostile(
            {
                "at": "UID FETCH",
                "send": f"* 3 FETCH (UID {uid} FLAGS (\\Seen BODY[] {{5}}\r\nhello)\r\n",
                "action": "none",
            },
            r"expected|invalid|unexpected",
            "FETCH",
        )
        self.converge()

    def test_malformed_list(self) -> None:
        """A LIST response that is not one: nothing is synced at all."""
        self.new_messages()
        self.hostile(
            {"at": "LIST", "skip": 1, "send": '* LIST (\\Noselect "." \r\n', "action": "none"},
            r"LIST|expected|invalid",
        )
        self.converge()

    def test_unknown_response_codes_are_ignored(self) -> None:
        """Unknown codes (tagged, untagged, with odd arguments) are ignored (RFC 3501 7.1)."""
        self.new_messages()
        run = self.imapsync(
            {
                "at": "SELECT",
                "send": '* OK [X-FROBNICATE 1 (2 3) "x"] frob\r\n* OK [NOSUCHCODE] hm\r\n',
                "rewrite": [
                    ["READ-WRITE", "X-UNKNOWN-TAGGED some args"],
                    ["\\* OK \\[UIDNEXT", "* OK [X-ODD] odd\r\n* OK [UIDNEXT"],
                ],
            }
        )
        self.assertEqual([line for line in run.lines if "ERROR" in line], [])
        self.assertConverged()


class WrongDataTests(HostileTestCase):
    def test_status_of_another_mailbox(self) -> None:
        """A STATUS about another mailbox is not taken for the one asked about."""
        self.new_messages()
        self.imapsync(
            {
                "at": "STATUS",
                "times": 0,
                "rewrite": [
                    [
                        "(\\* STATUS INBOX [^\r]*\r\n)",
                        "\\1* STATUS Other (UIDNEXT 999 HIGHESTMODSEQ 999)\r\n",
                    ]
                ],
            }
        )
        self.assertConverged()
        uidnext = load_store(self.state).mailbox(b"INBOX").uidnext
        self.assertEqual(self.remote_state()[1], uidnext)
        # The next remote message (a UID below 999) is still noticed.
        remote = load_store(self.state)
        remote.append(b"INBOX", body("remote another"))
        save_store(self.state, remote)
        self.converge()

    def test_status_without_the_mailbox(self) -> None:
        """A STATUS answered with another mailbox's data only: an error."""
        self.new_messages()
        self.hostile(
            {
                "at": "STATUS",
                "rewrite": [["\\* STATUS INBOX ", "* STATUS Other "]],
            },
            "STATUS",
            "UIDNEXT",
        )
        self.converge()

    def test_vanished_for_uids_never_seen(self) -> None:
        """VANISHED for UIDs the client never had: nothing is removed anywhere."""
        self.new_messages()
        self.imapsync(
            {
                "at": "SELECT",
                "send": "* VANISHED (EARLIER) 500:600,9000\r\n",
                "rewrite": [["(\\d+ OK \\[READ-WRITE\\])", "* VANISHED 700:710\r\n\\1"]],
            }
        )
        self.assertConverged()
        self.assertEqual(len(self.local.messages("INBOX")), 6)

    def test_fetch_for_unknown_uids(self) -> None:
        """The body comes back under a UID never asked for, every time: an error,
        not a loop and not a message marked as copied."""
        self.new_messages()
        uid = self.new_remote_uid()
        self.hostile(
            {"at": "UID FETCH", "times": 0, "rewrite": [[f"UID {uid} ", "UID 7777 "]]},
            str(uid),
        )
        self.converge()

    def test_unsolicited_fetch_for_unknown_uids(self) -> None:
        """Flag updates for UIDs the mailbox never had: ignored."""
        self.new_messages()
        self.imapsync(
            {
                "at": "STATUS",
                "send": "* 77 FETCH (UID 7777 MODSEQ (99) FLAGS (\\Deleted \\Seen))\r\n",
            }
        )
        self.assertConverged()


class LiteralTests(HostileTestCase):
    def test_huge_literal(self) -> None:
        """{4294967295}: refused at once, naming the limit, nothing allocated."""
        self.new_messages()
        uid = self.new_remote_uid()
        error = self.hostile(
            {
                "at": "UID FETCH",
                "send": f"* 3 FETCH (UID {uid} FLAGS () BODY[] {{4294967295}}\r\n",
                "action": "hang",
            },
            "4294967295",
            r"limit",
        )
        self.assertRegex(error, r"1073741824|1 GiB")
        self.assertLess(self.rss, MAX_RSS_KIB)
        self.assertGreater(self.rss, 10 * 1024)  # it was measured
        self.converge()

    def test_literal_length_lies(self) -> None:
        """{100000} announced, 5 bytes sent, then the server goes: connection lost."""
        self.new_messages()
        uid = self.new_remote_uid()
        self.hostile(
            {
                "at": "UID FETCH",
                "send": f"* 3 FETCH (UID {uid} FLAGS () BODY[] {{100000}}\r\nhello",
                "action": "close",
            },
            r"connection.* lost|lost.* connection",
        )
        self.converge()

    def test_huge_line(self) -> None:
        """A response line that never ends: refused past the line limit."""
        self.new_messages()
        self.hostile(
            {
                "at": "UID SEARCH",
                "send": '* ESEARCH (TAG "{tag}") UID ALL 1',
                "fill": [",1", 40 * 1024 * 1024],
                "action": "hang",
            },
            r"line longer than \d+",
        )
        self.converge()


class AppendUIDTests(HostileTestCase):
    def test_appenduid_with_wrong_uidvalidity(self) -> None:
        """APPENDUID for another UIDVALIDITY: those UIDs mean nothing here."""
        self.new_messages()
        self.hostile(
            {"at": "APPEND", "rewrite": [["APPENDUID \\d+", "APPENDUID 4242"]]}, "UIDVALIDITY"
        )
        self.converge()

    def test_appenduid_with_wrong_count(self) -> None:
        """APPENDUID naming two UIDs for one message: an error, nothing mapped."""
        self.new_messages()
        before = self.mapping()
        self.hostile(
            {"at": "APPEND", "rewrite": [["(APPENDUID \\d+) (\\d+)", "\\1 \\2:50"]]},
            r"APPENDUID",
            r"2 UIDs|UIDs for 1",
        )
        self.assertEqual(self.mapping(), before)
        self.converge()

    def test_appenduid_naming_a_mapped_uid(self) -> None:
        """APPENDUID giving a UID already mapped to another message."""
        self.new_messages()
        before = self.mapping()
        self.hostile(
            {"at": "APPEND", "rewrite": [["(APPENDUID \\d+) \\d+", "\\1 1"]]}, r"APPENDUID|UID 1"
        )
        self.assertEqual(self.mapping(), before)
        self.converge()


class RefusalTests(HostileTestCase):
    def test_no_and_bad_on_every_command_in_turn(self) -> None:
        """NO, then BAD, for each command the run sends, one at a time."""
        self.new_messages()
        before = self.local.snapshot()
        if os.path.exists(self.log):
            os.remove(self.log)
        self.imapsync({})
        self.assertNoDamage(before)
        sequence = [c for c in self.commands() if c != "LOGOUT"]
        names = list(dict.fromkeys(sequence))
        self.assertIn("APPEND", names)
        self.assertIn("UID FETCH", names)
        self.new_messages()
        for index, name in enumerate(names):
            status = "NO" if index % 2 == 0 else "BAD"
            self.hostile(
                {
                    "at": name,
                    "send": f"{{tag}} {status} [X-INJECTED] refused by the test\r\n",
                    "action": "none",
                },
                "refused by the test",
                "refused to store" if name == "APPEND" else re.escape(name),
            )
        self.converge()


class ConnectionTests(HostileTestCase):
    def test_bye_in_the_middle(self) -> None:
        self.new_messages()
        self.hostile(
            {"at": "UID FETCH", "send": "* BYE going down for maintenance\r\n", "action": "close"},
            "BYE",
            "going down for maintenance",
        )
        self.converge()

    def listen(self, scenario: Dict[str, Any]) -> str:
        """Serve ``scenario`` on 127.0.0.1 (one connection); return the [remote] lines."""
        portfile = os.path.join(self.tmp, "port")
        server = subprocess.Popen(
            [
                sys.executable,
                SCRIPT,
                "--state",
                self.state,
                "--scenario",
                json.dumps(scenario),
                "--listen",
                portfile,
            ],
            cwd=REPOSITORY,
            stdin=subprocess.DEVNULL,
        )

        def stop() -> None:
            if server.poll() is None:
                server.kill()
            server.wait()

        self.addCleanup(stop)
        deadline = time.monotonic() + 10
        while not os.path.exists(portfile):
            self.assertLess(time.monotonic(), deadline, "the scripted server did not start")
            time.sleep(0.02)
        with open(portfile, encoding="ascii") as f:
            port = int(f.read())
        return (
            f"type = imap\nhost = 127.0.0.1\nport = {port}\nSTARTTLS = YES\n"
            "username = user\npassword = secret\n"
        )

    def hostile_tcp(self, scenario: Dict[str, Any], *keywords: str) -> str:
        before = self.local.snapshot()
        run = self.imapsync(remote_server=self.listen(scenario), expect=1)
        self.assertLess(run.seconds, FAST, str(run))
        errors = [line for line in run.lines if "ERROR" in line]
        self.assertEqual(len(errors), 1, str(run))
        [error] = errors
        self.assertRegex(error, r"\bremote\b", str(run))
        for keyword in keywords:
            self.assertRegex(error, keyword, str(run))
        self.assertNoDamage(before)
        return error

    def test_response_before_greeting(self) -> None:
        self.hostile_tcp(
            {
                "before_greeting": "1 OK [CAPABILITY IMAP4rev1 QRESYNC] Logged in\r\n",
                "prelogin": ["IMAP4rev1", "STARTTLS", "LOGINDISABLED"],
            },
            "greeting",
        )

    def test_bytes_after_starttls_ok(self) -> None:
        self.hostile_tcp(
            {
                "prelogin": ["IMAP4rev1", "STARTTLS", "LOGINDISABLED"],
                "at": "STARTTLS",
                "after": "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] injected\r\n",
            },
            "STARTTLS",
            "injection",
        )
