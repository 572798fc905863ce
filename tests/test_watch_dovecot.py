# -*- test-case-name: tests.test_watch_dovecot -*-
"""Live mode end to end: the real command follows two Dovecot stores.

The command runs in the background (``imapsync -c CONFIG``, no
``--oneshot``); the tests change the stores through the harness's own
client and watch the other side, the log lines and the exit status.
Local uses ``/`` as its hierarchy delimiter, remote ``.``.  Every wait is
bounded, and every process a test starts is killed by PID at its end.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from twisted.trial.unittest import SynchronousTestCase

from tests.dovecot import (
    DovecotDaemon,
    DovecotStore,
    MailStore,
    Snapshot,
    make_message,
    require_dovecot,
)

REPOSITORY = Path(__file__).resolve().parent.parent
# A change reaches the other side in about 0.7 s (Dovecot reports it after
# ~0.5 s, imapsync lets events settle for 0.1 s): 10 s is a hang.
PROPAGATION = 10.0
# SIGTERM while idle must end the command within this.
STOP_TIMEOUT = 5.0
# Bound on anything else a process is waited for: a start, a first sync.
RUN_TIMEOUT = 60.0
# Dovecot reports a change ~0.5 s after it; after that long without a log
# line, no pass is running nor about to start.
QUIET = 0.8
STOPPING = "stopping at the next safe point"
# Where a message starts: the line's start, or after twistd's "[namespace#level] ".
LINE_START = r"(?:^|\] )"

# An IMAP tunnel filter: relays both ways unchanged, but holds the
# client's NTH command matching PATTERN (a regex on the command line, tag
# left out) until GO exists, having created MARKER: a test can change a
# store at that exact point. For uncompressed tunnels only (the local
# side's default).
PAUSE_FILTER = r'''
"""usage: pausefilter.py PATTERN NTH MARKER GO -- COMMAND..."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

PATTERN = re.compile(rb"\S+ " + sys.argv[1].encode(), re.I)
NTH, MARKER, GO = int(sys.argv[2]), sys.argv[3], sys.argv[4]
assert sys.argv[5] == "--"
LITERAL = re.compile(rb"\{(\d+)\+?\}\r?\n\Z")
proc = subprocess.Popen(sys.argv[6:], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
signal.signal(signal.SIGTERM, lambda signum, frame: proc.terminate())


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def upstream():
    to_server = proc.stdin.fileno()
    seen, literal, at_start, partial = 0, 0, True, b""
    try:
        while data := os.read(0, 1 << 16):
            pos = 0
            while pos < len(data):
                if literal:
                    taken = min(literal, len(data) - pos)
                    write_all(to_server, data[pos : pos + taken])
                    literal -= taken
                    pos += taken
                    continue
                end = data.find(b"\n", pos)
                if end < 0:
                    partial += data[pos:]
                    break
                line, partial = partial + data[pos : end + 1], b""
                pos = end + 1
                match = PATTERN.match(line) if at_start else None
                found = LITERAL.search(line)
                at_start = found is None
                if found is not None:
                    literal = int(found.group(1))
                if match is not None:
                    seen += 1
                    if seen == NTH:
                        open(MARKER, "w").close()
                        deadline = time.monotonic() + 30
                        while not os.path.exists(GO) and time.monotonic() < deadline:
                            time.sleep(0.01)
                write_all(to_server, line)
    except OSError:
        pass
    finally:
        proc.stdin.close()


threading.Thread(target=upstream, daemon=True).start()
try:
    while chunk := os.read(proc.stdout.fileno(), 1 << 16):
        write_all(1, chunk)
except BrokenPipeError:
    proc.terminate()
sys.exit(proc.wait())
'''


def message(name: str) -> bytes:
    return make_message(f"message {name}", f"body of message {name}")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def uid_of(store: MailStore, mailbox: str, data: bytes) -> int:
    """The UID of the message ``data`` in ``mailbox``."""
    [uid] = [m.uid for m in store.messages(mailbox) if m.sha256 == digest(data)]
    return uid


def count(snapshot: Snapshot) -> int:
    return sum(len(entries) for entries in snapshot.values())


# -- processes ----------------------------------------------------------------


def _start_time(pid: int) -> Optional[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def _descendants(pid: int) -> List[Tuple[int, str]]:
    """(pid, start time) of the processes below ``pid``."""
    children: Dict[int, List[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children[int(stat.rpartition(")")[2].split()[1])].append(int(entry))
    found: List[Tuple[int, str]] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            start = _start_time(child)
            if start is not None:
                found.append((child, start))
                todo.append(child)
    return found


def processes_under(directory: Path) -> List[Tuple[int, str]]:
    """(pid, start time) of the processes whose command line names ``directory``:
    the command, its tunnels and their imap, even once orphaned."""
    needle = os.fsencode(str(directory)) + b"/"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        start = _start_time(int(entry))
        if needle in cmdline and start is not None:
            found.append((int(entry), start))
    return found


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kill_all(processes: Sequence[Tuple[int, str]]) -> None:
    """SIGKILL each (pid, start time) that is still that process."""
    for pid, start in processes:
        if _start_time(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Background:
    """A command running in the background, its output read line by line.

    A thread reads stdout and stderr (merged) and notes when each line
    came; `wait_for` and `wait` are bounded.
    """

    def __init__(
        self, testcase: SynchronousTestCase, argv: Sequence[str], env: Dict[str, str]
    ) -> None:
        self.testcase = testcase
        self.argv = list(argv)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=REPOSITORY,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        testcase.addCleanup(self.kill)
        self.lines: List[str] = []
        self.times: List[float] = []
        self.closed = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.times.append(time.monotonic())
                self._changed.notify_all()
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    @property
    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def describe(self, limit: int = 60) -> str:
        with self._changed:
            tail = self.lines[-limit:]
        return f"{' '.join(self.argv[2:])}:\n" + "\n".join(tail)

    def matching(self, pattern: str) -> List[str]:
        with self._changed:
            return [line for line in self.lines if re.search(pattern, line)]

    def wait_for(self, pattern: str, timeout: float = RUN_TIMEOUT, start: int = 0) -> int:
        """Wait for a line (from index ``start`` on) matching ``pattern``; return its index."""
        deadline = time.monotonic() + timeout
        with self._changed:
            index = start
            while True:
                while index < len(self.lines):
                    if re.search(pattern, self.lines[index]):
                        return index
                    index += 1
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    break
                self._changed.wait(left)
        self.testcase.fail(f"no line matching {pattern!r} within {timeout} s\n{self.describe()}")

    def wait_quiet(self, quiet: float = QUIET, timeout: float = PROPAGATION) -> None:
        """Wait until no line has come for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._changed:
                last = self.times[-1] if self.times else self.started
            if time.monotonic() - last >= quiet:
                return
            time.sleep(0.05)
        self.testcase.fail(f"still logging after {timeout} s\n{self.describe()}")

    def wait_notify_set(self, timeout: float = RUN_TIMEOUT) -> None:
        """Wait (``--debug`` traffic) until both sides have accepted NOTIFY SET
        (sent before the first pass) and the first pass is over: every later
        change is an event for a pass of its own."""
        for side in ("local", "remote"):
            index = self.wait_for(rf"{LINE_START}(?:{side}: )+C: (\S+) NOTIFY SET ", timeout)
            with self._changed:
                match = re.search(r"C: (\S+) NOTIFY", self.lines[index])
            assert match is not None
            tag = re.escape(match.group(1))
            self.wait_for(
                rf"{LINE_START}(?:{side}: )+S: (?:.*\W)?{tag} OK",
                timeout,
                start=index,
            )
        self.wait_quiet()

    def send(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        """Wait for the exit status (negative: killed by that signal)."""
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.testcase.fail(f"still running after {timeout} s\n{self.describe()}")
        self._reader.join(timeout)
        return status

    def kill(self) -> None:
        """SIGKILL the command and whatever it started, by PID."""
        children = _descendants(self.proc.pid) if self.proc.poll() is None else []
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        kill_all(children)
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# -- a TCP relay that can be cut -------------------------------------------------


class Forwarder:
    """A TCP relay on 127.0.0.1 in front of a server.

    `refuse` closes the listening socket (new connections are refused, as
    by a server that is down), `cut` the relayed connections too;
    `restore` listens again on the same port, in front of ``port``.
    """

    def __init__(self, port: int) -> None:
        self.target = port
        self._lock = threading.Lock()
        self._sockets: List[socket.socket] = []
        self._listener: Optional[socket.socket] = None
        self._running = threading.Event()
        self.port = 0
        self._listen()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener
        running = threading.Event()
        running.set()
        self._running = running
        threading.Thread(target=self._accept, args=(listener, running), daemon=True).start()

    def _accept(self, listener: socket.socket, running: threading.Event) -> None:
        while running.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            for source, destination in ((client, server), (server, client)):
                threading.Thread(
                    target=self._pipe, args=(source, destination), daemon=True
                ).start()

    def _pipe(self, source: socket.socket, destination: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                destination.sendall(data)
        except OSError:
            pass
        for s in (source, destination):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def refuse(self) -> None:
        """Refuse new connections; relayed ones go on."""
        self._running.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def cut(self) -> None:
        self.refuse()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self, port: int) -> None:
        self.target = port
        self._listen()


# -- the test base ---------------------------------------------------------------


class LiveTestCase(SynchronousTestCase):
    """Two fresh tunnel stores, a config file and an environment per test."""

    def setUp(self) -> None:
        require_dovecot(self)
        self.directory = Path(tempfile.mkdtemp(prefix="imapsync-live-"))
        self.addCleanup(self._cleanup)
        self.local = DovecotStore(self.directory / "local", "/", "local")
        self.remote: MailStore = DovecotStore(self.directory / "remote", ".", "remote")
        self.env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
            path = self.directory / name.lower()
            path.mkdir()
            self.env[name] = str(path)
        for name in ("IMAPSYNC_DEBUG", "PYTHONWARNINGS"):
            self.env.pop(name, None)
        self.config = self.write_config()

    def _cleanup(self) -> None:
        # What a test left running (orphaned tunnels included), by PID.
        kill_all(processes_under(self.directory))
        shutil.rmtree(self.directory, ignore_errors=True)

    def write_config(
        self,
        *,
        local_command: Optional[str] = None,
        remote_server: Optional[str] = None,
        name: str = "config",
    ) -> str:
        """A config file: tunnels to the test's stores unless replaced."""
        remote = remote_server or f"type = tunnel\ncommand = {self.remote.tunnel_command}"
        path = self.directory / name
        path.write_text(
            f"database = {self.directory / 'state.db'}\n"
            f"[local]\ntype = tunnel\ncommand = {local_command or self.local.tunnel_command}\n"
            f"[remote]\n{remote}\n"
        )
        # It may hold a password.
        os.chmod(path, 0o600)
        return str(path)

    def start(self, *args: str, config: Optional[str] = None) -> Background:
        """``imapsync -c CONFIG ARGS`` in live mode, in the background."""
        argv = [sys.executable, "-m", "imapsync", "-c", config or self.config, *args]
        return Background(self, argv, self.env)

    def oneshot(self, *args: str, config: Optional[str] = None) -> Background:
        """``imapsync -c CONFIG --oneshot ARGS``, run to its end."""
        run = self.start("--oneshot", *args, config=config)
        run.wait()
        return run

    def eventually(
        self, check: Callable[[], bool], what: str, run: Background, timeout: float = PROPAGATION
    ) -> float:
        """Wait until ``check()``; return how long it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if check():
                return time.monotonic() - start
            time.sleep(0.05)
        self.fail(f"{what}: not within {timeout} s\n{run.describe()}")

    def wait_in_sync(
        self, run: Background, expected: Optional[Snapshot] = None, timeout: float = PROPAGATION
    ) -> Snapshot:
        """Wait until both stores hold the same (or ``expected``) messages and flags."""
        snapshots: List[Snapshot] = []

        def check() -> bool:
            local, remote = self.local.snapshot(), self.remote.snapshot()
            snapshots[:] = [local, remote]
            return local == remote and (expected is None or local == expected)

        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if check():
                return snapshots[0]
            time.sleep(0.05)
        local, remote = snapshots
        self.fail(
            f"stores not in sync within {timeout} s\nlocal:    {local}\nremote:   {remote}\n"
            f"expected: {expected}\n{run.describe()}"
        )

    def wait_for_message(
        self, run: Background, store: MailStore, mailbox: str, data: bytes, timeout: float
    ) -> float:
        """Wait until ``data`` is in ``mailbox`` of ``store``, looking at that store
        only: reading a mailbox updates Dovecot's mailbox list index, which
        NOTIFY reports to the other sessions of that store as a change."""
        return self.eventually(
            lambda: digest(data) in {m.sha256 for m in store.messages(mailbox)},
            f"{data.splitlines()[2].decode()} in {mailbox}",
            run,
            timeout,
        )

    def assertStopsCleanly(self, run: Background, timeout: float = STOP_TIMEOUT) -> float:
        """SIGTERM: the command says it stops, exits 0 within ``timeout``, leaves
        no tunnel behind; return how long it took."""
        start = time.monotonic()
        run.send(signal.SIGTERM)
        status = run.wait(timeout)
        took = time.monotonic() - start
        self.assertEqual(status, 0, run.describe())
        self.assertIn(STOPPING, run.lines, run.describe())
        self.assertNoTraceback(run)
        deadline = time.monotonic() + 5
        while (left := self.tunnels()) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(left, [], "tunnels left after the command exited")
        return took

    def tunnels(self) -> List[Tuple[int, str]]:
        """The tunnels (and their imap) into the test's stores."""
        return processes_under(self.directory / "local") + processes_under(
            self.directory / "remote"
        )

    def assertNoTraceback(self, run: Background) -> None:
        self.assertNotIn("Traceback", run.text, run.describe())


class PropagationTests(LiveTestCase):
    def test_changes_on_each_side_reach_the_other(self) -> None:
        """A new message, a flag change, an expunge and a new mailbox, each way."""
        local, remote = self.local, self.remote
        local.append_many("INBOX", [message("L1"), (message("L2"), ["\\Seen"], None)])
        local.append("INBOX", message("L3"))
        remote.append_many("INBOX", [message("R1"), message("R2")])
        remote.create_mailbox("Archive")
        remote.append("Archive", message("R3"))
        run = self.start("--debug")
        run.wait_notify_set()
        first = self.wait_in_sync(run)
        self.assertEqual(len(first[("INBOX",)]), 5)
        self.assertEqual(len(first[("Archive",)]), 1)

        # Local changes reach the remote.
        local.append("INBOX", message("L4"))
        local.set_flags("INBOX", uid_of(local, "INBOX", message("L1")), ["\\Flagged", "$Label1"])
        local.expunge("INBOX", uid_of(local, "INBOX", message("R1")))
        local.create_mailbox("Projects/2025")
        local.append("Projects/2025", message("L5"), ["\\Seen"])
        expected = local.snapshot()
        synced = self.wait_in_sync(run, expected)
        self.assertIn(b"Projects.2025", {i.raw for i in remote.list_mailboxes().values()})
        self.assertEqual(
            {m.flags for m in remote.messages("INBOX") if m.sha256 == digest(message("L1"))},
            {frozenset({"\\Flagged", "$Label1"})},
        )
        self.assertEqual(len(synced[("INBOX",)]), 5)
        run.wait_quiet()

        # Remote changes reach the local side.
        remote.append("Archive", message("R4"), ["\\Answered"])
        remote.set_flags("INBOX", uid_of(remote, "INBOX", message("L3")), ["\\Seen"])
        remote.expunge("INBOX", uid_of(remote, "INBOX", message("L2")))
        remote.create_mailbox("Lists.Twisted")
        remote.append("Lists.Twisted", message("R5"))
        expected = remote.snapshot()
        self.wait_in_sync(run, expected)
        self.assertIn("Lists/Twisted", local.list_mailboxes())
        self.assertEqual(
            {m.flags for m in local.messages("INBOX") if m.sha256 == digest(message("L3"))},
            {frozenset({"\\Seen"})},
        )
        self.assertEqual(run.matching(r"ERROR|WARNING"), [])
        self.assertStopsCleanly(run)


class StopTests(LiveTestCase):
    def test_sigterm_while_idle(self) -> None:
        self.local.append("INBOX", message("1"))
        run = self.start("--debug")
        run.wait_notify_set()
        self.wait_in_sync(run)
        run.wait_quiet(0.3)
        # Idle means asleep: next to no CPU time over half a second.
        before = _cpu_seconds(run.proc.pid)
        time.sleep(0.5)
        self.assertLess(_cpu_seconds(run.proc.pid) - before, 0.1)
        took = self.assertStopsCleanly(run)
        self.assertLess(took, STOP_TIMEOUT)

    def test_sigterm_during_a_large_first_sync_then_a_oneshot_run(self) -> None:
        seeded: Dict[Tuple[str, ...], Set[str]] = {}
        for store, name, number in (
            (self.local, "INBOX", 1000),
            (self.local, "Archive", 1000),
            (self.remote, "Lists", 1000),
        ):
            if name != "INBOX":
                store.create_mailbox(name)
            bodies = [message(f"{name} {i}") for i in range(number)]
            store.append_many(name, bodies)
            seeded[(name,)] = {digest(body) for body in bodies}
        total = sum(len(d) for d in seeded.values())
        run = self.start()
        run.wait_for(r"^(local|remote)\(\w+\): Added \d+ UID")
        self.assertStopsCleanly(run, timeout=10)
        # It stopped before the end, at a safe point.
        self.assertLess(count(self.local.snapshot()) + count(self.remote.snapshot()), 2 * total)

        rerun = self.oneshot()
        self.assertEqual(rerun.proc.returncode, 0, rerun.describe())
        self.assertEqual(rerun.matching(r"ERROR|WARNING|Traceback"), [], rerun.describe())
        local, remote = self.local.snapshot(), self.remote.snapshot()
        self.assertEqual(local, remote)
        for path, digests in seeded.items():
            copies = collections.Counter(entry[0] for entry in local[path])
            self.assertEqual(set(copies), digests, path)
            self.assertEqual(set(copies.values()), {1}, f"duplicates in {path}")


class ReconnectTests(LiveTestCase):
    def test_server_restarted_while_running(self) -> None:
        """The remote is a network daemon: stopped, changed meanwhile, started again."""
        daemon = DovecotDaemon(self.directory / "daemon", {"alice": "secret"}, separator=".")
        daemon.start()
        self.addCleanup(daemon.stop)
        assert daemon.imap_port is not None
        # Each start takes new ports: the config names a relay's port instead.
        relay = Forwarder(daemon.imap_port)
        self.addCleanup(relay.cut)
        self.remote = daemon.store("alice")
        config = self.write_config(
            remote_server=(
                f"type = imap\nhost = 127.0.0.1\nport = {relay.port}\nSTARTTLS = NO\n"
                "username = alice\npassword = secret"
            ),
        )
        self.local.append("INBOX", message("L1"))
        self.remote.append("INBOX", message("R1"))
        run = self.start("--debug", config=config)
        run.wait_notify_set()
        self.wait_in_sync(run)

        relay.refuse()
        daemon.stop()
        lost = run.wait_for(r"^WARNING: .*reconnecting")
        self.local.append("INBOX", message("L2"))
        self.local.set_flags("INBOX", uid_of(self.local, "INBOX", message("R1")), ["\\Seen"])
        self.local.create_mailbox("Offline")
        self.local.append("Offline", message("L3"))
        daemon.start()
        assert daemon.imap_port is not None
        # At least one attempt fails (refused), then the server is back.
        run.wait_for(r"still failing", timeout=10, start=lost)
        relay.restore(daemon.imap_port)
        back = run.wait_for(r"^reconnected$", timeout=15, start=lost)
        self.wait_in_sync(run, self.local.snapshot())

        # Said once, not at every attempt; attempts spaced out (1 s, then 2 s).
        self.assertEqual(len(run.matching(r"WARNING")), 1, run.describe())
        self.assertLessEqual(len(run.matching(r"still failing")), 3, run.describe())
        self.assertGreaterEqual(run.times[back] - run.times[lost], 2.5)
        # NOTIFY is set again on the new connection: remote changes follow.
        run.wait_notify_set()
        run.wait_quiet()
        self.remote.append("INBOX", message("R2"))
        self.wait_in_sync(run, self.remote.snapshot())
        self.assertStopsCleanly(run)


class PollingTests(LiveTestCase):
    """A side without NOTIFY (hidden by a tunnel filter)."""

    def setUp(self) -> None:
        super().setUp()
        self.config = self.write_config(
            local_command=self.local.tunnel_command_without(["NOTIFY"])
        )

    def test_refused_without_watch(self) -> None:
        run = self.start()
        self.assertEqual(run.wait(), 1, run.describe())
        errors = run.matching(r"ERROR")
        self.assertEqual(len(errors), 1, run.describe())
        self.assertIn("--watch", errors[0])
        self.assertIn("NOTIFY", errors[0])
        self.assertNoTraceback(run)

    def test_polls_with_watch(self) -> None:
        self.local.append("INBOX", message("L1"))
        run = self.start("--watch=1")
        self.wait_in_sync(run)
        self.local.append("INBOX", message("L2"))
        self.wait_in_sync(run, self.local.snapshot(), timeout=5)
        self.remote.set_flags("INBOX", uid_of(self.remote, "INBOX", message("L2")), ["\\Seen"])
        self.wait_in_sync(run, self.remote.snapshot(), timeout=5)
        self.assertStopsCleanly(run)

    def test_sighup_syncs_now(self) -> None:
        self.local.append("INBOX", message("L1"))
        run = self.start("--watch=3600", "--debug")
        self.wait_in_sync(run)
        # The first pass is over (no traffic), the next poll an hour away.
        run.wait_quiet(0.3)
        self.local.append("INBOX", message("L2"))
        expected = self.local.snapshot()
        time.sleep(1.5)
        self.assertNotEqual(self.remote.snapshot(), expected)
        run.send(signal.SIGHUP)
        self.wait_in_sync(run, expected, timeout=5)
        self.assertIsNone(run.proc.poll())
        self.assertStopsCleanly(run)


class TwistdTests(LiveTestCase):
    """``twistd -n imapsync -c CONFIG``: the plugin in the foreground."""

    def twistd(self, *args: str) -> Background:
        # `python -m twisted` is `twist`, which has no -n: run twistd's own entry point.
        argv = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "imapsync",
            "-c",
            self.config,
            *args,
        ]
        return Background(self, argv, self.env)

    def test_live_then_sigterm(self) -> None:
        self.local.append("INBOX", message("L1"))
        run = self.twistd("--debug")
        run.wait_notify_set()
        self.assertEqual(len(self.wait_in_sync(run)[("INBOX",)]), 1)
        self.remote.append("INBOX", message("R1"))
        self.wait_in_sync(run, self.remote.snapshot())
        self.assertTrue(run.matching(r"local\(INBOX\): Added 1 UID\(s\) 2 <- 2"), run.describe())
        run.send(signal.SIGTERM)
        status = run.wait(STOP_TIMEOUT)
        # twistd ends itself with the signal that stopped it (Twisted's
        # _exitWithSignal), once the service has stopped.
        self.assertIn(status, (0, -signal.SIGTERM), run.describe())
        self.assertTrue(run.matching(STOPPING), run.describe())
        self.assertTrue(run.matching(r"Server Shut Down"), run.describe())
        self.assertEqual(run.matching(r"Traceback|imapsync failed|CRITICAL|ERROR"), [])

    def test_log_lines_name_the_server_and_mailbox(self) -> None:
        # twistd's own log observer, not imapsync's: the prefix is in the message.
        self.local.append("INBOX", message("L1"))
        run = self.twistd("--oneshot")
        self.assertEqual(run.wait(), 0, run.describe())
        self.assertTrue(run.matching(r"remote\(INBOX\): Added 1 UID\(s\) 1 -> 1"), run.describe())


class RaceTests(LiveTestCase):
    """Changes that land at an awkward moment of a pass.

    Where a test must not look at a store (reading a mailbox makes Dovecot
    report it as changed, which would hide the bug), it waits for the
    message on the other side only.  A filter on the local tunnel holds
    one of imapsync's commands while the test changes a store.
    """

    # Ten times the usual delay: what has not arrived by then waits for
    # another, unrelated change.
    LATE = 7.0

    def hold(self, pattern: str, nth: int) -> Tuple[str, Path, Path]:
        """A config whose local tunnel holds the ``nth`` command matching
        ``pattern``; return it, the marker (held) and the go file."""
        script = self.directory / "pausefilter.py"
        script.write_text(PAUSE_FILTER)
        marker, go = self.directory / "held", self.directory / "go"
        command = shlex.join(
            [sys.executable, "-I", str(script), pattern, str(nth), str(marker), str(go), "--"]
            + self.local.tunnel_argv
        )
        return self.write_config(local_command=command, name="held-config"), marker, go

    def wait_held(self, run: Background, marker: Path) -> None:
        self.eventually(marker.exists, "the held command", run, timeout=RUN_TIMEOUT)

    def test_change_before_notify_set(self) -> None:
        """Changed during the first pass, after its mailbox's turn: still followed."""
        self.local.append("INBOX", message("L1"))
        self.local.create_mailbox("Zbox")
        self.local.append("Zbox", message("Z1"))
        # INBOX is synced first: hold the copy of Z1, change INBOX meanwhile.
        config, marker, go = self.hold(r"UID FETCH \S+ \(.*BODY\.PEEK", 2)
        run = self.start("--debug", config=config)
        self.wait_held(run, marker)
        self.remote.append("INBOX", message("R1"))
        go.touch()
        run.wait_notify_set()
        self.wait_for_message(run, self.local, "INBOX", message("R1"), self.LATE)
        self.assertStopsCleanly(run)

    def test_change_in_the_selected_mailbox_at_the_end_of_a_pass(self) -> None:
        self.local.append("INBOX", message("L1"))
        # The 1st UNSELECT ends the first pass; the 2nd the pass for R1.
        config, marker, go = self.hold("UNSELECT", 2)
        run = self.start("--debug", config=config)
        run.wait_notify_set()
        self.remote.append("INBOX", message("R1"))
        self.wait_held(run, marker)
        # That pass has synced INBOX and not yet left it.
        self.local.append("INBOX", message("L2"))
        go.touch()
        self.wait_for_message(run, self.remote, "INBOX", message("L2"), self.LATE)
        self.wait_in_sync(run)
        self.assertStopsCleanly(run)

    def test_message_arriving_while_its_mailbox_is_copied(self) -> None:
        self.local.append("INBOX", message("L1"))
        # The 1st copy is L1's in the first pass; the 2nd L2's.
        config, marker, go = self.hold(r"UID FETCH \S+ \(.*BODY\.PEEK", 2)
        run = self.start("--debug", config=config)
        run.wait_notify_set()
        self.local.append("INBOX", message("L2"))
        self.wait_held(run, marker)
        self.local.append("INBOX", message("L3"))
        go.touch()
        self.wait_for_message(run, self.remote, "INBOX", message("L3"), self.LATE)
        run.wait_quiet()
        self.assertEqual(self.local.snapshot(), self.remote.snapshot())
        self.assertEqual(run.matching(r"WARNING|ERROR"), [], run.describe())
        self.assertStopsCleanly(run)
