"""Live mode against in-memory servers: events, polling, reconnects, stop."""

from __future__ import annotations

import tempfile
from typing import Any, List, Optional

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from imapsync.engine.report import Reporter
from imapsync.engine.sync import SyncOptions
from imapsync.state import StateStore
from imapsync.watch import FatalWatchError, TemporaryWatchError, Watcher
from tests.fakeserver import DEFAULT_CAPABILITIES, FakeNetwork, MailStore


def message(n: int) -> bytes:
    return b"Subject: live %d\r\n\r\nbody %d\r\n" % (n, n)


class LiveHarness:
    def __init__(self, capabilities: Optional[List[bytes]] = None, **watcher: Any) -> None:
        self.clock = Clock()
        self.net = FakeNetwork(self.clock)
        self.local = MailStore(separator=b"/")
        self.remote = MailStore(separator=b".")
        self.store = StateStore.open(tempfile.mkdtemp(prefix="imapsync-watch-") + "/db")
        self.opened = 0
        self.refuse = False
        server_options = {} if capabilities is None else {"capabilities": capabilities}

        def open_side(side: str) -> Deferred[Any]:
            self.opened += 1
            if self.refuse:
                from imapsync.imap.errors import ConnectionLostError

                d: Deferred[Any] = Deferred()
                d.errback(ConnectionLostError("connection refused"))
                return d
            store = self.local if side == "local" else self.remote
            return self.net.open(store, side, **server_options)

        self.watcher = Watcher(
            self.clock, self.store, Reporter(), open_side, SyncOptions(), **watcher
        )
        self.done = Deferred.fromCoroutine(self.watcher.run())
        self.result: List[object] = []
        self.done.addBoth(self.result.append)

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass, moving bytes as they come."""
        target = self.clock.seconds() + seconds
        waiter: Deferred[None] = Deferred()
        self.clock.callLater(seconds, waiter.callback, None)
        self.net.run(waiter)
        assert self.clock.seconds() >= target

    def stop(self) -> None:
        self.net.run(self.watcher.stop())


class LiveModeTests(SynchronousTestCase):
    def test_first_sync_then_events_propagate(self) -> None:
        h = LiveHarness()
        h.local.append(b"INBOX", message(1))
        h.advance(1)
        self.assertEqual(len(h.remote.messages(b"INBOX")), 1)
        # Changes on both sides while connected.
        h.remote.append(b"INBOX", message(2), [b"\\Seen"])
        h.local.create(b"New/Box")
        h.advance(1)
        self.assertEqual(h.local.snapshot(), h.remote.snapshot())
        self.assertTrue(h.remote.exists(b"New.Box"))
        uid = sorted(h.local.messages(b"INBOX"))[0]
        h.local.set_flags(b"INBOX", uid, [b"\\Flagged"])
        h.local.expunge(b"INBOX", sorted(h.local.messages(b"INBOX"))[1])
        h.advance(1)
        self.assertEqual(h.local.snapshot(), h.remote.snapshot())
        self.assertEqual(len(h.remote.messages(b"INBOX")), 1)
        h.stop()
        self.assertEqual(h.result, [None])

    def test_noop_when_idle(self) -> None:
        h = LiveHarness(idle_noop=60)
        commands: List[bytes] = []
        h.remote.on_command(lambda name, raw: commands.append(name))
        h.advance(1)
        del commands[:]
        h.advance(58)
        self.assertNotIn(b"NOOP", commands)
        h.advance(2)
        self.assertEqual(commands, [b"NOOP"])
        h.stop()

    def test_without_notify_and_without_polling_refuses(self) -> None:
        caps = [c for c in DEFAULT_CAPABILITIES if c != b"NOTIFY"]
        h = LiveHarness(capabilities=caps)
        h.advance(1)
        self.assertEqual(len(h.result), 1)
        failure = h.result[0]
        self.assertTrue(failure.check(FatalWatchError))  # type: ignore[union-attr]
        self.assertIn("--watch", str(failure.value))  # type: ignore[union-attr]

    def test_polls_without_notify(self) -> None:
        caps = [c for c in DEFAULT_CAPABILITIES if c != b"NOTIFY"]
        h = LiveHarness(capabilities=caps, poll=30.0)
        h.advance(1)
        h.local.append(b"INBOX", message(3))
        h.advance(10)
        self.assertEqual(len(h.remote.messages(b"INBOX")), 0)
        h.advance(25)
        self.assertEqual(len(h.remote.messages(b"INBOX")), 1)
        h.stop()

    def test_reconnects_with_backoff_and_resyncs(self) -> None:
        h = LiveHarness()
        h.advance(1)
        opened = h.opened
        h.refuse = True
        h.remote.disconnect_all()
        h.local.append(b"INBOX", message(4))
        h.advance(0.5)
        self.assertEqual(h.result, [])
        # Attempts at 1, 2, 4, 8 s: still refused.
        h.advance(10)
        attempts = h.opened - opened
        self.assertGreaterEqual(attempts, 3)
        self.assertLessEqual(attempts, 10)
        h.refuse = False
        h.advance(20)
        self.assertEqual(len(h.remote.messages(b"INBOX")), 1)
        h.stop()
        self.assertEqual(h.result, [None])

    def test_stop_waits_for_a_safe_point(self) -> None:
        h = LiveHarness()
        h.local.append_many(b"INBOX", [(message(i), [], None) for i in range(50)])
        stopped = h.watcher.stop()
        h.net.run(stopped)
        # Whatever was copied is mapped: a later run copies the rest once.
        count = len(h.remote.messages(b"INBOX"))
        idx = h.store.mailbox(b"INBOX")
        mapped = len(h.store.mapping(idx.idx)) if idx else 0
        self.assertEqual(count, mapped)


class TemporaryFailureTests(SynchronousTestCase):
    def test_never_connected_is_temporary(self) -> None:
        clock = Clock()
        from imapsync.imap.errors import ConnectionLostError

        def refuse(side: str) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            d.errback(ConnectionLostError("cannot connect to imap.example.org:993"))
            return d

        store = StateStore.open(tempfile.mkdtemp(prefix="imapsync-watch-") + "/db")
        watcher = Watcher(clock, store, Reporter(), refuse, SyncOptions())
        d = Deferred.fromCoroutine(watcher.run())
        failure = self.failureResultOf(d, TemporaryWatchError)
        self.assertIn("cannot connect", str(failure.value))
