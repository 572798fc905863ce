# -*- test-case-name: tests.test_broken_dovecot -*-
"""Broken connections: the real command behind a proxy that cuts, stalls and trickles.

The remote is a real Dovecot daemon on 127.0.0.1 reached through a
`FaultProxy`; the local side is a tunnel store.  A one-shot run whose
connection breaks exits 1 with one clear ``ERROR:`` line and no
traceback, and the next (clean) run converges: both stores hold the same
messages, each once, with the same flags.  Live mode reconnects and
converges.  Every wait is bounded; every process is stopped by PID.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Counter, Dict, List, Optional, Sequence, Tuple

from twisted.trial.unittest import SynchronousTestCase

from tests.dovecot import (
    DovecotDaemon,
    DovecotStore,
    MailStore,
    Snapshot,
    make_message,
    require_dovecot,
)
from tests.faultproxy import CUT, DOWN, STALL, TRICKLE, UP, Fault, FaultProxy
from tests.test_main_dovecot import Run
from tests.test_watch_dovecot import Background, kill_all, processes_under

REPOSITORY = Path(__file__).resolve().parent.parent
# A run against these small stores takes about a second; trickled, a few.
RUN_TIMEOUT = 60.0
# The command timeout the stall test gives imapsync (see TIMEOUT_WRAPPER).
SHORT_TIMEOUT = 2.0
# A literal this large or more is a message body (FETCH) or an APPEND.
BIG = 200 * 1024
#: ``python -c TIMEOUT_WRAPPER SECONDS ARGS...``: the real command with its
#: command timeout (120 s, `imapsync.imap._protocol.DEFAULT_TIMEOUT`, which
#: no option or configuration key changes) set to SECONDS.  Test tooling.
TIMEOUT_WRAPPER = """
import sys
import attrs
import imapsync.service
from imapsync.imap.connect import open_session
from imapsync.scripts.main import run
seconds = float(sys.argv.pop(1))
async def short(reactor, settings, debug=0):
    return await open_session(reactor, attrs.evolve(settings, timeout=seconds), debug=debug)
imapsync.service.open_session = short
sys.argv[0] = "imapsync"
run()
"""
# A body literal in a FETCH response, and an APPEND literal (LITERAL+ or not).
FETCH_LITERAL = rb"BODY\[\] \{\d{6,}\}\r\n"
# What the ERROR line of a broken run says.
LOST = r"connection .*lost|lost .*connection"
APPEND_LITERAL = rb"\{\d{6,}\+?\}\r\n"


def message(name: str, size: int = 0) -> bytes:
    """A message; of about ``size`` bytes of incompressible text when given, so
    that offsets in a COMPRESS=DEFLATE stream land inside it too."""
    text = f"body of message {name}"
    if size:
        noise = random.Random(name).randbytes(size * 3 // 4)
        encoded = base64.encodebytes(noise).decode("ascii")
        text += "\n" + encoded
    return make_message(f"message {name}", text)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def contents(snapshot: Snapshot) -> Dict[Tuple[str, ...], Counter[str]]:
    """Mailbox path -> multiset of body hashes."""
    return {
        path: collections.Counter(entry[0] for entry in entries)
        for path, entries in snapshot.items()
    }


class BrokenTestCase(SynchronousTestCase):
    """A local tunnel store, a remote Dovecot daemon behind a `FaultProxy`."""

    def setUp(self) -> None:
        require_dovecot(self)
        self.directory = Path(tempfile.mkdtemp(prefix="imapsync-broken-"))
        self.addCleanup(self._cleanup)
        self.local: MailStore = DovecotStore(self.directory / "local", "/", "local")
        self.daemon = DovecotDaemon(self.directory / "daemon", {"alice": "secret"}, separator=".")
        self.daemon.start()
        self.addCleanup(self.daemon.stop)
        assert self.daemon.imap_port is not None
        self.remote: MailStore = self.daemon.store("alice")
        self.proxy = FaultProxy(self.daemon.imap_port)
        self.addCleanup(self.proxy.close)
        self.env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
            path = self.directory / name.lower()
            path.mkdir()
            self.env[name] = str(path)
        for name in ("IMAPSYNC_DEBUG", "PYTHONWARNINGS"):
            self.env.pop(name, None)
        self.config = self.write_config()
        # What was put in the stores: mailbox path -> multiset of hashes.
        self.expected: Dict[Tuple[str, ...], Counter[str]] = collections.defaultdict(
            collections.Counter
        )

    def write_config(self, compress: bool = False) -> Path:
        """The config: the remote through the proxy, uncompressed unless asked
        (the faults' patterns look for literals and tagged responses)."""
        config = self.directory / "config"
        config.write_text(
            f"database = {self.directory / 'state.db'}\n"
            f"[local]\ntype = tunnel\ncommand = {self.local.tunnel_command}\n"
            f"[remote]\ntype = imap\nhost = 127.0.0.1\nport = {self.proxy.port}\n"
            "STARTTLS = NO\nusername = alice\npassword = secret\n"
            f"compress = {'YES' if compress else 'NO'}\n"
        )
        os.chmod(config, 0o600)
        return config

    def _cleanup(self) -> None:
        kill_all(processes_under(self.directory))
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- seeding -------------------------------------------------------------

    def seed(
        self, store: MailStore, mailbox: str, bodies: Sequence[bytes], flags: Sequence[str] = ()
    ) -> None:
        """Append ``bodies`` to ``mailbox`` (created if needed) and expect them."""
        if mailbox != "INBOX" and mailbox not in store.list_mailboxes():
            store.create_mailbox(mailbox)
        store.append_many(mailbox, [(body, list(flags), None) for body in bodies])
        path = tuple(mailbox.split(store.separator))
        self.expected[path].update(digest(body) for body in bodies)

    def seed_both(self, big: int = 2, small: int = 3) -> None:
        """Messages on both sides, some of several hundred KiB."""
        for store, side in ((self.local, "L"), (self.remote, "R")):
            self.seed(store, "INBOX", [message(f"{side}{i}", 300 * 1024 + i) for i in range(big)])
            self.seed(store, "INBOX", [message(f"{side}s{i}") for i in range(small)], ["\\Seen"])

    # -- running ---------------------------------------------------------------

    def short_timeout_argv(self) -> List[str]:
        """``imapsync -c CONFIG -1`` with a command timeout of SHORT_TIMEOUT."""
        return [
            sys.executable,
            "-c",
            TIMEOUT_WRAPPER,
            str(SHORT_TIMEOUT),
            "-c",
            str(self.config),
            "-1",
        ]

    def run_command(
        self, argv: Sequence[str], expect: Optional[int], timeout: float = RUN_TIMEOUT
    ) -> Run:
        """Run ``argv``; check its status and that no traceback shows."""
        start = time.monotonic()
        process = subprocess.Popen(
            list(argv),
            cwd=REPOSITORY,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate(timeout=10)
            self.fail(
                f"{argv}: still running after {timeout} s\n{stderr.decode(errors='replace')}"
            )
        run = Run(
            list(argv),
            process.returncode,
            stdout.decode("utf-8", "replace"),
            stderr.decode("utf-8", "replace"),
            time.monotonic() - start,
        )
        self.assertNotIn("Traceback", run.stderr, f"{run}\nproxy: {self.proxy.events}")
        self.assertEqual(run.stdout, "", str(run))
        if expect is not None:
            self.assertEqual(run.status, expect, f"{run}\nproxy: {self.proxy.events}")
        return run

    def imapsync(self, *args: str, expect: Optional[int] = 0, timeout: float = RUN_TIMEOUT) -> Run:
        argv = [sys.executable, "-m", "imapsync", "-c", str(self.config), "-1", *args]
        return self.run_command(argv, expect, timeout)

    def assertLostConnection(self, run: Run, pattern: str = LOST) -> str:
        """One ``ERROR:`` line saying what broke; return it.

        It does not name the server yet: see `ErrorTextTests`.
        """
        errors = [line for line in run.lines if "ERROR" in line]
        self.assertEqual(len(errors), 1, f"{run}\nproxy: {self.proxy.events}")
        [error] = errors
        self.assertRegex(error, r"^(\S+: )?ERROR: ", str(run))
        self.assertRegex(error, pattern, str(run))
        return error

    def assertConverged(self) -> Snapshot:
        """Both stores equal, each expected message once, nothing else."""
        local, remote = self.local.snapshot(), self.remote.snapshot()
        self.assertEqual(local, remote)
        found = {path: counts for path, counts in contents(local).items() if counts}
        self.assertEqual(found, {path: counts for path, counts in self.expected.items() if counts})
        return local

    def cut_then_converge(self, fault: Fault, *, pattern: str = LOST) -> Run:
        """A run broken by ``fault`` exits 1 with a clear error; a clean run converges."""
        self.proxy.arm(fault)
        broken = self.imapsync(expect=1)
        self.assertEqual(fault.fired, 1, f"the fault did not fire\n{broken}")
        self.assertLostConnection(broken, pattern)
        self.proxy.disarm()
        clean = self.imapsync()
        self.assertEqual(
            [line for line in clean.lines if re.search("ERROR|WARNING", line)], [], str(clean)
        )
        self.assertConverged()
        # And nothing is left to do.
        again = self.imapsync()
        self.assertFalse([line for line in again.lines if "Added" in line], str(again))
        return broken


class OneShotTests(BrokenTestCase):
    def test_cut_from_the_server_in_a_fetched_literal(self) -> None:
        """(a) The remote's connection breaks in the middle of a message body it sends."""
        self.seed_both()
        self.cut_then_converge(Fault(CUT, DOWN, pattern=FETCH_LITERAL, skip=100_000))

    def test_cut_towards_the_server_in_an_append_literal(self) -> None:
        """(b) It breaks in the middle of a message body sent to the remote (APPEND)."""
        self.seed_both()
        self.cut_then_converge(Fault(CUT, UP, pattern=APPEND_LITERAL, skip=150_000))

    def test_reset_in_the_second_append_literal(self) -> None:
        """A TCP reset, in the second APPEND literal: the first one went through."""
        self.seed_both(big=3)
        self.cut_then_converge(
            Fault(CUT, UP, pattern=APPEND_LITERAL, nth=2, skip=1000, reset=True)
        )

    def test_cut_in_the_tagged_append_response(self) -> None:
        """(c) Cut in the middle of APPEND's tagged OK: the server has the messages,
        imapsync does not know their UIDs.  The next run must not copy them twice."""
        self.seed_both()
        self.cut_then_converge(Fault(CUT, DOWN, pattern=rb"\n\d+ OK \[APPENDUID ", skip=5))

    def test_cut_in_the_tagged_fetch_response(self) -> None:
        """(c) Cut in the middle of the UID FETCH's tagged OK, the bodies received."""
        self.seed_both()
        self.cut_then_converge(Fault(CUT, DOWN, pattern=rb"\n\d+ OK Fetch", skip=6))

    def test_cut_in_a_compressed_stream(self) -> None:
        """With COMPRESS=DEFLATE (the remote's default), cut 100 KB into the
        server's stream: inside the first body it sends."""
        self.config = self.write_config(compress=True)
        self.seed_both()
        self.cut_then_converge(Fault(CUT, DOWN, after=100_000))

    def test_stall_longer_than_the_command_timeout(self) -> None:
        """(d) The remote stops answering mid literal: the run ends within the command
        timeout, with a clear error.  The timeout (120 s) has no option: the run goes
        through TIMEOUT_WRAPPER, which sets it to SHORT_TIMEOUT."""
        self.seed_both()
        fault = Fault(STALL, DOWN, pattern=FETCH_LITERAL, skip=50_000, seconds=30)
        self.proxy.arm(fault)
        argv = self.short_timeout_argv()
        broken = self.run_command(argv, expect=1, timeout=SHORT_TIMEOUT + 15)
        self.assertEqual(fault.fired, 1, str(broken))
        self.assertLess(broken.seconds, SHORT_TIMEOUT + 10, str(broken))
        self.assertLostConnection(
            broken, rf"no answer from the server for {SHORT_TIMEOUT:g} seconds"
        )
        self.proxy.disarm()
        self.proxy.cut_all()
        self.imapsync()
        self.assertConverged()

    def test_stall_shorter_than_the_command_timeout(self) -> None:
        """A stall shorter than the timeout, each way, is only a delay."""
        self.seed_both()
        self.proxy.arm(
            Fault(STALL, DOWN, pattern=FETCH_LITERAL, skip=20_000, seconds=0.5),
            Fault(STALL, UP, pattern=APPEND_LITERAL, skip=20_000, seconds=0.5),
        )
        argv = self.short_timeout_argv()
        self.run_command(argv, expect=0)
        self.assertEqual(len(self.proxy.events), 2, self.proxy.events)
        self.assertConverged()

    def test_trickle(self) -> None:
        """(e) Every byte both ways delivered on its own, from the greeting on."""
        for store, side in ((self.local, "L"), (self.remote, "R")):
            self.seed(store, "INBOX", [message(f"{side}{i}") for i in range(2)], ["\\Flagged"])
        self.proxy.arm(
            Fault(TRICKLE, DOWN, delay=0.0001, every=True),
            Fault(TRICKLE, UP, delay=0.0001, every=True),
        )
        self.imapsync()
        self.assertGreater(self.proxy.armed[0].fired, 0)
        self.assertConverged()


class ErrorTextTests(BrokenTestCase):
    def test_error_names_the_server(self) -> None:
        """The ERROR line says which server's connection broke, and not that it
        closed "cleanly" in the middle of a response."""
        self.seed_both(big=1, small=0)
        self.proxy.arm(Fault(CUT, DOWN, pattern=FETCH_LITERAL, skip=1000))
        error = self.assertLostConnection(self.imapsync(expect=1))
        self.assertRegex(error, r"\bremote\b")
        self.assertNotIn("cleanly", error)


class LiveTests(BrokenTestCase):
    """``imapsync -c CONFIG`` (live mode) behind the proxy."""

    def wait_converged(self, run: Background, timeout: float = 30.0) -> None:
        """Poll both stores (bounded) until they hold what was added, once each."""
        deadline = time.monotonic() + timeout
        expected = {path: counts for path, counts in self.expected.items() if counts}
        local: Snapshot = {}
        remote: Snapshot = {}
        while time.monotonic() < deadline:
            local, remote = self.local.snapshot(), self.remote.snapshot()
            found = {path: counts for path, counts in contents(local).items() if counts}
            if local == remote and found == expected:
                return
            time.sleep(0.2)
        self.fail(
            f"not converged within {timeout} s\nlocal:  {contents(local)}\n"
            f"remote: {contents(remote)}\nexpected: {expected}\n"
            f"proxy: {self.proxy.events}\n{run.describe()}"
        )

    def test_reconnects_and_converges(self) -> None:
        """Connections cut while idle, in a fetched body and in an APPEND: each time
        it says so once, reconnects, and both stores end up equal."""
        self.seed_both(big=1, small=2)
        run = Background(
            self, [sys.executable, "-m", "imapsync", "-c", str(self.config)], self.env
        )
        self.wait_converged(run)
        faults = [
            None,
            Fault(CUT, DOWN, pattern=FETCH_LITERAL, skip=50_000),
            Fault(CUT, UP, pattern=APPEND_LITERAL, skip=50_000, reset=True),
        ]
        reconnected = 0
        for number, fault in enumerate(faults):
            if fault is not None:
                self.proxy.arm(fault)
            big = 300 * 1024 if fault is not None else 0
            store = self.remote if fault is not None and fault.direction == DOWN else self.local
            self.seed(store, "INBOX", [message(f"live {number}", big)])
            other = self.local if store is self.remote else self.remote
            self.seed(other, "INBOX", [message(f"live {number} other")], ["\\Flagged"])
            if fault is None:
                self.proxy.cut_all()
            reconnected = run.wait_for(r"^reconnected$", timeout=30, start=reconnected) + 1
            if fault is not None:
                self.assertEqual(fault.fired, 1, run.describe())
            self.wait_converged(run)
        # Each loss said once (one WARNING), each followed by a reconnection.
        warnings = run.matching(r"^WARNING: .*reconnecting")
        self.assertGreaterEqual(len(warnings), len(faults), run.describe())
        self.assertEqual(len(warnings), len(run.matching(r"^reconnected$")), run.describe())
        self.assertEqual(run.matching(r"Traceback|CRITICAL"), [], run.describe())
        # A cut during a pass is said by that WARNING alone: no ERROR line
        # that would read as fatal while imapsync carries on.
        self.assertEqual(run.matching(r"ERROR"), [], run.describe())
        run.send(signal.SIGTERM)
        self.assertEqual(run.wait(10), 0, run.describe())
