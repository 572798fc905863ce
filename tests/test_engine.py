"""The sync engine against two in-memory QRESYNC servers (tests/fakeserver.py).

Fast tests of the algorithm: what ends up on both servers and in the
database, including crashes at chosen commands and a hypothesis state
machine of random changes, crashes and syncs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from imapsync.engine import mailbox
from imapsync.engine.commands import CommandError, delete, rename
from imapsync.engine.listing import SideSpec
from imapsync.engine.report import Reporter
from imapsync.engine.sync import Synchronizer, SyncOptions
from imapsync.imap.errors import CapabilityMissingError, IMAPError
from imapsync.state import StateStore
from tests.fakeserver import DEFAULT_CAPABILITIES, FakeNetwork, MailStore

FLAGS = [b"\\Seen", b"\\Flagged", b"\\Answered", b"$Label1", b"$Work"]


def message(n: int, size: int = 200) -> bytes:
    filler = b"x" * max(0, size - 60)
    return b"Subject: message %d\r\nMessage-ID: <%d@test>\r\n\r\n%s\r\n" % (n, n, filler)


class Harness:
    """Two fake servers, a database and a way to run the engine on them."""

    def __init__(self, remote_separator: bytes = b".") -> None:
        self.clock = Clock()
        self.net = FakeNetwork(self.clock)
        self.local = MailStore(separator=b"/")
        self.remote = MailStore(separator=remote_separator)
        self.path = tempfile.mkdtemp(prefix="imapsync-engine-") + "/state.db"
        self.store = StateStore.open(self.path)
        self.events: List[dict] = []
        self.commands: List[Tuple[str, bytes]] = []
        self.local.on_command(lambda name, raw: self.commands.append(("local", name)))
        self.remote.on_command(lambda name, raw: self.commands.append(("remote", name)))

    def stores(self) -> Dict[str, MailStore]:
        return {"local": self.local, "remote": self.remote}

    def sync(self, pause: Any = mailbox.no_pause, **options: Any) -> Tuple[int, Reporter]:
        """One engine run; returns (mailboxes failed, reporter)."""
        reporter = Reporter()
        synchronizer = Synchronizer(
            self.store,
            reporter,
            lambda side: self.net.open(self.stores()[side], side),
            SyncOptions(**options),
            pause=pause,
        )

        async def go() -> int:
            try:
                return await synchronizer.run()
            finally:
                await _close(synchronizer)

        self.events.clear()
        globalLogPublisher.addObserver(self.events.append)
        try:
            failed = self.net.run(Deferred.fromCoroutine(go()))
        finally:
            globalLogPublisher.removeObserver(self.events.append)
        return failed, reporter

    def lines(self, level: Optional[LogLevel] = None) -> List[str]:
        from twisted.logger import formatEvent

        return [
            formatEvent(e)
            for e in self.events
            if e.get("log_namespace") == "imapsync"
            and (level is None or e.get("log_level") == level)
        ]

    def assert_equal(self, test: SynchronousTestCase) -> None:
        test.assertEqual(self.local.snapshot(), self.remote.snapshot())


async def _close(synchronizer: Synchronizer) -> None:
    for session in synchronizer.sessions:
        try:
            await session.logout()
        except Exception:
            pass


def bodies(store: MailStore, name: bytes) -> Counter[str]:
    return Counter(hashlib.sha256(m.body).hexdigest() for m in store.messages(name).values())


class FirstSyncTests(SynchronousTestCase):
    def test_copies_both_ways_and_creates_mailboxes(self) -> None:
        h = Harness()
        h.local.append_many(b"INBOX", [(message(i), [FLAGS[i % 5]], None) for i in range(10)])
        h.local.create(b"Work/Projects")
        h.local.subscribe(b"Work/Projects")
        h.local.append(b"Work/Projects", message(100), [b"$Work"])
        h.remote.append_many(b"INBOX", [(message(i), [], None) for i in range(50, 53)])
        failed, reporter = h.sync()
        self.assertEqual(failed, 0)
        h.assert_equal(self)
        self.assertTrue(h.remote.exists(b"Work.Projects"))
        self.assertIn(b"Work.Projects", h.remote.subscriptions)
        self.assertEqual(reporter.totals["remote"].added, 11)
        self.assertEqual(reporter.totals["local"].added, 3)
        self.assertIn("remote(INBOX): Added 10 UID(s) 1:10 -> 4:13", h.lines())
        self.assertIn("local(INBOX): Added 3 UID(s) 11:13 <- 1:3", h.lines())

    def test_copied_messages_are_not_searched_again(self) -> None:
        """After the copy, the next pass searches only above the UIDNEXT it had read."""
        h = Harness()
        h.local.append_many(b"INBOX", [(message(i), [], None) for i in range(10)])
        searches: List[bytes] = []

        def record(name: bytes, raw: bytes) -> None:
            if name == b"UID SEARCH":
                searches.append(raw)

        h.local.on_command(record)
        h.sync()
        h.assert_equal(self)
        self.assertEqual(len(searches), 1, searches)
        self.assertIn(b"UID 1:10", searches[0])

    def test_internaldate_and_keywords_survive(self) -> None:
        h = Harness()
        h.local.append(
            b"INBOX", message(1), [b"$Label1", b"\\Seen"], b"01-Jan-2020 10:00:00 +0100"
        )
        h.sync()
        self.assertEqual(h.local.snapshot(internaldate=True), h.remote.snapshot(internaldate=True))

    def test_second_run_with_nothing_to_do_selects_nothing(self) -> None:
        h = Harness()
        h.local.append_many(b"INBOX", [(message(i), [], None) for i in range(5)])
        h.local.create(b"A")
        h.sync()
        h.commands.clear()
        failed, reporter = h.sync()
        self.assertEqual(failed, 0)
        names = [name for _, name in h.commands]
        self.assertNotIn(b"SELECT", names)
        self.assertNotIn(b"APPEND", names)
        self.assertEqual(reporter.totals["local"].added + reporter.totals["remote"].added, 0)


class ChangeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.uids = self.h.local.append_many(b"INBOX", [(message(i), [], None) for i in range(10)])
        self.h.sync()
        self.ruids = sorted(self.h.remote.messages(b"INBOX"))

    def test_flags_both_ways(self) -> None:
        h = self.h
        h.local.set_flags(b"INBOX", self.uids[0], [b"\\Seen", b"$Label1"])
        h.remote.set_flags(b"INBOX", self.ruids[1], [b"\\Flagged"])
        h.sync()
        h.assert_equal(self)
        self.assertEqual(h.remote.messages(b"INBOX")[self.ruids[0]].flags, {b"\\Seen", b"$Label1"})
        self.assertEqual(h.local.messages(b"INBOX")[self.uids[1]].flags, {b"\\Flagged"})

    def test_conflict_takes_the_union_with_a_warning(self) -> None:
        h = self.h
        h.local.set_flags(b"INBOX", self.uids[2], [b"\\Seen"])
        h.remote.set_flags(b"INBOX", self.ruids[2], [b"\\Flagged"])
        h.sync()
        h.assert_equal(self)
        self.assertEqual(h.local.messages(b"INBOX")[self.uids[2]].flags, {b"\\Seen", b"\\Flagged"})
        warnings = h.lines(LogLevel.warn)
        self.assertTrue(any("Conflicting flag update in INBOX" in w for w in warnings), warnings)

    def test_many_changes_go_in_slices(self) -> None:
        """Changes are propagated a slice at a time, conflicts across slices included."""
        self.patch(mailbox, "FLAG_SLICE", 3)
        h = self.h
        for i in range(0, 10, 2):
            h.local.set_flags(b"INBOX", self.uids[i], [b"$Work"])
        for i in range(1, 10, 3):
            h.remote.set_flags(b"INBOX", self.ruids[i], [b"\\Answered"])
        h.local.set_flags(b"INBOX", self.uids[9], [b"\\Seen"])
        h.remote.set_flags(b"INBOX", self.ruids[9], [b"\\Flagged"])
        pauses: List[int] = []

        async def pause() -> None:
            pauses.append(len(h.commands))

        h.sync(pause=pause)
        h.assert_equal(self)
        # 6 local changes in 2 slices, then 4 remote ones in 2: the reactor
        # may run before every slice but the first, with STOREs in between.
        self.assertEqual(len(pauses), 4)
        self.assertEqual(len(set(pauses)), 4)
        flags = {i: h.local.messages(b"INBOX")[self.uids[i]].flags for i in range(10)}
        self.assertEqual(flags[0], {b"$Work"})
        self.assertEqual(flags[1], {b"\\Answered"})
        self.assertEqual(flags[4], {b"$Work", b"\\Answered"})
        self.assertEqual(flags[9], {b"\\Seen", b"\\Flagged"})

    def test_expunges_both_ways(self) -> None:
        h = self.h
        h.local.expunge(b"INBOX", self.uids[:2])
        h.remote.expunge(b"INBOX", self.ruids[5])
        h.remote.expunge(b"INBOX", self.ruids[0])  # gone on both sides
        h.sync()
        h.assert_equal(self)
        self.assertEqual(len(h.local.messages(b"INBOX")), 7)
        self.assertEqual(len(h.store.mapping(h.store.mailbox(b"INBOX").idx)), 7)

    def test_expunge_wins_over_flag_change(self) -> None:
        h = self.h
        h.local.expunge(b"INBOX", self.uids[3])
        h.remote.set_flags(b"INBOX", self.ruids[3], [b"\\Seen"])
        h.sync()
        h.assert_equal(self)
        self.assertNotIn(self.ruids[3], h.remote.messages(b"INBOX"))

    def test_change_during_the_run_is_not_lost(self) -> None:
        h = self.h
        h.local.set_flags(b"INBOX", self.uids[4], [b"\\Seen"])
        fired = []

        def meanwhile(name: bytes, raw: bytes) -> None:
            if name == b"UID STORE" and not fired:
                fired.append(True)
                h.remote.set_flags(b"INBOX", self.ruids[6], [b"$Meanwhile"])
                h.remote.append(b"INBOX", message(999))

        h.remote.on_command(meanwhile)
        h.sync()
        self.assertTrue(fired)
        h.assert_equal(self)
        self.assertIn(b"$Meanwhile", h.local.messages(b"INBOX")[self.uids[6]].flags)
        # Nothing left over for the next run.
        h.commands.clear()
        h.sync()
        self.assertNotIn(b"SELECT", [n for _, n in h.commands])

    def test_uidvalidity_change_stops_that_mailbox(self) -> None:
        h = self.h
        h.local.create(b"Other")
        h.sync()
        h.remote.reset_uidvalidity(b"INBOX")
        h.local.append(b"Other", message(77))
        before = (h.local.snapshot(), h.remote.snapshot())
        failed, reporter = h.sync()
        self.assertEqual(failed, 1)
        errors = h.lines(LogLevel.error)
        self.assertTrue(any("UIDVALIDITY" in e and "--delete INBOX" in e for e in errors), errors)
        # INBOX untouched on both sides; Other still synced.
        self.assertEqual(h.local.snapshot()[("INBOX",)], before[0][("INBOX",)])
        self.assertEqual(h.remote.snapshot()[("INBOX",)], before[1][("INBOX",)])
        self.assertEqual(h.local.snapshot()[("Other",)], h.remote.snapshot()[("Other",)])

    def test_mailbox_deleted_offline_is_reported(self) -> None:
        h = self.h
        h.local.create(b"Gone")
        h.local.append(b"Gone", message(5))
        h.sync()
        h.remote.delete(b"Gone")
        failed, _ = h.sync()
        self.assertEqual(failed, 1)
        errors = h.lines(LogLevel.error)
        self.assertTrue(any("--delete Gone" in e for e in errors), errors)
        self.assertEqual(len(h.local.messages(b"Gone")), 1)

    def test_subscription_follows_the_side_that_changed(self) -> None:
        h = self.h
        h.local.create(b"S")
        h.local.subscribe(b"S")
        h.sync()
        self.assertIn(b"S", h.remote.subscriptions)
        h.remote.unsubscribe(b"S")
        h.sync()
        self.assertNotIn(b"S", h.local.subscriptions)


class UnsyncableMailboxTests(SynchronousTestCase):
    def check_refused(self, attribute: str, words: str) -> None:
        h = Harness()
        h.local.append(b"INBOX", message(1))
        h.local.create(b"Odd")
        h.local.append(b"Odd", message(2))
        h.remote.create(b"Odd")
        setattr(h.remote.mailboxes[b"Odd"], attribute, True)
        failed, _ = h.sync()
        self.assertEqual(failed, 1)
        errors = h.lines(LogLevel.error)
        self.assertTrue(any("Odd" in e and words in e for e in errors), errors)
        # Nothing copied into (or deleted from) that mailbox; INBOX synced.
        self.assertEqual(len(h.remote.messages(b"Odd")), 0)
        self.assertEqual(len(h.local.messages(b"Odd")), 1)
        self.assertEqual(len(h.remote.messages(b"INBOX")), 1)

    def test_nomodseq(self) -> None:
        self.check_refused("nomodseq", "NOMODSEQ")

    def test_uidnotsticky(self) -> None:
        self.check_refused("uidnotsticky", "UIDNOTSTICKY")

    def test_server_without_qresync(self) -> None:
        h = Harness()
        caps = [c for c in DEFAULT_CAPABILITIES if c != b"QRESYNC"]
        h.local.append(b"INBOX", message(1))
        reporter = Reporter()
        synchronizer = Synchronizer(
            h.store,
            reporter,
            lambda side: h.net.open(h.stores()[side], side, capabilities=caps),
            SyncOptions(),
        )
        with self.assertRaises(CapabilityMissingError) as raised:
            h.net.run(Deferred.fromCoroutine(synchronizer.run()))
        self.assertIn("QRESYNC", str(raised.exception))
        self.assertEqual(len(h.remote.messages(b"INBOX")), 0)


class ConcurrencyTests(SynchronousTestCase):
    def test_largest_mailbox_first(self) -> None:
        """The mailbox with the most new messages is taken first."""
        h = Harness()
        h.local.create(b"Big")
        h.remote.create(b"Small")
        h.local.append_many(b"Big", [(message(i), [], None) for i in range(6)])
        h.remote.append_many(b"Small", [(message(100), [], None)])
        h.local.append_many(b"INBOX", [(message(200), [], None)])
        h.sync(workers=1)
        h.local.append_many(b"Small", [(message(i), [], None) for i in range(300, 305)])
        h.remote.append_many(b"INBOX", [(message(400), [], None)])
        h.local.append_many(b"Big", [(message(500), [], None)])
        selected: List[bytes] = []

        def record(name: bytes, raw: bytes) -> None:
            if name == b"SELECT":
                selected.append(raw.split()[2])

        h.local.on_command(record)
        h.sync(workers=1)
        # By name it would be Big, INBOX, Small.
        self.assertEqual(selected[0], b"Small")
        self.assertEqual(sorted(selected), [b"Big", b"INBOX", b"Small"])
        h.assert_equal(self)

    def test_several_mailboxes_at_once_on_extra_connections(self) -> None:
        h = Harness()
        for i in range(8):
            h.local.create(b"Box%d" % i)
            h.local.append_many(b"Box%d" % i, [(message(10 * i + j), [], None) for j in range(3)])
        opened: List[str] = []
        reporter = Reporter()

        def open_side(side: str) -> Deferred[Any]:
            opened.append(side)
            return h.net.open(h.stores()[side], side)

        selected_at_once = [0, 0]
        selected = {"local": 0}

        def count(name: bytes, raw: bytes) -> None:
            if name == b"SELECT":
                selected["local"] += 1
                selected_at_once[1] = max(selected_at_once[1], selected["local"])
            elif name == b"UNSELECT":
                selected["local"] -= 1

        h.local.on_command(count)
        synchronizer = Synchronizer(h.store, reporter, open_side, SyncOptions())
        failed = h.net.run(Deferred.fromCoroutine(synchronizer.run()))
        self.assertEqual(failed, 0)
        # Three connection pairs: mailboxes were synced on several at once.
        self.assertEqual(sorted(opened), ["local"] * 3 + ["remote"] * 3)
        self.assertGreater(selected_at_once[1], 1)
        h.assert_equal(self)


class CrashTests(SynchronousTestCase):
    def assert_lost(self, h: Harness) -> None:
        """The run ends with the lost connection's error, for its caller to report once."""
        error = self.assertRaises(IMAPError, h.sync)
        self.assertIn("connection", str(error))
        self.assertEqual(h.lines(LogLevel.error), [])

    def test_killed_after_the_server_stored_a_batch(self) -> None:
        h = Harness()
        h.local.append_many(b"INBOX", [(message(i, 20_000), [], None) for i in range(300)])
        h.remote.faults.drop_after(b"APPEND")
        self.assert_lost(h)
        stored = len(h.remote.messages(b"INBOX"))
        self.assertGreater(stored, 0)
        self.assertLess(stored, 300)
        h.remote.faults.clear()
        failed, _ = h.sync()
        self.assertEqual(failed, 0)
        h.assert_equal(self)
        self.assertEqual(max(bodies(h.remote, b"INBOX").values()), 1)
        self.assertEqual(len(h.remote.messages(b"INBOX")), 300)
        self.assertTrue(any("Recognized" in line for line in h.lines()), h.lines())

    def test_killed_before_the_append(self) -> None:
        h = Harness()
        h.local.append_many(b"INBOX", [(message(i), [], None) for i in range(20)])
        h.remote.faults.drop_before(b"APPEND")
        self.assert_lost(h)
        h.remote.faults.clear()
        h.sync()
        h.assert_equal(self)
        self.assertEqual(max(bodies(h.remote, b"INBOX").values()), 1)

    def test_killed_during_expunge(self) -> None:
        h = Harness()
        uids = h.local.append_many(b"INBOX", [(message(i), [], None) for i in range(6)])
        h.sync()
        h.local.expunge(b"INBOX", uids[:3])
        h.remote.faults.drop_after(b"UID EXPUNGE")
        self.assert_lost(h)
        h.remote.faults.clear()
        h.sync()
        h.assert_equal(self)
        self.assertEqual(len(h.remote.messages(b"INBOX")), 3)

    def test_refused_append_is_reported_and_nothing_duplicated(self) -> None:
        h = Harness()
        h.local.append_many(b"INBOX", [(message(i), [], None) for i in range(3)])
        h.remote.faults.refuse(b"APPEND", b"[OVERQUOTA] Quota exceeded")
        failed, _ = h.sync()
        self.assertEqual(failed, 1)
        self.assertTrue(any("refused" in e for e in h.lines(LogLevel.error)), h.lines())
        h.remote.faults.clear()
        h.sync()
        h.assert_equal(self)


class RepairTests(SynchronousTestCase):
    def test_repair_fixes_a_lost_mapping_and_missed_flags(self) -> None:
        h = Harness()
        uids = h.local.append_many(b"INBOX", [(message(i), [], None) for i in range(5)])
        h.sync()
        idx = h.store.mailbox(b"INBOX").idx
        with h.store.transaction():
            h.store.delete_mappings(idx, "local", [uids[0]])
        # A flag change the database will not see (HIGHESTMODSEQ bumped).
        h.local.set_flags(b"INBOX", uids[1], [b"\\Seen"])
        status = h.local.status(b"INBOX")
        with h.store.transaction():
            h.store.set_state(idx, "local", highestmodseq=status["HIGHESTMODSEQ"])
        failed, _ = h.sync(repair=True)
        self.assertEqual(failed, 0)
        warnings = " ".join(h.lines(LogLevel.warn))
        self.assertIn("Missed flag update", warnings)
        self.assertIn("not in the database", warnings)
        self.assertEqual(
            h.remote.messages(b"INBOX")[sorted(h.remote.messages(b"INBOX"))[1]].flags, {b"\\Seen"}
        )
        # Both halves of the unmapped pair were copied again: the duplicate
        # the manual warns about, on both sides alike.
        self.assertEqual(len(h.remote.messages(b"INBOX")), 6)
        h.assert_equal(self)


class CommandTests(SynchronousTestCase):
    def run_command(self, h: Harness, command: Any) -> None:
        reporter = Reporter()

        async def go() -> None:
            local = await h.net.open(h.local, "local")
            remote = await h.net.open(h.remote, "remote")
            sides = {"local": SideSpec("local", local), "remote": SideSpec("remote", remote)}
            try:
                await command(sides, reporter)
            finally:
                await local.logout()
                await remote.logout()

        h.net.run(Deferred.fromCoroutine(go()))

    def test_delete_everywhere(self) -> None:
        h = Harness()
        h.local.create(b"Old")
        h.sync()
        self.run_command(
            h,
            lambda sides, r: delete(
                [b"Old"], frozenset({"local", "remote", "database"}), sides, h.store, r
            ),
        )
        self.assertFalse(h.local.exists(b"Old"))
        self.assertFalse(h.remote.exists(b"Old"))
        self.assertIsNone(h.store.mailbox(b"Old"))
        failed, _ = h.sync()
        self.assertEqual(failed, 0)

    def test_delete_inbox_refused(self) -> None:
        h = Harness()
        h.sync()
        with self.assertRaises(CommandError):
            self.run_command(
                h, lambda sides, r: delete([b"INBOX"], frozenset({"local"}), sides, h.store, r)
            )

    def test_rename_with_children(self) -> None:
        h = Harness()
        h.local.create(b"A/B")
        h.local.append(b"A/B", message(1))
        h.sync()
        self.run_command(
            h,
            lambda sides, r: rename(
                b"A", b"Z", frozenset({"local", "remote", "database"}), sides, h.store, r
            ),
        )
        self.assertTrue(h.remote.exists(b"Z.B"))
        self.assertIsNotNone(h.store.mailbox(b"Z\0B"))
        h.commands.clear()
        failed, _ = h.sync()
        self.assertEqual(failed, 0)
        h.assert_equal(self)

    def test_rename_refused_when_destination_exists(self) -> None:
        h = Harness()
        h.local.create(b"A")
        h.local.create(b"Z")
        h.sync()
        with self.assertRaises(CommandError):
            self.run_command(
                h,
                lambda sides, r: rename(
                    b"A", b"Z", frozenset({"local", "remote", "database"}), sides, h.store, r
                ),
            )
        self.assertTrue(h.local.exists(b"A"))


class RandomSyncMachine(RuleBasedStateMachine):
    """Random changes on both servers, syncs that may crash, then a clean sync.

    Invariants after each clean sync: both servers hold the same messages
    and flags, every message ever added and not deleted by a user is there,
    no body appears twice in a mailbox.
    """

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness()
        self.counter = 0
        # Bodies users added and did not delete, per database mailbox name.
        self.expected: Dict[str, Counter[str]] = {"INBOX": Counter()}
        self.clean = True

    def _store(self, side: str) -> MailStore:
        return self.h.local if side == "local" else self.h.remote

    @rule(
        side=st.sampled_from(["local", "remote"]),
        count=st.integers(1, 4),
        flags=st.lists(st.sampled_from(FLAGS), max_size=2),
    )
    def add(self, side: str, count: int, flags: List[bytes]) -> None:
        for _ in range(count):
            self.counter += 1
            body = message(self.counter)
            self._store(side).append(b"INBOX", body, flags)
            self.expected["INBOX"][hashlib.sha256(body).hexdigest()] += 1
        self.clean = False

    @rule(
        side=st.sampled_from(["local", "remote"]),
        data=st.data(),
        flags=st.lists(st.sampled_from(FLAGS), max_size=3),
    )
    def flag(self, side: str, data: Any, flags: List[bytes]) -> None:
        uids = sorted(self._store(side).messages(b"INBOX"))
        if uids:
            self._store(side).set_flags(b"INBOX", data.draw(st.sampled_from(uids)), flags)
            self.clean = False

    @precondition(lambda self: self.clean)
    @rule(side=st.sampled_from(["local", "remote"]), data=st.data())
    def delete(self, side: str, data: Any) -> None:
        # Only after a clean sync, so the model knows what the user deleted.
        store = self._store(side)
        uids = sorted(store.messages(b"INBOX"))
        if uids:
            uid = data.draw(st.sampled_from(uids))
            digest = hashlib.sha256(store.messages(b"INBOX")[uid].body).hexdigest()
            store.expunge(b"INBOX", uid)
            self.expected["INBOX"][digest] -= 1
            self.clean = False

    @rule(
        command=st.sampled_from([b"APPEND", b"UID STORE", b"UID EXPUNGE", b"UID FETCH"]),
        side=st.sampled_from(["local", "remote"]),
        after=st.booleans(),
        skip=st.integers(0, 2),
    )
    def crash(self, command: bytes, side: str, after: bool, skip: int) -> None:
        store = self._store(side)
        if after:
            store.faults.drop_after(command, skip=skip)
        else:
            store.faults.drop_before(command, skip=skip)
        try:
            self.h.sync()
        except IMAPError:
            pass
        store.faults.clear()

    @rule()
    def sync(self) -> None:
        failed, _ = self.h.sync()
        assert failed == 0
        self.clean = True

    @invariant()
    def converged_after_clean_sync(self) -> None:
        if not self.clean:
            return
        local, remote = self.h.local.snapshot(), self.h.remote.snapshot()
        assert local == remote, (local, remote)
        have = bodies(self.h.local, b"INBOX")
        want = +self.expected["INBOX"]
        assert have == want, (have, want)


class RandomSyncTests(SynchronousTestCase):
    def test_random_changes_crashes_and_syncs(self) -> None:
        machine = RandomSyncMachine.TestCase
        machine.settings = settings(
            # IMAPSYNC_ENGINE_EXAMPLES=500 for a long run.
            max_examples=int(os.environ.get("IMAPSYNC_ENGINE_EXAMPLES", "25")),
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        machine().runTest()
